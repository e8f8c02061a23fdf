"""The model-management RPCs: ListModels, GetModel, DeleteModel, SetLabel and Evaluate.

Mixed into ``CharLstmServicer``, which provides ``self.store``, ``self.models``,
``self.corpora``, ``self.jobs`` and ``self.config``.

Deleting while training: a model with an unfinished job (queued, running, or interrupted and
waiting to resume) cannot be deleted as a whole, and the version such a job would resume from
cannot be deleted either: both are FAILED_PRECONDITION naming the job, so a delete never pulls
the floor from under a job (cancel the job first). Other versions can be deleted at any time.
Open Stream sessions on a deleted version keep their already-loaded model until they end.
"""

from __future__ import annotations

import grpc

from charlstm.engine import evaluate_text
from charlstm.service import converters
from charlstm.service.errors import FailedPrecondition, InvalidArgument, rpc_errors
from charlstm.service.model_cache import ModelCache
from charlstm.service.store import CheckpointStore, ModelNotFound
from charlstm.v1 import charlstm_pb2 as pb

__all__ = ["ModelRpcs"]


class ModelRpcs:
    """ListModels, GetModel, DeleteModel, SetLabel, Evaluate."""

    store: CheckpointStore
    models: ModelCache

    @rpc_errors
    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        response = pb.ListModelsResponse()
        for name in self.store.list_models():
            try:
                response.models.append(self._describe(name, with_versions=False))
            except ModelNotFound:
                continue  # deleted between listing and describing
        return response

    @rpc_errors
    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.Model:
        name = converters.model_name(request.name, "name")
        return self._describe(name, with_versions=True)

    @rpc_errors
    def DeleteModel(self, request: pb.DeleteModelRequest, context: grpc.ServicerContext) -> pb.DeleteModelResponse:
        name = converters.model_name(request.name, "name")
        version: int | None = None
        if request.HasField("version"):
            version = int(request.version)
            if version < 1:
                raise InvalidArgument(
                    f"version must be >= 1 (got {version}); leave it unset to delete the whole "
                    "model", field="version",
                )
        self.store.resolve(name, version)  # NOT_FOUND for an unknown model or version
        self._check_no_job_needs(name, version)
        deleted = self.store.delete(name, version)
        self.models.invalidate(name, version)
        return pb.DeleteModelResponse(deleted_versions=sorted(deleted))

    @rpc_errors
    def SetLabel(self, request: pb.SetLabelRequest, context: grpc.ServicerContext) -> pb.Model:
        name = converters.model_name(request.name, "name")
        label = converters.label_name(request.label, "label")
        if request.version < 0:
            raise InvalidArgument(
                f"version must be >= 1, or 0 to remove the label (got {request.version})",
                field="version",
            )
        if request.version == 0:
            self.store.remove_label(name, label)
        else:
            self.store.set_label(name, label, int(request.version))
        self.models.forget(name)  # the next request here resolves the label afresh
        return self._describe(name, with_versions=True)

    @rpc_errors
    def Evaluate(self, request: pb.EvaluateRequest, context: grpc.ServicerContext) -> pb.EvaluateResponse:
        source = request.WhichOneof("corpus")
        if source is None:
            raise InvalidArgument("set `text` or `corpus_id`: the text to evaluate on",
                                  field="text")
        if source == "text":
            text, field = request.text, "text"
        else:
            text, field = self.corpora.get_text(request.corpus_id), "corpus_id"
        if len(text) < 2:
            raise InvalidArgument(
                f"{field} must hold at least 2 characters (got {len(text)}): the loss scores "
                "each character given the ones before it", field=field,
            )
        name, ref = converters.model_ref(request.model, "model")
        loaded = self.models.get(name, ref)
        result = evaluate_text(loaded.model, loaded.vocab, text)
        return pb.EvaluateResponse(
            model=loaded.name,
            version=loaded.version,
            loss=result.loss,
            bits_per_char=result.bits_per_char,
            characters=result.characters,
            unknown_characters=result.unknown_characters,
        )

    # -- helpers -----------------------------------------------------------------------------

    def _describe(self, name: str, *, with_versions: bool) -> pb.Model:
        versions = self.store.list_versions(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} not found")
        return converters.model_message(
            name, versions, self.store.labels(name), with_versions=with_versions
        )

    def _check_no_job_needs(self, name: str, version: int | None) -> None:
        """FailedPrecondition when an unfinished training job needs what is being deleted."""
        for job in self.jobs.list(model=name):
            if job.state.ended:
                continue
            if version is None:
                raise FailedPrecondition(
                    f"model {name!r} has an unfinished training job ({job.id}, "
                    f"{job.state.value}); cancel it with CancelJob before deleting the model"
                )
            if version == job.resume_point:
                raise FailedPrecondition(
                    f"version {version} of model {name!r} is where training job {job.id} "
                    f"({job.state.value}) continues from; cancel the job before deleting it"
                )
