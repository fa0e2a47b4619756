"""The qwen3-remote engine against misbehaving vLLM servers (a stand-in server, no vllm needed).

How it decodes, balances and fails over against real vLLM servers is tested in
tests/vllm/test_qwen3_remote.py (CI only); here the servers answer what real ones rarely do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest

from satellite_asr.engines.base import EngineError, StreamOptions, Transcript
from satellite_asr.engines.qwen3_prompt import Qwen3Decoding, roll_back
from satellite_asr.engines.qwen3_remote import UNKNOWN_LOGPROB, Qwen3RemoteEngine
from tests.helpers import eventually, free_port
from tests.vllm_server_double import MODEL, TRANSCRIPT, VllmServerDouble, completion

pytestmark = pytest.mark.timeout(60)

SECOND = np.zeros(16000, dtype=np.float32)


@pytest.fixture
async def servers() -> AsyncIterator[list[VllmServerDouble]]:
    """Two stand-in servers, started."""
    pair = [VllmServerDouble(), VllmServerDouble()]
    for server in pair:
        await server.start()
    yield pair
    for server in pair:
        await server.stop()


@asynccontextmanager
async def started(servers: list[VllmServerDouble], **options: object) -> AsyncIterator[Qwen3RemoteEngine]:
    engine = Qwen3RemoteEngine([server.url for server in servers], **options)  # type: ignore[arg-type]
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


async def final(engine: Qwen3RemoteEngine) -> Transcript:
    return await engine.open_stream(StreamOptions(language="en")).final(SECOND)


def healthy(engine: Qwen3RemoteEngine) -> list[bool]:
    return [endpoint.healthy for endpoint in engine.endpoints]


async def test_a_server_listing_a_model_without_id_is_unhealthy_and_the_engine_starts(
    servers: list[VllmServerDouble],
) -> None:
    servers[1].replies["/v1/models"] = (200, json.dumps({"object": "list", "data": [{"object": "model"}]}))
    async with started(servers) as engine:
        assert engine.ready and healthy(engine) == [True, False]
        assert (await final(engine)).text == "turn on the lights"


async def test_the_prober_lives_through_a_malformed_model_list(servers: list[VllmServerDouble]) -> None:
    async with started(servers, health_interval_s=0.1) as engine:
        assert healthy(engine) == [True, True]
        servers[1].replies["/v1/models"] = (200, json.dumps({"object": "list", "data": [1]}))
        await eventually(lambda: healthy(engine) == [True, False], seconds=10)
        del servers[1].replies["/v1/models"]
        await eventually(lambda: healthy(engine) == [True, True], seconds=10)


async def test_a_server_down_at_start_and_a_timeout_say_why(
    servers: list[VllmServerDouble], caplog: pytest.LogCaptureFixture
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    engine = Qwen3RemoteEngine([servers[0].url, down], timeout_s=0.5, health_interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="satellite_asr.engines.qwen3_remote"):
        await engine.start()
    try:
        assert healthy(engine) == [True, False]
        assert any(down in record.getMessage() and "Cannot connect" in record.getMessage() for record in caplog.records)
        servers[0].decodes_gate.clear()
        with pytest.raises(EngineError, match=r"no answer in 0\.5 s"):
            await final(engine)
    finally:
        await engine.close()


async def test_a_server_serving_another_model_is_unhealthy(
    servers: list[VllmServerDouble], caplog: pytest.LogCaptureFixture
) -> None:
    servers[0].model = "Qwen/Qwen3-ASR-0.6B"
    with caplog.at_level(logging.WARNING, logger="satellite_asr.engines.qwen3_remote"):
        engine = Qwen3RemoteEngine([server.url for server in servers], model=MODEL, health_interval_s=3600)
        await engine.start()
    try:
        assert healthy(engine) == [False, True]
        assert f"it serves Qwen/Qwen3-ASR-0.6B, not the configured {MODEL}" in caplog.text
        for _ in range(3):  # one at a time: each would go to the first server while it is healthy
            assert (await final(engine)).text == "turn on the lights"
        assert servers[1].requests["/v1/chat/completions"] == 3
    finally:
        await engine.close()


CHAT = "/v1/chat/completions"


async def test_an_overloaded_server_is_skipped(servers: list[VllmServerDouble]) -> None:
    servers[0].replies[CHAT] = (429, json.dumps({"object": "error", "message": "Too many requests", "code": 429}))
    async with started(servers, health_interval_s=3600) as engine:
        assert (await final(engine)).text == "turn on the lights"
        assert [server.requests[CHAT] for server in servers] == [1, 1]
    async with started(servers[:1], health_interval_s=3600) as engine:
        servers[0].replies[CHAT] = (429, "Too Many Requests")  # a proxy's, in plain text
        with pytest.raises(EngineError, match="HTTP 429: Too Many Requests"):
            await final(engine)


async def test_a_refusal_in_plain_text_says_its_status_and_the_server_stays_healthy(
    servers: list[VllmServerDouble],
) -> None:
    servers[0].replies[CHAT] = (400, "Bad Request")
    async with started(servers, health_interval_s=3600) as engine:
        with pytest.raises(EngineError, match="refused the request: HTTP 400: Bad Request"):
            await final(engine)
        assert healthy(engine) == [True, True] and servers[1].requests[CHAT] == 0


@pytest.mark.parametrize(
    ("status", "answer", "said"),
    [
        (400, {"object": "error", "message": "B" * (5 << 20)}, 'HTTP 400: {"object": "error", "message": "BBB'),
        (200, {"error_detail": "A" * (5 << 20)}, "HTTP 200 with an answer over 1048576 bytes"),  # left unread
        (
            200,
            {"error_detail": "A" * (500 << 10)},
            "unexpected answer from vLLM server to /v1/chat/completions: {'error_detail': 'AAA",
        ),
    ],
)
async def test_a_huge_answer_makes_a_short_error(
    servers: list[VllmServerDouble], status: int, answer: dict[str, str], said: str
) -> None:
    servers[0].replies[CHAT] = (status, json.dumps(answer))
    async with started(servers[:1], health_interval_s=3600) as engine:
        with pytest.raises(EngineError, match=re.escape(said)) as error:
            await final(engine)
    assert len(str(error.value)) < 1000


async def test_an_answer_nested_too_deep_to_parse_is_a_failing_server(servers: list[VllmServerDouble]) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    servers[0].replies["/v1/models"] = (200, nested)
    async with started(servers, health_interval_s=3600) as engine:
        assert healthy(engine) == [False, True]
        assert engine.endpoints[0].reason == "its answer nests too deeply to be parsed as JSON"
    del servers[0].replies["/v1/models"]
    servers[0].replies[CHAT] = (200, nested)
    async with started(servers, health_interval_s=3600) as engine:
        assert (await final(engine)).text == TRANSCRIPT  # from the other server
        assert [server.requests[CHAT] for server in servers] == [1, 1] and healthy(engine) == [False, True]
        assert engine.endpoints[0].reason.startswith("HTTP 200 with an answer that is not JSON: [[[")


async def test_more_decodes_than_a_connection_pool_holds_reach_the_server_and_probes_still_pass(
    servers: list[VllmServerDouble],
) -> None:
    """aiohttp's default pool holds 100 connections; remote_max_concurrency allows 4096."""
    decodes = 150
    async with started(servers[:1], max_concurrency=decodes, health_interval_s=0.1) as engine:
        servers[0].decodes_gate.clear()
        finals = [asyncio.create_task(final(engine)) for _ in range(decodes)]
        await eventually(lambda: servers[0].decoding == decodes, seconds=20)
        probed = servers[0].requests["/v1/models"]
        await eventually(lambda: servers[0].requests["/v1/models"] >= probed + 2, seconds=20)
        assert engine.ready
        servers[0].decodes_gate.set()
        assert [transcript.text for transcript in await asyncio.gather(*finals)] == ["turn on the lights"] * decodes


async def test_answers_of_the_wrong_shape_are_engine_errors(servers: list[VllmServerDouble]) -> None:
    no_usage, content_not_text, infinite_tokens = completion(TRANSCRIPT), completion(TRANSCRIPT), completion(TRANSCRIPT)
    no_usage["usage"] = None
    content_not_text["choices"][0]["message"]["content"] = {"text": TRANSCRIPT}
    infinite_tokens["usage"]["completion_tokens"] = float("inf")  # Infinity: JSON to Python's parser
    async with started(servers[:1], decoding=Qwen3Decoding(fresh_partials=0), health_interval_s=3600) as engine:
        for answer in (no_usage, content_not_text, infinite_tokens):
            servers[0].replies[CHAT] = (200, json.dumps(answer))
            with pytest.raises(EngineError, match="unexpected answer from vLLM server to /v1/chat/completions"):
                await final(engine)
        del servers[0].replies[CHAT]
        stream = engine.open_stream(StreamOptions(language="en"))
        await stream.partial(SECOND)  # the next partial continues it, rolled back with the tokenizer
        servers[0].replies["/tokenize"] = (200, json.dumps({"count": 3}))
        with pytest.raises(EngineError, match="unexpected answer from vLLM server to /tokenize"):
            await stream.partial(SECOND)
        del servers[0].replies["/tokenize"]
        servers[0].replies["/detokenize"] = (200, json.dumps({"text": "turn on"}))
        with pytest.raises(EngineError, match="unexpected answer from vLLM server to /detokenize"):
            await stream.partial(SECOND)


class ByteTokenizer:
    """UTF-8 bytes as tokens, as a byte-level tokenizer may cut them; counts the decodes asked for."""

    def __init__(self) -> None:
        self.decodes = 0

    async def encode(self, text: str) -> list[int]:
        return list(text.encode())

    async def decode(self, ids: Sequence[int]) -> str:
        self.decodes += 1
        return bytes(ids).decode(errors="replace")


async def test_roll_back_cuts_after_a_whole_character_and_asks_once_past_a_replacement_character() -> None:
    tokenizer = ByteTokenizer()
    assert await roll_back("lights ☃☃", 5, tokenizer.encode, tokenizer.decode) == "lights "  # not half a ☃
    assert tokenizer.decodes == 2
    # a U+FFFD the model wrote (vLLM's for invalid bytes) is text, not a cut: one decode, not one per token
    text = "turn on \ufffd" + " the kitchen lights please" * 12
    tokenizer.decodes = 0
    assert await roll_back(text, 5, tokenizer.encode, tokenizer.decode) == text[:-5]
    assert tokenizer.decodes == 1
    tokenizer.decodes = 0  # text that ends in U+FFFD wherever it is cut: a few tries, then a fresh decode
    assert await roll_back("\ufffd" * 100, 5, tokenizer.encode, tokenizer.decode) == ""
    assert tokenizer.decodes == 8


async def test_a_stream_with_names_reads_how_sure_the_model_was_of_each_character(
    servers: list[VllmServerDouble],
) -> None:
    """The names' correction leaves alone words the model was sure of (`Transcript.token_spans`); a
    stream without names asks for nothing more. A Cyrillic letter is two bytes and one token."""
    text = "Turn on Дмитро's lamp"
    servers[0].transcript = text
    async with started(servers[:1]) as engine:
        named = await engine.open_stream(StreamOptions(language="en", names=("Дмитро's lamp",))).final(SECOND)
        plain = await final(engine)
    assert named.text == plain.text == text
    assert [text[span.start : span.end] for span in named.token_spans] == list(text)
    assert {span.logprob for span in named.token_spans} == {-0.01}
    assert plain.token_spans == ()
    assert [body.get("logprobs") for body in servers[0].chat_bodies] == [True, None]


async def test_a_partials_rolled_back_words_keep_how_sure_the_model_was_of_them(
    servers: list[VllmServerDouble],
) -> None:
    decoding = Qwen3Decoding(fresh_partials=1, rollback_tokens=5)
    async with started(servers[:1], decoding=decoding) as engine:
        stream = engine.open_stream(StreamOptions(language="en", names=("Kitchen lights",)))
        servers[0].logprob = -2.0
        await stream.partial(SECOND)
        servers[0].logprob = -0.5
        partial = await stream.partial(SECOND)  # continues "turn on the l" (5 byte-tokens rolled back)
    kept = TRANSCRIPT[:-5]
    assert partial.text == kept + TRANSCRIPT
    assert [partial.text[span.start : span.end] for span in partial.token_spans] == list(partial.text)
    assert [span.logprob for span in partial.token_spans] == [-2.0] * len(kept) + [-0.5] * len(TRANSCRIPT)


def with_logprobs(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    answer = completion(TRANSCRIPT, -0.01)
    change(answer["choices"][0]["logprobs"])
    return answer


def short_of_the_text(logprobs: dict[str, Any]) -> None:
    """Without the text's last character (and the stop token after it)."""
    del logprobs["content"][-2:]


def split_character(logprobs: dict[str, Any]) -> None:
    """The text's last character as two tokens, each reported as U+FFFD with that character's bytes
    (how a server may report part of a character; vLLM 0.32 gives "" and then the whole character)."""
    replacement = {"token": "\ufffd", "logprob": -0.01, "bytes": list("\ufffd".encode()), "top_logprobs": []}
    logprobs["content"][-2:-1] = [replacement, replacement]


@pytest.mark.parametrize(
    "answer",
    [
        completion(TRANSCRIPT),  # a server that does not give them
        with_logprobs(lambda logprobs: logprobs.update(content=None)),
        with_logprobs(lambda logprobs: logprobs["content"][3].update(bytes=None)),
        with_logprobs(lambda logprobs: logprobs["content"][3].update(bytes=[300])),
        with_logprobs(lambda logprobs: logprobs["content"][3].update(bytes=10**12)),  # not a terabyte of zeros
        with_logprobs(lambda logprobs: logprobs["content"][3].update(logprob="sure")),
        with_logprobs(lambda logprobs: logprobs["content"][3].update(logprob=float("nan"))),
        with_logprobs(lambda logprobs: logprobs["content"][3].update(logprob=UNKNOWN_LOGPROB)),  # vLLM's "none"
        with_logprobs(short_of_the_text),
        with_logprobs(lambda logprobs: logprobs["content"][0].update(bytes=list(b"T"))),  # another text
        with_logprobs(split_character),
    ],
)
async def test_log_probabilities_missing_or_garbled_leave_the_text_to_be_judged_alone(
    servers: list[VllmServerDouble], answer: dict[str, Any]
) -> None:
    servers[0].replies[CHAT] = (200, json.dumps(answer))
    async with started(servers[:1], health_interval_s=3600) as engine:
        transcript = await engine.open_stream(StreamOptions(language="en", names=("Kitchen lights",))).final(SECOND)
    assert transcript.text == TRANSCRIPT and transcript.token_spans == ()
