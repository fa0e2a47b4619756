"""Baseten's streaming transcription API (`/environments/production/websocket`) end to end: real
daemon, real Silero, real tiny.en, a raw WebSocket client for every message and for input no client
would send."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest
import websockets

from satellite_asr.protocols import baseten
from satellite_asr.server import Daemon
from tests.helpers import (
    EXPECTED,
    PCM_FRAME_BYTES,
    eventually,
    fixture_16k,
    is_binary,
    of_type,
    pcm16,
    pcm_frames,
    read_all,
    running_daemon,
    same_words,
    send_all,
)

pytestmark = pytest.mark.timeout(180)

FIXTURE = "three_commands.wav"
KEY = "baseten-key"
METADATA = {
    "whisper_params": {"audio_language": "en", "show_word_timestamps": True},
    "streaming_params": {
        "encoding": "pcm_s16le",
        "sample_rate": 16000,
        "enable_partial_transcripts": True,
        "partial_transcript_interval_s": 1.0,
        "final_transcript_max_duration_s": 30,
    },
    "streaming_vad_config": {"threshold": 0.5, "min_silence_duration_ms": 300, "speech_pad_ms": 30},
}
"""What the plugin's `whisper` model sends first."""
QWEN3 = {
    "whisper_params": {"audio_language": "auto", "show_word_timestamps": False},
    "streaming_params": {
        "enable_partial_transcripts": True,
        "partial_transcript_interval_s": 0.5,
        "final_transcript_max_duration_s": 30,
    },
    "streaming_vad_config": {"threshold": 0.5, "min_silence_duration_ms": 500, "speech_pad_ms": 100},
}
"""What the plugin's `qwen3-asr` model sends first."""
TERMINATE = {"terminate_session": True}
COMMIT = {"type": "input_audio_buffer.commit"}


def url(daemon: Daemon, query: str = "") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{baseten.PATH}{'?' + query if query else ''}"


def audio() -> bytes:
    return pcm16(fixture_16k(FIXTURE), 16000)


def appends(data: bytes) -> list[dict[str, Any]]:
    return [
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(frame).decode()} for frame in pcm_frames(data)
    ]


def is_audio(message: dict[str, Any] | str | bytes) -> bool:
    return is_binary(message) or (isinstance(message, dict) and message.get("type") == "input_audio_buffer.append")


async def stream(
    target: str, *sent: dict[str, Any] | str | bytes, headers: dict[str, str] | None = None, paced: bool = False
) -> tuple[list[dict[str, Any]], int | None]:
    return await send_all(target, sent or (METADATA, *pcm_frames(audio()), TERMINATE), headers, paced, is_audio)


def finals(messages: list[dict[str, Any]]) -> list[str]:
    return [m["transcript"] for m in of_type(messages, "transcription") if m["is_final"] and m["transcript"]]


async def test_three_commands_every_message() -> None:
    """The whisper model's way: metadata, binary PCM, `terminate_session`. Partials then a final per
    command, each a `transcription` with its text in `transcript` and one segment; then 1000."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), METADATA, *pcm_frames(audio()), TERMINATE, paced=True)
    assert code == 1000
    assert {m["type"] for m in messages} == {"transcription"}, messages
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)
    partials = [m for m in messages if not m["is_final"]]
    assert partials and all(m["transcript"] and m["confidence"] == 0.0 for m in partials)
    for message in messages:
        [segment] = message["segments"]
        assert segment["text"] == message["transcript"] and 0 <= segment["start_time"] <= segment["end_time"]
        assert message["language_code"] == "en"
    last = [m for m in messages if m["is_final"]][-1]
    assert 0 <= last["confidence"] <= 1 and last["is_end_of_audio_flush"] is False


async def test_qwen3_appends_and_commits_are_each_answered_by_a_flush_final() -> None:
    """The qwen3-asr model's way: base64 appends, and a commit after some of them (here in the pause
    after the second command) and at the end of the audio. Each commit is answered by one final with
    `is_end_of_audio_flush`, an empty one when nothing was being heard; the commands' finals come as
    ever. Partials off: finals only. `auto` is detection."""
    no_partials = {**QWEN3, "streaming_params": {"enable_partial_transcripts": False}}
    data = audio()
    cut = len(data) * 3 // 5 // 2 * 2
    async with running_daemon() as daemon:
        messages, code = await stream(
            url(daemon), no_partials, *appends(data[:cut]), COMMIT, *appends(data[cut:]), COMMIT, TERMINATE
        )
    assert code == 1000 and all(m.get("is_final") for m in messages), messages
    flushes = [at for at, m in enumerate(messages) if m["is_end_of_audio_flush"]]
    assert len(flushes) == 2 and messages[flushes[0]]["transcript"] == "", messages
    assert messages[flushes[0]]["segments"] == [] and flushes[1] == len(messages) - 1
    assert len(finals(messages[: flushes[0]])) == 2, messages
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)


@pytest.mark.parametrize(
    ("first", "words"),
    [
        ("hello", "the first message must be the metadata, a JSON object; this one is not JSON"),
        (b"\x00\x00", "this one is audio"),
        ({"model": "x"}, "the metadata has no field 'model'"),
        ({"whisper_params": []}, "whisper_params must be an object"),
        ({"whisper_params": {"prompt": "x"}}, "whisper_params has no field 'prompt'"),
        ({"streaming_params": {"encoding": "opus"}}, "encoding must be one of pcm_s16le, pcm_mulaw"),
        ({"streaming_params": {"sample_rate": 12345}}, "sample_rate must be one of 8000"),
        ({"streaming_params": {"sample_rate": True}}, "sample_rate must be one of 8000"),
        ({"streaming_params": {"enable_partial_transcripts": "yes"}}, "must be true or false"),
        ({"streaming_params": {"partial_transcript_interval_s": 0}}, "must be a number from 0.05 to 60"),
        ({"streaming_vad_config": {"threshold": 2}}, "threshold must be a number from 0 to 1"),
        ({"streaming_vad_config": {"speech_pad_ms": 1.5}}, "speech_pad_ms must be a whole number"),
        ({"whisper_params": {"audio_language": "de"}}, "'de' is not one of the languages of this engine"),
        ({"whisper_params": {"audio_language": "German"}}, "'de' is not one of the languages of this engine"),
        ({"whisper_params": {"language_options": "en"}}, "language_options must be a list"),
        ({"whisper_params": {"language_options": ["en", "auto"]}}, "auto is not one"),
    ],
)
async def test_refused_metadata_is_an_error_then_1008(first: dict[str, Any] | str | bytes, words: str) -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), first, *pcm_frames(audio()[:32000]))
    [error] = messages
    assert error["type"] == "error" and error["code"] == "invalid_metadata" and words in error["message"], error
    assert code == 1008


async def test_a_qwen3_language_name_and_an_empty_metadata_are_taken() -> None:
    """`English` (the qwen3-asr model's way of naming it) is `en`; every section may be left out."""
    sent = pcm_frames(pcm16(fixture_16k("lights_on.wav"), 16000))
    named = {"whisper_params": {"audio_language": "English"}}
    async with running_daemon() as daemon:
        by_name, code = await stream(url(daemon), named, *sent, TERMINATE)
        empty, empty_code = await stream(url(daemon), {}, *sent, TERMINATE)
    assert code == empty_code == 1000
    assert same_words(EXPECTED["lights_on.wav"], finals(by_name)) and by_name[-1]["language_code"] == "en"
    assert same_words(EXPECTED["lights_on.wav"], finals(empty))


async def test_a_whole_sample_rate_written_as_a_float_is_taken_as_that_rate() -> None:
    """`8000.0` is the rate 8000 (as Baseten's schema coerces it): 8 kHz audio transcribed, not a
    handler that crashes on the first frame and closes with nothing sent."""
    sent = pcm_frames(pcm16(fixture_16k("lights_on.wav"), 8000))
    metadata = {"streaming_params": {"sample_rate": 8000.0, "enable_partial_transcripts": False}}
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), metadata, *sent, TERMINATE)
    assert code == 1000 and same_words(EXPECTED["lights_on.wav"], finals(messages)), (code, messages)


async def test_bad_messages_are_errors_and_the_stream_goes_on() -> None:
    """Each bad message is an error with a code and a sentence; the audio before and after it is
    transcribed all the same."""
    data = audio()
    frames = pcm_frames(data)
    half = len(frames) // 2
    bad: list[dict[str, Any] | str | bytes] = [
        "not json",
        {"type": "session.update"},
        {"no": "type"},
        {"type": "input_audio_buffer.append", "audio": "%%%"},
        {"type": "input_audio_buffer.append", "audio": "AAAA", "extra": 1},
        {"type": "input_audio_buffer.commit", "audio": "x"},
        {"terminate_session": False},
        b"\x00",
    ]
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), METADATA, *frames[:half], *bad, *frames[half:], TERMINATE)
    errors = of_type(messages, "error")
    expected = ["invalid_message"] * 3 + ["invalid_audio"] + ["invalid_message"] * 3 + ["invalid_audio"]
    assert [e["code"] for e in errors] == expected, errors
    assert all(e["message"] for e in errors)
    assert same_words(EXPECTED[FIXTURE], finals(messages)) and code == 1000


async def test_the_key_by_api_key_header_and_refusals() -> None:
    """`Authorization: Api-Key KEY` (the plugin's way) reaches the API; none or a wrong one: 401 at the
    upgrade, a plain GET: 426, each `{"type": "error", "code", "message"}`; a query parameter is refused."""
    async with running_daemon(api_key=KEY) as daemon:
        sent = pcm_frames(pcm16(fixture_16k("lights_on.wav"), 16000))
        keyed = {"Authorization": f"Api-Key {KEY}"}
        messages, code = await stream(url(daemon), METADATA, *sent, TERMINATE, headers=keyed)
        assert same_words(EXPECTED["lights_on.wav"], finals(messages)) and code == 1000
        async with aiohttp.ClientSession() as http:
            for headers, status, error in [
                ({}, 401, "missing_api_key"),
                ({"Authorization": "Api-Key wrong"}, 401, "invalid_api_key"),
                ({"Authorization": f"Api-Key {KEY}"}, 426, "websocket_required"),
            ]:
                async with http.get(url(daemon).replace("ws", "http", 1), headers=headers) as response:
                    body = await response.json()
                    assert response.status == status and body["code"] == error and body["message"], body
        refused, refused_code = await stream(url(daemon, "model=x"), headers={"Authorization": f"Api-Key {KEY}"})
    assert refused[0]["code"] == "invalid_query_parameter" and "model" in refused[0]["message"] and refused_code == 1008


async def test_idle_timeout_is_an_error_then_1001() -> None:
    """Nobody speaks for idle_timeout_s after the commands: their finals, then the error naming the
    setting, then 1001."""
    async with running_daemon(idle_timeout_s=2) as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(json.dumps(METADATA))
        for frame in pcm_frames(audio()):
            await ws.send(frame)
        messages = await read_all(ws)
    assert messages[-1]["type"] == "error" and messages[-1]["code"] == "idle_timeout", messages[-1]
    assert "idle_timeout_s" in messages[-1]["message"] and ws.close_code == 1001
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)


async def test_no_metadata_in_time_is_an_error() -> None:
    async with running_daemon(first_message_timeout_s=1) as daemon, websockets.connect(url(daemon)) as ws:
        messages = await read_all(ws)
    assert [(m["type"], m["code"]) for m in messages] == [("error", "timeout")] and messages[0]["message"], messages
    assert ws.close_code == 1008


async def test_over_max_sessions_is_an_error_and_the_open_session_goes_on() -> None:
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(url(daemon)) as first,
    ):
        await first.send(json.dumps(METADATA))
        await asyncio.sleep(0.2)
        refused, code = await stream(url(daemon), METADATA)
        for message in (*pcm_frames(audio()), json.dumps(TERMINATE)):
            await first.send(message)
        messages = await read_all(first)
    assert [(m["type"], m["code"]) for m in refused] == [("error", "server_busy")] and code == 1013, refused
    assert same_words(EXPECTED[FIXTURE], finals(messages))


async def test_an_oversized_message_closes_with_1009() -> None:
    async with running_daemon() as daemon, websockets.connect(url(daemon), max_size=None) as ws:
        await ws.send(json.dumps(METADATA))
        await ws.send(b"\x00" * (PCM_FRAME_BYTES * 400))
        await read_all(ws)
    assert ws.close_code == 1009


async def test_shutdown_sends_the_finals_then_the_error_then_1001() -> None:
    """The daemon stopping mid-stream: the final of the command heard so far, then `shutdown`, then 1001."""
    data = pcm16(fixture_16k("lights_on.wav"), 16000)
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        for message in (json.dumps(METADATA), *pcm_frames(data)):
            await ws.send(message)
        heard = len(data) / 32000 - 0.1
        await eventually(lambda: any(s.seconds_received >= heard for s in daemon.core.sessions.open_sessions()))
        stopping = asyncio.create_task(daemon.stop())
        messages = await read_all(ws)
        await stopping
    assert same_words(EXPECTED["lights_on.wav"], finals(messages)), messages
    assert [(m["type"], m["code"]) for m in messages[-1:]] == [("error", "shutdown")] and ws.close_code == 1001


async def test_shutdown_closes_a_connection_awaiting_its_metadata_with_1001() -> None:
    """Before the metadata: the `shutdown` error, then 1001 (the server going away), not the 1008 of a
    refused metadata."""
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        await eventually(lambda: len(daemon.baseten.serving) == 1)
        stopping = asyncio.create_task(daemon.stop())
        messages = await read_all(ws)
        await stopping
    assert [(m["type"], m["code"]) for m in messages] == [("error", "shutdown")], messages
    assert ws.close_code == 1001
