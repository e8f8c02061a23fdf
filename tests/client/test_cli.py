"""The `charlstm` command line, run as a subprocess against a real server (see conftest.py):
every command in human and --json form, live streaming, Ctrl-C, and one-line errors."""

from __future__ import annotations

import argparse
import json
import math
import signal
import subprocess
import sys
import time

import pytest

from charlstm.client import CharLstmClient
from charlstm.client.cli import HelpFormatter, build_parser
from client_live import TINY, Live

LONG_JOB = [*TINY, "--steps", "1000000", "--checkpoint-every", "0"]


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (and no traceback)."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- train, jobs, watch, cancel -------------------------------------------------------------


def test_train_json_streams_the_job_events(live: Live) -> None:
    events = live.train_events
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "accepted" and kinds[-1] == "succeeded"
    assert "progress" in kinds and kinds.count("checkpoint") == 2
    steps = [e["progress"]["step"] for e in events if e["kind"] == "progress"]
    assert steps == sorted(steps) and steps[-1] == 40
    assert all(e["job_id"] == events[0]["job_id"] for e in events)
    accepted = events[0]["accepted"]
    assert accepted["model"] == "tiny" and accepted["hyperparameters"]["hidden_size"] == 16
    assert events[-1]["succeeded"]["version"] == 2


def test_train_human_reads_stdin_uploads_and_prints_the_final_version(live: Live) -> None:
    text = live.corpus.read_text(encoding="utf-8")
    result = live.run(
        "train", "piped", "-", *TINY, "--steps", "20", "--inline-limit", "1000", input=text
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("piped version 1")
    assert "uploaded corpus" in result.stderr  # 20 kB > --inline-limit: sent with UploadCorpus
    assert "saved version 1" in result.stderr
    assert "step 20/20" in result.stderr  # the progress display (plain lines: stderr is no tty)


def test_jobs_human_and_json(live: Live) -> None:
    job_id = live.train_events[0]["job_id"]
    jobs = live.json("jobs", "--model", "tiny")
    assert [j["id"] for j in jobs] == [job_id]
    assert jobs[0]["state"] == "succeeded" and jobs[0]["last_version"] == 2
    human = live.run("jobs")
    assert human.returncode == 0
    header, *rows = human.stdout.splitlines()
    assert header.split()[:3] == ["JOB", "MODEL", "STATE"]
    assert any(row.split()[:3] == [job_id, "tiny", "succeeded"] for row in rows)


def test_watch_replays_a_finished_job(live: Live) -> None:
    job_id = live.train_events[0]["job_id"]
    events = live.json("watch", job_id)
    assert events[0]["kind"] == "accepted" and events[-1]["kind"] == "succeeded"
    human = live.run("watch", job_id)
    assert human.returncode == 0
    assert human.stdout.strip() == "tiny version 2 (best: version 2, val loss {:.4f})".format(
        events[-1]["succeeded"]["best_val_loss"]
    )


def test_cancel_human_and_json(live: Live) -> None:
    detached = live.json("train", "cancelme", str(live.corpus), *LONG_JOB, "--detach")
    assert [e["kind"] for e in detached] == ["accepted"]
    job = live.json("cancel", detached[0]["job_id"])[0]
    assert job["id"] == detached[0]["job_id"] and job["state"] == "cancelled"

    started = live.run("train", "cancelme", str(live.corpus), *LONG_JOB, "--detach")
    assert started.returncode == 0, started.stderr
    job_id = started.stdout.strip()
    assert f"charlstm watch {job_id}" in started.stderr
    cancelled = live.run("cancel", job_id)
    assert cancelled.returncode == 0 and f"cancelled job {job_id}" in cancelled.stdout
    again = one_line_error(live.run("cancel", job_id))
    assert again.startswith("error: FAILED_PRECONDITION: ") and job_id in again
    watched = live.run("watch", job_id, "--json")  # replays up to the terminal event
    assert watched.returncode == 1  # the job did not succeed
    assert json.loads(watched.stdout.splitlines()[-1])["kind"] == "cancelled"


def _start_long_training(live: Live, model: str, *extra: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "charlstm.client.cli",
            "train",
            model,
            str(live.corpus),
            *LONG_JOB,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=live.env(),
    )
    # Wait for the job's first line on stderr ("job ...: training model ...").
    line = process.stderr.readline()
    assert line.startswith("job "), line
    return process


def test_ctrl_c_detaches_and_the_job_keeps_running(live: Live) -> None:
    process = _start_long_training(live, "detached")
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "Traceback" not in err
    job_id = err.split("detached from job ")[1].split(";")[0]
    assert f"charlstm watch {job_id}" in err and f"charlstm cancel {job_id}" in err
    with CharLstmClient(live.target) as client:
        assert client.get_job(job_id).state in ("queued", "running")  # detached, not cancelled
        client.cancel_job(job_id)


def test_ctrl_c_with_cancel_on_interrupt_cancels_the_job(live: Live) -> None:
    process = _start_long_training(live, "interrupted", "--cancel-on-interrupt")
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    job_id = err.split("cancelling job ")[1].split()[0]
    with CharLstmClient(live.target) as client:
        assert client.get_job(job_id).state == "cancelled"


# --- inference -------------------------------------------------------------------------------


def test_predict_human_and_json(live: Live) -> None:
    predictions = live.json("predict", "tiny", "ROMEO", "JULIET:", "--top-k", "4")
    assert [p["input"] for p in predictions] == ["ROMEO", "JULIET:"]
    for p in predictions:
        assert p["model"] == "tiny" and p["version"] == 2
        probabilities = [n["probability"] for n in p["next"]]
        assert len(probabilities) == 4 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-9
    human = live.run("predict", "tiny", "ROMEO", "--top-k", "4")
    assert human.returncode == 0
    header, *rows = human.stdout.strip().splitlines()
    assert header.split() == ["CHAR", "PROB"] and len(rows) == 4
    top = predictions[0]["next"][0]
    assert rows[0].startswith(repr(top["char"]))
    assert rows[0][len(repr(top["char"])) :].split()[0] == f"{top['probability']:.4f}"


def test_predict_continuation_with_version_and_label(live: Live) -> None:
    [greedy] = live.json(
        "predict", "tiny", "ROMEO", "--length", "30", "--temperature", "0", "--version", "1"
    )
    assert greedy["version"] == 1 and len(greedy["continuation"]) == 30
    assert len(greedy["continuation_probabilities"]) == 30
    human = live.run(
        "predict", "tiny", "ROMEO", "--length", "30", "--temperature", "0", "--version", "1"
    )
    assert human.stdout.rstrip("\n") == greedy["continuation"]
    by_label = live.json("predict", "tiny", "x", "--label", "latest")
    assert by_label[0]["version"] == 2


def test_stream_human_and_json(live: Live) -> None:
    chars = live.json(
        "stream", "tiny", "ROMEO:", "--length", "50", "--seed", "7", "--chars-per-message", "8"
    )
    *body, end = chars
    assert [c["kind"] for c in body] == ["char"] * 50 and end == {
        "kind": "end",
        "generated": 50,
        "model": "tiny",
        "version": 2,
    }
    assert all(0 < c["probability"] <= 1 for c in body)
    human = live.run("stream", "tiny", "ROMEO:", "--length", "50", "--seed", "7")
    assert human.returncode == 0
    # Same seed, same text: characters per message do not change what is sampled.
    assert human.stdout == "".join(c["char"] for c in body) + "\n"


def test_stream_prints_its_first_character_long_before_the_end(live: Live) -> None:
    start = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "charlstm.client.cli", "stream", "tiny", "ROMEO:", "--length", "4000"],
        stdout=subprocess.PIPE,
        env=live.env(),
    )
    first = process.stdout.read(1)
    first_at = time.monotonic() - start
    rest = process.stdout.read()
    process.wait(timeout=60)
    end_at = time.monotonic() - start
    assert process.returncode == 0 and len(first + rest) >= 4001
    # The first character is on the pipe while most of the generation is still to come.
    assert end_at - first_at > 0.3
    assert first_at < 0.7 * end_at, (first_at, end_at)


def test_stream_interactive_human_and_json(live: Live) -> None:
    lines = "ROMEO\n\n/reset\nJULIET\n/quit\nnever read\n"
    replies = live.json("stream", "tiny", "--interactive", "--length", "12", "--seed", "1", input=lines)
    assert [r["kind"] for r in replies] == ["continuation", "continuation", "reset", "continuation"]
    assert [r["input"] for r in replies if r["kind"] == "continuation"] == ["ROMEO", "", "JULIET"]
    assert all(len(r["text"]) == 12 for r in replies if r["kind"] == "continuation")
    human = live.run("stream", "tiny", "--interactive", "--length", "12", "--seed", "1", input=lines)
    assert human.returncode == 0
    expected = [r["text"] for r in replies if r["kind"] == "continuation"]
    assert human.stdout.split("\n")[:3] == expected


# --- models ----------------------------------------------------------------------------------


def test_models_and_model_human_and_json(live: Live) -> None:
    models = {m["name"]: m for m in live.json("models")}
    assert models["tiny"]["latest_version"] == 2
    assert models["tiny"]["architecture"]["hidden_size"] == 16
    human = live.run("models")
    assert any(row.split()[:3] == ["tiny", "2", "1x16"] for row in human.stdout.splitlines())

    [model] = live.json("model", "tiny")
    assert [v["version"] for v in model["versions"]] == [1, 2]
    assert model["vocabulary"] and model["architecture"]["vocab_size"] == len(model["vocabulary"]) + 1
    details = live.run("model", "tiny")
    assert details.returncode == 0
    assert "latest version: 2" in details.stdout
    assert sum(1 for row in details.stdout.splitlines() if row.split()[:1] in (["1"], ["2"])) == 2


def test_label_set_and_remove_human_and_json(live: Live) -> None:
    result = live.run("label", "tiny", "canary", "1")
    assert result.returncode == 0 and result.stdout.strip() == "tiny: canary -> version 1"
    [set_] = live.json("label", "tiny", "stable", "2")
    assert set_["version"] == 2 and set_["labels"]["stable"] == 2 and set_["labels"]["canary"] == 1
    assert live.json("predict", "tiny", "a", "--label", "canary")[0]["version"] == 1
    [removed] = live.json("label", "tiny", "canary", "--remove")
    assert removed["version"] is None and "canary" not in removed["labels"]
    assert (
        live.run("label", "tiny", "stable", "--remove").stdout.strip() == "tiny: removed label 'stable'"
    )
    usage = one_line_error(live.run("label", "tiny", "x"))
    assert "--remove" in usage


def test_delete_human_and_json(live: Live) -> None:
    trained = live.run(
        "train", "scratch", str(live.corpus), *TINY, "--steps", "4", "--checkpoint-every", "2"
    )
    assert trained.returncode == 0, trained.stderr
    result = live.run("delete", "scratch", "--version", "1")
    assert result.returncode == 0 and result.stdout.strip() == "deleted 'scratch' version 1"
    [deleted] = live.json("delete", "scratch")
    assert deleted == {"model": "scratch", "deleted_versions": [2]}
    assert "scratch" not in {m["name"] for m in live.json("models")}


# --- health and eval -------------------------------------------------------------------------


def test_health_human_and_json(live: Live) -> None:
    result = live.run("health")
    assert result.returncode == 0 and result.stdout.strip() == "SERVING"
    [status] = live.json("health", "--service", "charlstm.v1.CharLstm")
    assert status["status"] == "SERVING" and status["server"] == live.target


def test_eval_human_and_json(live: Live) -> None:
    [inline] = live.json("eval", "tiny", str(live.corpus))
    [uploaded] = live.json("eval", "tiny", str(live.corpus), "--inline-limit", "100", "--version", "2")
    assert inline["characters"] == len(live.corpus.read_text(encoding="utf-8")) - 1
    assert inline["loss"] == pytest.approx(uploaded["loss"], rel=1e-9)
    assert inline["bits_per_char"] == pytest.approx(inline["loss"] / math.log(2))
    human = live.run("eval", "tiny", str(live.corpus), "--version", "1")
    assert human.returncode == 0
    assert human.stdout.startswith("tiny version 1: loss ") and "bits/char" in human.stdout


# --- errors and help -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "status", "start"),
    [
        (
            ["health", "--server", "127.0.0.1:1", "--timeout", "5"],
            1,
            "error: UNAVAILABLE: 127.0.0.1:1: ",
        ),
        (["predict", "no-such-model", "x"], 1, "error: NOT_FOUND: "),
        (["watch", "job-nope"], 1, "error: NOT_FOUND: "),
        (["predict", "tiny", "x", "--temperature", "500"], 1, "error: INVALID_ARGUMENT: "),
        (
            ["predict", "tiny", "x", "--bogus"],
            2,
            "charlstm predict: error: unrecognized arguments: --bogus",
        ),
        (["predict", "tiny", "x", "--length", "many"], 2, "charlstm predict: error: argument --length"),
        (["nonsense"], 2, "charlstm: error: argument COMMAND: invalid choice"),
        (
            ["train", "m", "/no/such/corpus.txt"],
            1,
            "error: No such file or directory: /no/such/corpus.txt",
        ),
    ],
)
def test_errors_are_one_line_without_traceback(
    live: Live, args: list[str], status: int, start: str
) -> None:
    result = live.run(*args)
    assert result.returncode == status
    assert one_line_error(result).startswith(start)
    assert result.stdout == ""


def test_every_option_shows_its_default_in_help() -> None:
    parser = build_parser()
    formatter = HelpFormatter("charlstm")
    for name, command in parser.commands.items():  # type: ignore[attr-defined]
        for action in command._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                text = formatter._get_help_string(action) or ""
                assert "default" in text, f"charlstm {name} {action.option_strings[0]}: {text!r}"


def test_help_and_serve_help_exit_zero(live: Live) -> None:
    help_ = live.run("stream", "--help")
    assert help_.returncode == 0 and "--interactive" in help_.stdout and "(default: 200)" in help_.stdout
    serve = live.run("serve", "--help")  # handed to charlstm.service.server.main
    assert serve.returncode == 0, serve.stderr
    assert "charlstm serve" in serve.stdout and "--max-jobs" in serve.stdout


def test_json_lines_are_valid_json_only(live: Live) -> None:
    result = live.run("models", "--json")
    assert all(isinstance(json.loads(line), dict) for line in result.stdout.splitlines())
