"""`charlstm stream --max-chars-per-message` and the library's max_chars_per_message."""

from __future__ import annotations

from charlstm.client import CharLstmClient, InvalidArgumentError
from client_live import Live


def test_stream_max_chars_per_message_keeps_the_characters(live: Live) -> None:
    args = ("stream", "tiny", "ROMEO:", "--length", "60", "--seed", "4")
    plain = live.run(*args)
    coalesced = live.run(*args, "--max-chars-per-message", "16")
    assert plain.returncode == 0 and coalesced.returncode == 0, coalesced.stderr
    assert coalesced.stdout == plain.stdout and len(plain.stdout) == 61
    bad = live.run(*args, "--max-chars-per-message", "0")
    assert bad.returncode != 0 and "INVALID_ARGUMENT" in bad.stderr
    assert "generate.max_chars_per_message" in bad.stderr


def test_library_generate_with_max_chars_per_message(live: Live) -> None:
    with CharLstmClient(live.target) as client, client.stream("tiny", seed=2) as session:
        first = "".join(session.generate(40, seed=2))
        session.reset()
        again = "".join(session.generate(40, seed=2, max_chars_per_message=8))
        assert again == first and session.position == 40
        try:
            list(session.generate(5, max_chars_per_message=300))
        except InvalidArgumentError as error:
            assert "generate.max_chars_per_message" in str(error)
        else:
            raise AssertionError("max_chars_per_message=300 was accepted")
