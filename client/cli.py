"""The ``charlstm`` command line.

``charlstm serve`` starts the server (it hands its arguments to `charlstm.service.server.main`,
imported only then). Every other command is a client of a running server, and takes the
connection options ``--server`` (env ``CHARLSTM_SERVER``), ``--token`` (env ``CHARLSTM_TOKEN``),
``--tls``/``--ca FILE``, ``--timeout`` and ``--json`` (one JSON object per line on stdout).

Exit status: 0 on success; 1 on an error (one line on stderr: ``error: NOT_FOUND: ...``);
2 for a bad command line; 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, NoReturn

from charlstm.client.channel import DEFAULT_TARGET, Tls
from charlstm.client.client import CharLstmClient
from charlstm.client.errors import CharLstmError, FailedPreconditionError
from charlstm.client.render import (
    TrainingDisplay,
    distribution_table,
    jobs_table,
    model_details,
    models_table,
    show_char,
)
from charlstm.client.streams import TrainEventStream
from charlstm.client.types import to_jsonable

INLINE_LIMIT = 1 << 20
"""Corpora up to this many bytes travel inline in the Train/Evaluate request; larger ones are
uploaded first with UploadCorpus (streamed from the file)."""

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# --- argument parsing --------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default; help that already states its default keeps its wording
    (server-side defaults, secrets that must not be printed)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text and "%(default)" not in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (plus where to find help), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _connection_options() -> argparse.ArgumentParser:
    """Options shared by every client command."""
    common = Parser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument(
        "--server",
        metavar="HOST:PORT",
        default=os.environ.get("CHARLSTM_SERVER") or DEFAULT_TARGET,
        help="server address; several replicas as HOST:PORT,HOST:PORT,... or dns:///NAME:PORT, "
        "over which calls are spread round_robin (env CHARLSTM_SERVER)",
    )
    group.add_argument(
        "--token",
        default=None,
        help="bearer token (default: the CHARLSTM_TOKEN environment variable, else none; "
        "prefer the variable, command lines are visible to other users)",
    )
    group.add_argument(
        "--tls", action="store_true", help="connect with TLS, trusting the system's root certificates"
    )
    group.add_argument("--ca", metavar="FILE", help="PEM root certificates to trust (implies --tls)")
    group.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="limit per call, retries included; for streams, the longest wait for a reply (0: none)",
    )
    group.add_argument("--json", action="store_true", help="print one JSON object per line on stdout")
    return common


def _add_model_selector(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--version", type=int, metavar="V", help="use this version (default: the latest)")
    group.add_argument(
        "--label", metavar="LABEL", help="use the version this label points at (default: the latest)"
    )


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "--temperature",
        type=float,
        metavar="T",
        help="softmax temperature, 0-100; 0 is greedy (default: the server's, 1)",
    )
    group.add_argument(
        "--sample-top-k",
        type=int,
        metavar="K",
        help="sample only among the K most likely characters; 0 disables (default: the server's, 0)",
    )
    group.add_argument(
        "--top-p",
        type=float,
        metavar="P",
        help="nucleus sampling: the smallest set reaching probability P, 0 < P <= 1 "
        "(default: the server's, 1)",
    )
    group.add_argument(
        "--seed", type=int, metavar="S", help="seed for reproducible sampling (default: a fresh one)"
    )


# (flag, Hyperparameters field, type, help, the server's default) for `train`. The client sends
# only the flags given, so the server's defaults (from the .proto) apply to the rest.
_HYPERPARAMETER_FLAGS: list[tuple[str, str, Callable[[str], Any], str, str]] = [
    ("--embedding", "embedding_size", int, "character embedding size E, 1-4096", "64"),
    ("--hidden", "hidden_size", int, "LSTM hidden units per layer H, 1-4096", "256"),
    ("--layers", "num_layers", int, "stacked LSTM layers L, 1-16", "2"),
    ("--dropout", "dropout", float, "dropout between layers and before the output, 0 <= p < 1", "0"),
    ("--seq-len", "seq_len", int, "truncated-BPTT window T in characters, 1-4096", "64"),
    ("--batch-size", "batch_size", int, "parallel streams B per step, 1-4096", "32"),
    ("--optimizer", "optimizer", str, "adamw or sgd", "adamw"),
    ("--lr", "learning_rate", float, "peak learning rate, > 0", "0.002"),
    ("--schedule", "schedule", str, "cosine (warm-up, then cosine decay) or constant", "cosine"),
    ("--warmup-steps", "warmup_steps", int, "linear warm-up steps of the cosine schedule", "0"),
    (
        "--min-lr-ratio",
        "min_lr_ratio",
        float,
        "final cosine learning rate, as a fraction of the peak",
        "0.1",
    ),
    ("--clip", "clip", float, "gradient-norm clipping threshold; 0 disables", "5"),
    ("--weight-decay", "weight_decay", float, "decoupled weight decay, >= 0", "0"),
    ("--momentum", "momentum", float, "SGD momentum, 0 <= m < 1", "0.9"),
    ("--seed", "seed", int, "seed for initialisation, dropout and data order", "0"),
    (
        "--val-fraction",
        "val_fraction",
        float,
        "fraction of the corpus (its end) held out for validation",
        "0.1",
    ),
    ("--eval-every", "eval_every", int, "validation interval in steps", "100"),
    (
        "--checkpoint-every",
        "checkpoint_every",
        int,
        "checkpoint interval in steps; 0: only at the end",
        "500",
    ),
]
_CHOICES = {"--optimizer": ("adamw", "sgd"), "--schedule": ("cosine", "constant")}
_METAVARS = {
    "--embedding": "E",
    "--hidden": "H",
    "--layers": "L",
    "--dropout": "P",
    "--seq-len": "T",
    "--batch-size": "B",
    "--lr": "LR",
}


def _minutes_as_seconds(text: str) -> float:
    """``--max-minutes`` is sent as the ``max_seconds`` hyperparameter."""
    minutes = float(text)
    if not minutes > 0 or minutes == float("inf"):  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number of minutes > 0 (got {text!r})")
    return minutes * 60.0


def build_parser() -> Parser:
    """The ``charlstm`` argument parser (every command but ``serve``, which the server parses)."""
    parser = Parser(
        prog="charlstm",
        description="Train, serve and query character-level LSTM models.",
        formatter_class=HelpFormatter,
        epilog="Run 'charlstm COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    common = _connection_options()

    parser.commands = {}  # type: ignore[attr-defined]

    def command(
        name: str, help_text: str, handler: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help_text, description=help_text, parents=[common], formatter_class=HelpFormatter
        )
        sub.set_defaults(handler=handler)
        parser.commands[name] = sub  # type: ignore[attr-defined]
        return sub

    # Listed for --help only: main() hands `serve` straight to the server's own parser.
    commands.add_parser("serve", help="start the server (see 'charlstm serve --help')", add_help=False)

    p = command("train", "train a model on a text file and follow the job", cmd_train)
    p.add_argument("model", metavar="MODEL", help="model to write versions to (created if new)")
    p.add_argument("corpus", metavar="CORPUS_FILE", help="UTF-8 training text; - reads stdin")
    hyper = p.add_argument_group("hyperparameters")
    for flag, field, kind, text, server_default in _HYPERPARAMETER_FLAGS:
        hyper.add_argument(
            flag,
            dest=f"hp_{field}",
            type=kind,
            choices=_CHOICES.get(flag),
            metavar=None if flag in _CHOICES else _METAVARS.get(flag, "N" if kind is int else "X"),
            help=f"{text} (default: the server's, {server_default})",
        )
    length = hyper.add_mutually_exclusive_group()
    length.add_argument(
        "--steps",
        dest="hp_steps",
        type=int,
        metavar="N",
        help="optimiser steps (default: the server's, 1000)",
    )
    length.add_argument(
        "--epochs",
        dest="hp_epochs",
        type=float,
        metavar="X",
        help="passes over the training text instead of --steps (default: unset)",
    )
    hyper.add_argument(
        "--max-minutes",
        dest="hp_max_seconds",
        type=_minutes_as_seconds,
        metavar="M",
        help="wall-clock training budget in minutes: training ends at this or at --steps/--epochs, "
        "whichever comes first, and the cosine schedule decays over the time (default: unset)",
    )
    p.add_argument(
        "--resume",
        type=int,
        metavar="VERSION",
        help="resume from this stored version's training state (default: a fresh start)",
    )
    _add_job_following(p)
    p.add_argument(
        "--detach",
        action="store_true",
        help="start the job, print its id and return without following it",
    )
    p.add_argument(
        "--inline-limit",
        type=int,
        default=INLINE_LIMIT,
        metavar="BYTES",
        help="corpora larger than this are uploaded before training instead of sent inline",
    )

    p = command("jobs", "list training jobs, newest first", cmd_jobs)
    p.add_argument("--model", help="only this model's jobs (default: all)")

    p = command("watch", "follow a training job until it ends", cmd_watch)
    p.add_argument("job", metavar="JOB", help="job id")
    _add_job_following(p)

    p = command("cancel", "cancel a queued or running training job", cmd_cancel)
    p.add_argument("job", metavar="JOB", help="job id")

    p = command("predict", "next-character probabilities and/or a sampled continuation", cmd_predict)
    p.add_argument("model", metavar="MODEL", help="model name")
    p.add_argument("texts", metavar="TEXT", nargs="+", help="text(s) to condition on ('' for none)")
    p.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help="how many most likely next characters to show "
        "(default: the server's: 5 without --length, else 0)",
    )
    p.add_argument(
        "--length", type=int, default=0, metavar="N", help="characters of continuation to sample"
    )
    _add_model_selector(p)
    _add_sampling(p)

    p = command("stream", "generate text, printing each character the moment it arrives", cmd_stream)
    p.add_argument("model", metavar="MODEL", help="model name")
    p.add_argument("text", metavar="TEXT", nargs="?", default="", help="text to start from")
    p.add_argument(
        "--length",
        type=int,
        default=200,
        metavar="N",
        help="characters to generate (per line with --interactive)",
    )
    p.add_argument(
        "--interactive",
        action="store_true",
        help="read lines from stdin; feed each and show the continuation "
        "(empty line: continue; /reset; /quit)",
    )
    p.add_argument(
        "--chars-per-message",
        type=int,
        metavar="N",
        help="characters the server batches per message (default: the server's, 1)",
    )
    p.add_argument(
        "--max-chars-per-message",
        type=int,
        metavar="N",
        help="let the server send the characters it has already produced together, up to N "
        "per message, when this client reads slower than the model generates (none waits)",
    )
    p.add_argument(
        "--reopen",
        action="store_true",
        help="if the session's server goes away (UNAVAILABLE), continue on another replica "
        "fed with the text so far (random draws then differ from an unbroken session)",
    )
    _add_model_selector(p)
    _add_sampling(p)

    command("models", "list the stored models", cmd_models)

    p = command("model", "describe a model: architecture, versions, labels", cmd_model)
    p.add_argument("model", metavar="MODEL", help="model name")

    p = command("delete", "delete a model, or one version of it", cmd_delete)
    p.add_argument("model", metavar="MODEL", help="model name")
    p.add_argument(
        "--version", type=int, metavar="V", help="delete only this version (default: the whole model)"
    )

    p = command("label", "point a label at a version, or remove it", cmd_label)
    p.add_argument("model", metavar="MODEL", help="model name")
    p.add_argument("label", metavar="LABEL", help="label name such as stable or canary")
    p.add_argument(
        "version",
        metavar="VERSION",
        type=int,
        nargs="?",
        help="version to point at (omit with --remove)",
    )
    p.add_argument("--remove", action="store_true", help="remove the label instead")

    p = command("health", "check that the server is serving", cmd_health)
    p.add_argument(
        "--service", default="", help="health of this gRPC service name ('' : the whole server)"
    )

    p = command(
        "eval", "loss of a stored model on a text file, in nats and bits per character", cmd_eval
    )
    p.add_argument("model", metavar="MODEL", help="model name")
    p.add_argument("corpus", metavar="CORPUS_FILE", help="UTF-8 text; - reads stdin")
    _add_model_selector(p)
    p.add_argument(
        "--inline-limit",
        type=int,
        default=INLINE_LIMIT,
        metavar="BYTES",
        help="texts larger than this are uploaded first instead of sent inline",
    )
    return parser


def _add_job_following(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cancel-on-interrupt",
        action="store_true",
        help="Ctrl-C cancels the job instead of detaching from it",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress display on stderr")


def _package_version() -> str:
    try:
        return metadata.version("charlstm")
    except metadata.PackageNotFoundError:
        return "unknown"


# --- helpers -----------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> CharLstmClient:
    tls: Tls = False
    if args.ca:
        with open(args.ca, "rb") as file:
            tls = file.read()
    elif args.tls:
        tls = True
    token = args.token if args.token is not None else os.environ.get("CHARLSTM_TOKEN")
    timeout = args.timeout if args.timeout and args.timeout > 0 else None
    return CharLstmClient(args.server, token=token or None, tls=tls, timeout=timeout,
                          reopen_streams=getattr(args, "reopen", False))


def _emit(value: Any) -> None:
    """One JSON object on one line of stdout."""
    print(json.dumps(to_jsonable(value), ensure_ascii=False), flush=True)


def _say(text: str) -> None:
    """A note for the person at the terminal (stderr, so stdout stays clean for pipes)."""
    print(text, file=sys.stderr, flush=True)


def _corpus(client: CharLstmClient, path: str, inline_limit: int) -> dict[str, str]:
    """The corpus argument for train/evaluate: ``{"text": ...}`` when the file is small,
    else ``{"corpus_id": ...}`` after streaming it to the server."""
    if path == "-":
        data = sys.stdin.buffer.read()
        if len(data) <= inline_limit:
            return {"text": _decode(data, "stdin")}
        source: Any = data
    else:
        if os.path.getsize(path) <= inline_limit:
            with open(path, "rb") as file:
                return {"text": _decode(file.read(), path)}
        source = path
    corpus = client.upload_corpus(source)
    known = " (already stored)" if corpus.already_existed else ""
    _say(f"uploaded corpus {corpus.id[:12]}: {corpus.characters:,} characters{known}")
    return {"corpus_id": corpus.id}


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{where} is not valid UTF-8 (byte {error.start})") from None


def _server_hint(args: argparse.Namespace) -> str:
    return (
        ""
        if args.server == (os.environ.get("CHARLSTM_SERVER") or DEFAULT_TARGET)
        else f" --server {args.server}"
    )


def _follow(client: CharLstmClient, events: TrainEventStream, args: argparse.Namespace) -> int:
    """Shows a job's events until it ends; Ctrl-C detaches (or cancels, if asked)."""
    display = TrainingDisplay(progress=not args.no_progress)
    job_id = events.job_id
    model = getattr(args, "model", "")
    last = None
    cancelling = False
    while True:
        try:
            for event in events:
                last = event
                if event.accepted is not None:
                    model = event.accepted.model
                if args.json:
                    _emit(event)
                else:
                    display.handle(event)
            break
        except KeyboardInterrupt:
            display.close()
            if not args.cancel_on_interrupt or cancelling:
                events.close()
                hint = _server_hint(args)
                _say(
                    f"\ndetached from job {job_id}; it keeps running on the server.\n"
                    f"  follow it:  charlstm watch {job_id}{hint}\n"
                    f"  cancel it:  charlstm cancel {job_id}{hint}"
                )
                return EXIT_INTERRUPTED
            cancelling = True
            _say(f"\ncancelling job {job_id} ...")
            try:
                client.cancel_job(job_id)
            except FailedPreconditionError:
                pass  # it ended meanwhile: its terminal event follows
    display.close()
    return _outcome(last, job_id, model, args, cancelling)


def _outcome(
    event: Any, job_id: str, model: str, args: argparse.Namespace, cancelled_by_us: bool
) -> int:
    """Reports how the job ended (the final version on stdout); returns the exit status."""
    if event is None or not event.terminal:
        _say(
            f"error: the event stream ended before job {job_id} finished; "
            f"follow it with: charlstm watch {job_id}"
        )
        return EXIT_ERROR
    if event.succeeded is not None:
        s = event.succeeded
        if not args.json:
            best = ""
            if s.best_version:
                best = (
                    f" (best: version {s.best_version}, val loss {s.best_val_loss:.4f})"
                    if s.best_val_loss is not None
                    else f" (best: version {s.best_version})"
                )
            print(f"{model} version {s.version}{best}", flush=True)
        return EXIT_OK
    if event.failed is not None:
        f = event.failed
        resumable = (
            f"; resumable from version {f.last_version} (--resume {f.last_version})"
            if f.resumable
            else ""
        )
        _say(f"error: job {job_id} failed: {f.reason}{resumable}")
        return EXIT_ERROR
    last = event.cancelled.last_version
    _say(f"job {job_id} cancelled" + (f"; last saved version {last}" if last else "; no version saved"))
    return EXIT_INTERRUPTED if cancelled_by_us else EXIT_ERROR


# --- commands ----------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    hyper = {name[3:]: value for name, value in vars(args).items() if name.startswith("hp_")}
    with _client(args) as client:
        corpus = _corpus(client, args.corpus, args.inline_limit)
        events = client.train(args.model, resume_from_version=args.resume, **corpus, **hyper)
        if args.detach:
            first = next(events)
            events.close()
            if args.json:
                _emit(first)
            else:
                print(first.job_id, flush=True)
                _say(f"follow it with: charlstm watch {first.job_id}{_server_hint(args)}")
            return EXIT_OK
        return _follow(client, events, args)


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _follow(client, client.watch_job(args.job), args)


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = client.list_jobs(args.model)
    if args.json:
        for job in jobs:
            _emit(job)
    elif jobs:
        print(jobs_table(jobs))
    else:
        _say("no jobs")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel_job(args.job)
    if args.json:
        _emit(job)
    else:
        if job.state == "cancelled":
            saved = f"last saved version {job.last_version}" if job.last_version else "no version saved"
            print(f"cancelled job {job.id} (model {job.model!r}; {saved})")
        else:
            print(f"cancellation of job {job.id} requested (model {job.model!r}; state {job.state})")
    return EXIT_OK


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "temperature": args.temperature,
        "top_k": args.sample_top_k,
        "top_p": args.top_p,
        "seed": args.seed,
    }


def cmd_predict(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.predict(
            args.model, args.texts, next_top_k=args.top_k, length=args.length,
            version=args.version, label=args.label, **_sampling(args),
        )  # fmt: skip
    if args.json:
        for p in result.predictions:
            _emit({"model": result.model, "version": result.version, **to_jsonable(p)})
        return EXIT_OK
    several = len(result.predictions) > 1
    for i, p in enumerate(result.predictions):
        if several:
            print(("\n" if i else "") + f"== {show_char(p.input)}")
        if p.next:
            print(distribution_table(p.next))
        if p.continuation:
            if p.next:
                print()
            print(p.continuation)
    return EXIT_OK


def _write_live(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def cmd_stream(args: argparse.Namespace) -> int:
    sampling = _sampling(args)
    with _client(args) as client, client.stream(
        args.model, version=args.version, label=args.label, chars_per_message=args.chars_per_message,
        prefix=args.text, **sampling,
    ) as session:  # fmt: skip
        if args.interactive:
            return _interactive(session, args)
        count = 0
        for generated in session.generate_with_probs(
            args.length, max_chars_per_message=args.max_chars_per_message
        ):
            count += 1
            if args.json:
                _emit({"kind": "char", "char": generated.char, "probability": generated.probability})
            else:
                _write_live(generated.char)
        if args.json:
            _emit(
                {
                    "kind": "end",
                    "generated": count,
                    "model": session.info.model,
                    "version": session.info.version,
                }
            )
        else:
            _write_live("\n")
    return EXIT_OK


def _interactive(session: Any, args: argparse.Namespace) -> int:
    prompt = sys.stdin.isatty()
    if prompt:
        _say(
            f"model {session.info.model!r} version {session.info.version}: type text and press Enter; "
            "an empty line continues, /reset clears the state, /quit or Ctrl-D ends"
        )
    while True:
        if prompt:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.rstrip("\r\n")
        if line == "/quit":
            break
        if line == "/reset":
            session.reset()
            if args.json:
                _emit({"kind": "reset"})
            else:
                _say("(state reset)")
            continue
        if line:
            session.feed(line)
        chars, probabilities = [], []
        for generated in session.generate_with_probs(
            args.length, max_chars_per_message=args.max_chars_per_message
        ):
            if args.json:
                chars.append(generated.char)
                probabilities.append(generated.probability)
            else:
                _write_live(generated.char)
        if args.json:
            _emit(
                {
                    "kind": "continuation",
                    "input": line,
                    "text": "".join(chars),
                    "probabilities": probabilities,
                }
            )
        else:
            _write_live("\n")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        models = client.list_models()
    if args.json:
        for model in models:
            _emit(model)
    elif models:
        print(models_table(models))
    else:
        _say("no models")
    return EXIT_OK


def cmd_model(args: argparse.Namespace) -> int:
    with _client(args) as client:
        model = client.get_model(args.model)
    if args.json:
        _emit(model)
    else:
        print(model_details(model))
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        deleted = client.delete_model(args.model, args.version)
    if args.json:
        _emit({"model": args.model, "deleted_versions": deleted})
    else:
        what = "version" if len(deleted) == 1 else "versions"
        print(f"deleted {args.model!r} {what} {', '.join(map(str, deleted)) or '(none)'}")
    return EXIT_OK


def cmd_label(args: argparse.Namespace) -> int:
    if args.remove == (args.version is not None):
        raise _UsageError("give a VERSION, or --remove (not both)")
    with _client(args) as client:
        if args.remove:
            model = client.remove_label(args.model, args.label)
        else:
            model = client.set_label(args.model, args.label, args.version)
    version = model.labels.get(args.label)
    if args.json:
        _emit({"model": model.name, "label": args.label, "version": version, "labels": model.labels})
    elif args.remove:
        print(f"{model.name}: removed label {args.label!r}")
    else:
        print(f"{model.name}: {args.label} -> version {version}")
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.health(args.service)
    if args.json:
        _emit({"server": args.server, "service": args.service, "status": status})
    else:
        print(status)
    return EXIT_OK if status == "SERVING" else EXIT_ERROR


def cmd_eval(args: argparse.Namespace) -> int:
    with _client(args) as client:
        corpus = _corpus(client, args.corpus, args.inline_limit)
        result = client.evaluate(args.model, version=args.version, label=args.label, **corpus)
    if args.json:
        _emit(result)
    else:
        print(
            f"{result.model} version {result.version}: loss {result.loss:.4f} nats/char, "
            f"{result.bits_per_char:.4f} bits/char over {result.characters:,} characters "
            f"({result.unknown_characters:,} unknown)"
        )
    return EXIT_OK


# --- entry point -------------------------------------------------------------------------------


class _UsageError(Exception):
    """A command-line combination argparse cannot express; exit status 2."""


def _serve(argv: list[str]) -> int:
    """``charlstm serve``: the server parses its own flags (charlstm.service.config)."""
    try:
        from charlstm.service import server  # lazy: the client never needs the server's stack
    except ImportError as error:
        _say(f"error: the server is not available in this installation ({error})")
        return EXIT_ERROR
    return int(server.main(argv) or 0)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error_line(error: CharLstmError, args: argparse.Namespace) -> str:
    message = error.message
    if error.code.name == "UNAVAILABLE":
        message = f"{args.server}: {message}"
    fields = [field for field, _ in error.field_violations if field and field not in message]
    if fields:
        message += f" (field {', '.join(fields)})"
    return _one_line(f"error: {error.code.name}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``charlstm`` command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        # Reported by the command's own parser, so the message names the command.
        command = parser.commands.get(getattr(args, "command", None), parser)  # type: ignore[attr-defined]
        command.error(f"unrecognized arguments: {' '.join(extras)}")
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.handler(args)
    except CharLstmError as error:
        _say(_error_line(error, args))
        return EXIT_ERROR
    except _UsageError as error:
        _say(f"charlstm {args.command}: error: {error} (see charlstm {args.command} --help)")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("\ninterrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, and keep Python from complaining
        # about the unflushable stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except (OSError, ValueError, TypeError) as error:
        detail = (
            f"{error.strerror}: {error.filename}"
            if isinstance(error, OSError) and error.filename
            else error
        )
        _say(_one_line(f"error: {detail}"))
        return EXIT_ERROR
    except Exception as error:  # noqa: BLE001 - a command line never shows a traceback
        if os.environ.get("CHARLSTM_DEBUG"):
            raise
        _say(
            _one_line(
                f"error: unexpected {type(error).__name__}: {error} "
                "(set CHARLSTM_DEBUG=1 for a traceback)"
            )
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
