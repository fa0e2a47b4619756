"""Fireworks AI's streaming transcription API (`/v1/audio/transcriptions/streaming`) end to end: real
daemon, real Silero, real tiny.en, a raw WebSocket client for every message and for input no client
would send."""

from __future__ import annotations

import ast
import gc
import json
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import websockets
from multidict import MultiDict

from satellite_asr.core import Core
from satellite_asr.protocols import fireworks
from satellite_asr.server import Daemon
from tests.doubles import FailsOnAWordEngineDouble
from tests.helpers import (
    EXPECTED,
    PCM_FRAME_BYTES,
    daemon_settings,
    fixture_16k,
    is_binary,
    normalise,
    pcm16,
    pcm_frames,
    read_all,
    running_daemon,
    same_words,
    send_all,
)
from tests.test_docs import ROOT
from tests.test_mistral import Messages

pytestmark = pytest.mark.timeout(180)

FIXTURE = "three_commands.wav"
KEY = "fireworks-key"
FINAL = {"checkpoint_id": "final"}


def url(daemon: Daemon, query: str = "") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{fireworks.PATH}{'?' + query if query else ''}"


def audio() -> bytes:
    return pcm16(fixture_16k(FIXTURE), 16000)


async def stream(
    target: str, *sent: dict[str, Any] | str | bytes, headers: dict[str, str] | None = None, paced: bool = False
) -> tuple[Messages, int | None]:
    """The `sent` messages (by default the fixture, then the checkpoint `final`); every message
    until the Close, and its code."""
    return await send_all(target, sent or (*pcm_frames(audio()), FINAL), headers, paced, is_binary)


def transcriptions(messages: Messages) -> Messages:
    return [message for message in messages if message.get("task") == "transcribe"]


def finals(messages: Messages) -> Messages:
    """The transcriptions whose words are all final (an empty final has none)."""
    return [m for m in transcriptions(messages) if m["words"] and all(w["is_final"] for w in m["words"])]


def final_texts(messages: Messages) -> list[str]:
    return [message["text"] for message in finals(messages)]


def errors(messages: Messages) -> Messages:
    return [message["error"] for message in messages if "error" in message]


async def test_three_commands_every_message() -> None:
    """Each command is one segment, its id above the one before: partials (every word not final)
    then the final (every word final), each message naming that segment alone and its text as the
    message's; the checkpoint `final` is echoed after the last final, then the Close 1000."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), *pcm_frames(audio()), FINAL, paced=True)
    assert code == 1000 and messages[-1] == FINAL, messages[-1:]
    assert same_words(EXPECTED[FIXTURE], final_texts(messages)), final_texts(messages)
    said = transcriptions(messages)
    assert len(said) == len(messages) - 1
    ids = []
    for message in said:
        (segment,) = message["segments"]
        assert set(message) == {"task", "language", "text", "words", "segments"} and message["language"] == "en"
        assert segment["text"] == message["text"] and segment["words"] == message["words"]
        assert [word["word"] for word in message["words"]] == message["text"].split()
        assert {"start", "end"}.isdisjoint(segment), "no timestamps unless asked for"
        assert len({word["is_final"] for word in message["words"]}) <= 1
        ids.append(segment["id"])
    assert ids == sorted(ids) and len(set(ids)) == 3, ids
    for segment_id in set(ids):
        mine = [m for m in said if m["segments"][0]["id"] == segment_id]
        assert len(mine) > 1 and mine[-1] in finals(messages), "partials, then the final"
        assert not any(m in finals(messages) for m in mine[:-1])


async def test_timestamps_when_asked_for_and_ids_rise_across_streams() -> None:
    """`timestamp_granularities` word and segment (repeated, as the plugin sends a list, or one
    comma-separated value): the segment's span, and each word the segment's (the engine gives no
    word times). A second stream's segment ids are above the first's."""
    async with running_daemon() as daemon:
        first, _ = await stream(url(daemon, "timestamp_granularities=word&timestamp_granularities=segment"))
        second, _ = await stream(url(daemon, "timestamp_granularities=word,segment"))
    for messages in (first, second):
        for message in finals(messages):
            segment = message["segments"][0]
            assert 0 <= segment["start"] < segment["end"], segment
            assert all((w["start"], w["end"]) == (segment["start"], segment["end"]) for w in message["words"])
    assert max(m["segments"][0]["id"] for m in finals(first)) < min(m["segments"][0]["id"] for m in finals(second))


async def test_checkpoints_traces_and_clears_end_the_utterance_and_are_answered_after_its_final() -> None:
    """Mid-command, a checkpoint ends the utterance: its final, then the echo; the stream goes on. A
    trace is answered with `stt.output.trace` (its `event_id` echoed), a clear with `stt.state.cleared`.
    The trace `final` ends the stream as the checkpoint `final` does."""
    data = audio()
    middle = 12 * PCM_FRAME_BYTES
    trace = {"event_id": "e1", "object": "stt.input.trace", "trace_id": "t1"}
    clear = {"event_id": "e2", "object": "stt.state.clear", "reset_id": "r1"}
    end = {"object": "stt.input.trace", "trace_id": "final"}
    async with running_daemon() as daemon:
        messages, code = await stream(
            url(daemon),
            *pcm_frames(data[:middle]),
            {"checkpoint_id": "c1"},
            trace,
            clear,
            *pcm_frames(data[middle:]),
            end,
        )
    answers = [m for m in messages if m.get("task") != "transcribe"]
    assert answers[0] == {"checkpoint_id": "c1"}, answers
    assert answers[1] == {"event_id": "e1", "object": "stt.output.trace", "trace_id": "t1"}
    assert answers[2] == {"event_id": "e2", "object": "stt.state.cleared", "reset_id": "r1"}
    assert answers[3]["object"] == "stt.output.trace" and answers[3]["trace_id"] == "final" and code == 1000
    assert finals(messages)[0] == messages[messages.index(answers[0]) - 1], "the final comes before the echo"
    said = normalise(" ".join(final_texts(messages)))
    assert "what time is it" in said and "open the garage door" in said, said


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("skip_vad=true", "cannot skip its VAD"),
        ("skip_vad=maybe", "skip_vad must be true or false"),
        ("response_format=json", "verbose_json only"),
        ("temperature=3", "temperature must be a number from 0.0 to 1.0"),
        ("text_timeout_seconds=0.5", "text_timeout_seconds must be a number from 1.0 to 29.0"),
        ("timestamp_granularities=char", "use word, segment or both"),
        ("vad_kwargs=not+a+dict", "vad_kwargs must be a setting's name or an object"),
        ("vad_kwargs=%7B%22threshold%22%3A%22high%22%7D", "vad_kwargs must be a setting's name or an object"),
        ("language=fr", "'fr' is not one of the languages"),
        ("model=", "model must be a model's name"),
        ("diarize=true", "unknown query parameter 'diarize'"),
        ("prompt=" + "x" * 5000, "max_context_chars"),
        ("language=en&language=en", "given 2 times"),
    ],
)
async def test_a_bad_query_is_a_400_in_openais_shape_before_the_upgrade(query: str, words: str) -> None:
    async with running_daemon() as daemon:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await stream(url(daemon, query))
    assert refused.value.response.status_code == 400
    error = json.loads(refused.value.response.body)["error"]
    assert error["code"] == "invalid_query_parameter" and words in error["message"], error
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "query",
    [
        "vad_kwargs=threshold&vad_kwargs=min_silence_duration_ms",  # the plugin's dict, its names alone
        "vad_kwargs=%7B%27threshold%27%3A+0.15%7D",  # a dict as Python writes it
        "vad_kwargs=" + quote('{"threshold": 0.15, "min_silence_duration_ms": 300}'),
        "model=fireworks-asr-large&temperature=0&text_timeout_seconds=1.0&skip_vad=false&response_format=verbose_json",
        "prompt=Aoife&language=en-US",
    ],
)
async def test_settings_checked_and_not_applied_are_taken(query: str) -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, query))
    assert same_words(EXPECTED[FIXTURE], final_texts(messages)) and code == 1000, messages


@pytest.mark.parametrize(
    ("message", "words"),
    [
        ("not json", "not JSON"),
        (b"\x00", "whole"),
        ({"object": "stt.input.flush"}, "unknown object 'stt.input.flush'"),
        ({"checkpoint_id": 5}, "a checkpoint's checkpoint_id must be a text"),
        ({"checkpoint_id": "c", "x": 1}, "no field 'x'"),
        ({"object": "stt.state.clear"}, "reset_id must be a text"),
        ({"type": "finalize"}, "the message has no object"),
    ],
)
async def test_a_refused_message_loses_nothing_else(message: Any, words: str) -> None:
    """A bad message midway: the error in OpenAI's shape with the sentence; the stream goes on and
    every command is still heard."""
    data = audio()
    middle = 12 * PCM_FRAME_BYTES
    async with running_daemon() as daemon:
        sent = (*pcm_frames(data[:middle]), message, *pcm_frames(data[middle:]), FINAL)
        messages, code = await stream(url(daemon), *sent)
    assert len(errors(messages)) == 1 and words in errors(messages)[0]["message"], errors(messages)
    assert same_words(EXPECTED[FIXTURE], final_texts(messages)) and code == 1000


async def test_an_engine_failure_is_an_error_and_the_stream_goes_on() -> None:
    async with running_daemon(FailsOnAWordEngineDouble("bedroom")) as daemon:
        messages, code = await stream(url(daemon))
    assert [error["code"] for error in errors(messages)] == ["engine_error"], messages
    assert errors(messages)[0]["type"] == "server_error"
    said = normalise(" ".join(final_texts(messages)))
    assert "what time is it" in said and "garage door" in said and code == 1000


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"Authorization": KEY}, ""),  # the plugin's: the key alone
        ({"Authorization": f"Bearer {KEY}"}, ""),
        ({}, f"Authorization={KEY}"),  # a browser's
        ({}, f"Authorization=Bearer%20{KEY}"),
        ({}, f"api_key={KEY}"),
    ],
)
async def test_the_key_as_fireworks_clients_send_it(headers: dict[str, str], query: str) -> None:
    async with running_daemon(api_key=KEY) as daemon:
        messages, code = await stream(url(daemon, query), headers=headers)
    assert same_words(EXPECTED[FIXTURE], final_texts(messages)) and code == 1000


@pytest.mark.parametrize(
    ("headers", "query", "code"),
    [
        ({}, "", "missing_api_key"),
        ({"Authorization": "wrong"}, "", "invalid_api_key"),
        ({}, "Authorization=wrong", "invalid_api_key"),
    ],
)
async def test_a_missing_or_wrong_key_is_a_401_in_openais_shape(headers: dict[str, str], query: str, code: str) -> None:
    async with running_daemon(api_key=KEY) as daemon:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await stream(url(daemon, query), headers=headers)
    assert refused.value.response.status_code == 401
    error = json.loads(refused.value.response.body)["error"]
    assert error["code"] == code and error["type"] == "authentication_error", error


async def test_idle_timeout_sends_the_finals_then_an_error_then_1001() -> None:
    async with running_daemon(idle_timeout_s=2) as daemon, websockets.connect(url(daemon)) as ws:
        for frame in pcm_frames(pcm16(fixture_16k("lights_on.wav"), 16000)):
            await ws.send(frame)
        messages = await read_all(ws)
    assert same_words(EXPECTED["lights_on.wav"], final_texts(messages)), messages
    assert errors(messages)[-1]["code"] == "idle_timeout" and "idle_timeout_s" in errors(messages)[-1]["message"]
    assert ws.close_code == 1001


async def test_over_max_sessions_is_an_error_then_1013_and_the_open_session_goes_on() -> None:
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(url(daemon)) as first,
    ):
        refused, code = await stream(url(daemon), FINAL)
        for message in (*pcm_frames(audio()), FINAL):
            await first.send(json.dumps(message) if isinstance(message, dict) else message)
        messages = await read_all(first)
    assert [error["code"] for error in errors(refused)] == ["server_busy"] and code == 1013, refused
    assert same_words(EXPECTED[FIXTURE], final_texts(messages))


async def test_a_message_over_1_mib_closes_1009_as_the_docs_say() -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), bytes(1 << 20 | 2))
    assert messages == [] and code == 1009, (messages, code)
    assert "closes the connection with 1009" in (ROOT / "docs" / "fireworks.md").read_text()


async def test_a_plain_get_is_a_426_naming_the_api() -> None:
    async with running_daemon() as daemon, aiohttp.ClientSession() as http:
        response = await http.get(url(daemon).replace("ws://", "http://"))
        body = await response.json()
    assert response.status == 426 and "Fireworks AI's streaming transcription API" in body["error"]["message"]


class AstInFinalizerDouble:
    """A double of an object elsewhere in the process whose finalizer builds an AST (as Python 3.11's
    traceback formatting does, `ast.parse` for its carets, when an un-retrieved task's exception is
    logged): freed by a garbage collection that runs while the daemon reads a query."""

    left = 0
    """How many more the finalizer leaves behind: one is always waiting for the next collection."""

    def __del__(self) -> None:
        ast.parse("x = 1")
        if AstInFinalizerDouble.left > 0:
            AstInFinalizerDouble.left -= 1
            AstInFinalizerDouble.garbage()

    @staticmethod
    def garbage() -> None:
        cycle = AstInFinalizerDouble()
        cycle.cycle = cycle  # type: ignore[attr-defined]


def test_vad_kwargs_is_read_without_pythons_ast_module() -> None:
    """CPython 3.11 keeps one AST recursion counter per interpreter: an AST built by a finalizer while
    another is being built leaves it unbalanced, and the outer `ast.literal_eval` raises `SystemError:
    AST constructor recursion depth mismatch` (what was seen at the exit of a test run). Reading
    `vad_kwargs` as a Python dict must not depend on that: a collection on every allocation, and
    cyclic garbage whose finalizer builds an AST."""
    core = Core(daemon_settings())
    value = "{" + ", ".join(f"'setting_{index}': {index}.5" for index in range(60)) + "}"
    threshold = gc.get_threshold()
    gc.set_threshold(1)
    AstInFinalizerDouble.left = 100_000
    AstInFinalizerDouble.garbage()
    try:
        for _ in range(20):
            fireworks.parse_query(MultiDict([("vad_kwargs", value)]), core)
    finally:
        AstInFinalizerDouble.left = 0
        gc.set_threshold(*threshold)
        gc.collect()


def test_security_md_lists_the_key_in_fireworks_query() -> None:
    """docs/security.md's table of the ways a key may come names every way the daemon takes one:
    `?Authorization=KEY` on Fireworks AI's path among them (a key in a URL, which proxies log)."""
    text = (ROOT / "docs" / "security.md").read_text()
    ways = [line for line in text.splitlines() if line.startswith("| `?") or line.startswith("| `?Ocp")]
    assert any("?Authorization=KEY" in line and "fireworks.md" in line for line in ways), ways
