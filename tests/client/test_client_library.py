"""The Python client library against the real server: the sync and asyncio clients agree, Stream
sessions keep state, and the asyncio client runs a Stream session and a Predict call."""

from __future__ import annotations

import asyncio

import pytest

from charlstm.client import (
    AsyncCharLstmClient,
    CharLstmClient,
    InvalidArgumentError,
    NotFoundError,
    RetryPolicy,
    UnavailableError,
)
from client_fakes import FakeServer
from client_live import Live

SMALL = dict(hidden_size=16, embedding_size=8, num_layers=1, seq_len=16, batch_size=4)


def _assert_same_next(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> None:
    """The same next characters, with probabilities equal to float32 rounding: a batched step
    rounds a row differently when the batcher steps it with others (this live server's other
    sessions), so two computations of one state agree to about 1e-8, not always to the bit."""
    assert [c for c, _ in a] == [c for c, _ in b]
    assert [p for _, p in a] == pytest.approx([p for _, p in b], rel=1e-5)


def test_async_client_runs_a_stream_session_and_a_predict_call(live: Live) -> None:
    async def scenario() -> tuple:
        async with AsyncCharLstmClient(live.target, timeout=10) as client:
            result = await client.predict(
                "tiny", ["ROMEO", "JULIET"], next_top_k=3, length=20, temperature=0
            )
            async with client.stream("tiny", temperature=0, next_top_k=3) as session:
                after_feed = await session.feed("ROMEO")
                generated = [char async for char in session.generate(20)]
                position = session.position
                await session.reset()
                return result, after_feed, "".join(generated), position, session.position, session.info

    result, after_feed, generated, position, reset_position, info = asyncio.run(scenario())
    assert result.model == "tiny" and result.version == 2
    assert [p.input for p in result.predictions] == ["ROMEO", "JULIET"]
    assert len(result.predictions[0].next) == 3 and len(result.predictions[0].continuation) == 20
    assert info.model == "tiny" and info.version == 2 and info.vocab_size > 1
    # Greedy decoding is deterministic: the session continues "ROMEO" exactly like Predict does.
    assert generated == result.predictions[0].continuation
    _assert_same_next(after_feed, result.predictions[0].next)
    assert position == len("ROMEO") + 20 and reset_position == 0


def test_sync_and_async_sessions_agree(live: Live) -> None:
    with (
        CharLstmClient(live.target) as client,
        client.stream("tiny", seed=11, temperature=0.9) as session,
    ):
        session.feed("KING")
        sync_text = "".join(session.generate(30))

    async def run() -> str:
        async with AsyncCharLstmClient(live.target) as client:
            session = await client.stream("tiny", seed=11, temperature=0.9)
            try:
                await session.feed("KING")
                return "".join([c async for c in session.generate(30)])
            finally:
                await session.close()

    assert asyncio.run(run()) == sync_text


def test_async_client_trains_and_reports_errors(live: Live) -> None:
    async def run() -> list:
        async with AsyncCharLstmClient(live.target) as client:
            events = [
                e
                async for e in client.train(
                    "async-trained", text=live.corpus.read_text(), steps=3, **SMALL
                )
            ]
            with pytest.raises(NotFoundError):
                await client.get_model("no-such-model")
            with pytest.raises(InvalidArgumentError) as caught:
                await client.predict("tiny", "x", temperature=-1)
            assert caught.value.field_violations and caught.value.field_violations[0][0].endswith(
                "temperature"
            )
            assert (await client.health()) == "SERVING"
            return events

    events = asyncio.run(run())
    assert events[0].kind == "accepted" and events[-1].kind == "succeeded"
    assert events[-1].succeeded.version >= 1


def test_async_retries_unavailable_then_succeeds(fake: FakeServer) -> None:
    fake.servicer.unavailable["Predict"] = 2

    async def run():
        async with AsyncCharLstmClient(fake.target, retry=RetryPolicy(initial_backoff=0.01)) as client:
            result = await client.predict("m", "x")
            fake.servicer.unavailable["Train"] = 1
            with pytest.raises(UnavailableError):
                await client.train("m", text="abc")
            return result

    result = asyncio.run(run())
    assert result.predictions[0].next == [("a", 0.75)]
    assert fake.servicer.calls["Predict"] == 3 and fake.servicer.calls["Train"] == 1


def test_generation_arrives_incrementally_and_an_abandoned_one_is_drained(live: Live) -> None:
    with CharLstmClient(live.target) as client, client.stream("tiny", seed=3) as session:
        first = session.feed("ROMEO")
        partial = []
        for generated in session.generate_with_probs(50):
            partial.append(generated)
            if len(partial) == 5:
                break  # abandon the generation; the next action reads the rest first
        assert all(0 < g.probability <= 1 for g in partial)
        session.feed("!")
        assert session.position == len("ROMEO") + 50 + 1
        assert session.transcript.startswith("ROMEO" + "".join(g.char for g in partial))
        assert len(session.transcript) == session.position
        # The transcript reproduces the state in a fresh session (how a lost session is rebuilt).
        with client.stream("tiny") as replay:
            _assert_same_next(replay.feed(session.transcript), session.next)
        assert first != session.next


def test_uploaded_corpus_trains_and_evaluates(live: Live) -> None:
    with CharLstmClient(live.target) as client:
        with open(live.corpus, "rb") as file:
            corpus = client.upload_corpus(file)
        assert corpus.size_bytes == live.corpus.stat().st_size
        again = client.upload_corpus(text=live.corpus.read_text(encoding="utf-8"))
        assert again.id == corpus.id and again.already_existed
        with client.train("from-upload", corpus_id=corpus.id, steps=3, **SMALL) as events:
            kinds = [event.kind for event in events]
        assert kinds[0] == "accepted" and kinds[-1] == "succeeded"
        job = client.list_jobs("from-upload")[0]
        assert job.corpus_id == corpus.id and job.done and job.hyperparameters["steps"] == 3
        by_id = client.evaluate("from-upload", corpus_id=corpus.id)
        inline = client.evaluate("from-upload", live.corpus.read_text(encoding="utf-8"))
        assert by_id.loss == pytest.approx(inline.loss) and by_id.characters == corpus.characters - 1
