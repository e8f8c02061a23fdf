"""Train one model data-parallel under ``mpirun``, without a server, into a store.

    mpirun -np 2 python -m charlstm.service.mpi_train --store ./charlstm-store \\
        --model tiny --corpus samples/tinyshakespeare.txt \\
        --hyperparameters '{"hidden_size": 128, "num_layers": 1, "steps": 400}'

Every rank runs the job the server's worker runs (:func:`training_worker._train`), so the
versions it writes are the ones a ``charlstm serve --train-ranks N`` job would write: the
server on the same store serves them, and a server job can resume from them. Rank 0 stores
the corpus in the store (as an upload would), writes the checkpoints and prints one line per
validation and checkpoint; the other ranks only compute. ``--hyperparameters`` is the
``Hyperparameters`` message of the .proto in its JSON form; unset fields take the server's
defaults. SIGTERM to the ranks stops at the next step with a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from . import training_worker


class _PrintingReporter(training_worker._Reporter):
    """Rank 0's reporter here: a line on stdout per validation, checkpoint and outcome."""

    def __init__(self):
        super().__init__(None, os.getppid())

    def send(self, kind: str, **data: Any) -> None:
        if kind == "progress" and data["evaluated"]:
            print(f"step {data['step']}/{data['total_steps']}: loss {data['train_loss']:.4f}, "
                  f"val {data['val_loss']:.4f}, {data['chars_per_second']:,.0f} chars/s", flush=True)
        elif kind == "started":
            n = len(data["rank_pids"])
            print(f"training on {n} rank{'s' if n > 1 else ''} from step {data['step']}", flush=True)
        elif kind == "checkpoint":
            print(f"saved version {data['version']} at step {data['step']}", flush=True)
        elif kind in ("succeeded", "failed", "cancelled", "interrupted"):
            print(f"{kind}: {json.dumps(data)}", flush=True)

    def parent_alive(self) -> bool:
        return True  # nobody to lose: mpirun ends the ranks


def _job_spec(args: argparse.Namespace) -> training_worker.WorkerSpec:
    """Rank 0: store the corpus, resolve the hyperparameters (the server's rules and errors)."""
    from google.protobuf import json_format

    from charlstm.v1 import charlstm_pb2 as pb

    from . import hyperparameters
    from .corpora import CorpusStore

    message = json_format.Parse(args.hyperparameters, pb.Hyperparameters())
    resolved = hyperparameters.resolve(message)
    corpora = CorpusStore(Path(args.store) / "corpora", max_bytes=1 << 62)
    with open(args.corpus, "rb") as f:
        corpus = corpora.put_chunks(iter(lambda: f.read(1 << 20), b""), field="--corpus")
    hyperparameters.check_corpus_fits(corpus.characters, resolved.train, "--corpus")
    return training_worker.WorkerSpec(
        job_id=f"mpi-{os.getpid()}",
        model=args.model,
        store_location=args.store,
        corpus_path=str(corpora.path(corpus.id)),
        corpus_id=corpus.id,
        corpus_characters=corpus.characters,
        hyperparameters=resolved.to_dict(),
        resume_from_version=args.resume_from_version,
        parent_pid=os.getppid(),
    )


def main(argv: list[str] | None = None) -> int:
    from charlstm.engine.distributed import from_environment

    parser = argparse.ArgumentParser(prog="python -m charlstm.service.mpi_train",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="./charlstm-store", help="store directory (default: %(default)s)")
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--corpus", required=True, help="UTF-8 text file to train on")
    parser.add_argument("--hyperparameters", default="{}",
                        help="the .proto's Hyperparameters as JSON (default: all the server's defaults)")
    parser.add_argument("--resume-from-version", type=int, default=0, metavar="N",
                        help="continue from version N (saved with training state)")
    args = parser.parse_args(argv)
    comm = from_environment()
    spec = None
    if comm.rank == 0:
        try:
            spec = _job_spec(args)
        except Exception as exc:  # noqa: BLE001 - a bad flag or corpus: say so, end every rank
            print(f"error: {getattr(exc, 'message', None) or exc}", file=sys.stderr, flush=True)
            if comm.size > 1:
                comm.abort(2)
            return 2
    spec = comm.bcast(spec)
    control = training_worker._LocalControl()
    training_worker._handle_signals(control)
    reporter = _PrintingReporter() if comm.rank == 0 else training_worker._SilentReporter()
    ok = training_worker._run(spec, reporter, control, comm)
    if not ok and comm.size > 1:
        comm.abort(1)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
