"""Zoom's Scribe Live speech-to-text API (`/v2/aiservices/scribe/live`) end to end: real daemon, real
Silero, real tiny.en, a raw WebSocket client for every message and for input no client would send."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
import websockets

from satellite_asr.protocols import zoom
from satellite_asr.server import Daemon
from tests.doubles import FailsOnAWordEngineDouble, FirstFinalGatedEngineDouble
from tests.helpers import (
    EXPECTED,
    PCM_FRAME_BYTES,
    fixture_16k,
    is_binary,
    normalise,
    of_type,
    pcm16,
    pcm_frames,
    read_all,
    running_daemon,
    same_words,
    send_all,
)
from tests.test_mistral import Messages

pytestmark = pytest.mark.timeout(180)

FIXTURE = "three_commands.wav"
UPDATE = {"type": "session.update", "language": "en-US", "audio": {"format": "pcm16"}}
CLOSE = {"type": "session.close"}
KEY = "zoom-key"


def url(daemon: Daemon, query: str = "") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{zoom.PATH}{'?' + query if query else ''}"


def audio() -> bytes:
    return pcm16(fixture_16k(FIXTURE), 16000)


async def stream(
    target: str, *sent: dict[str, Any] | str | bytes, headers: dict[str, str] | None = None, paced: bool = False
) -> tuple[Messages, int | None]:
    """The `sent` messages (by default the update, the fixture, `session.close`); every message
    until the Close, and its code."""
    return await send_all(target, sent or (UPDATE, *pcm_frames(audio()), CLOSE), headers, paced, is_binary)


def kinds(messages: Messages) -> list[str]:
    return [message["type"] for message in messages]


def transcripts(messages: Messages) -> list[str]:
    return [m["transcript"] for m in of_type(messages, "transcription.completed") if m["transcript"]]


async def test_three_commands_every_message() -> None:
    """`session.updated` answers the update; per command `speech_started` then its
    `transcription.completed` (the locale asked, its span); `session.closed`, then a normal Close."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), UPDATE, *pcm_frames(audio()), CLOSE, paced=True)
    assert code == 1000
    updated = messages[0]
    assert updated == {"type": "session.updated", "session_id": updated["session_id"], "diarization_enabled": False}
    pair = ["input_audio_buffer.speech_started", "transcription.completed"]
    assert kinds(messages) == ["session.updated", *pair * 3, "session.closed"], kinds(messages)
    assert messages[-1] == {"type": "session.closed", "reason": "client_requested"}
    assert same_words(EXPECTED[FIXTURE], transcripts(messages)), transcripts(messages)
    completed = of_type(messages, "transcription.completed")
    assert all(m["language"] == "en-US" and 0 <= m["start_ms"] < m["end_ms"] for m in completed), completed


async def test_session_close_midway_sends_the_command_in_progress_first() -> None:
    data = audio()
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), UPDATE, *pcm_frames(data[: 16 * PCM_FRAME_BYTES]), CLOSE)
    assert code == 1000 and kinds(messages)[-2:] == ["transcription.completed", "session.closed"], messages
    assert normalise(transcripts(messages)[0]).startswith("turn"), messages


async def test_the_settings_the_client_sends_are_taken() -> None:
    """What Pipecat's service may send: model, vocabulary, silence, detection, polishing off,
    diarization off; with detection the transcript's language is the engine's."""
    update = {
        **UPDATE,
        "config": {
            "model": "zoom-scribe-multilingual",
            "language_detection": {"mode": "auto"},
            "diarization": False,
            "vocabulary": {"phrases": ["garage door"]},
        },
        "turn_detection": {"silence_duration_ms": 350},
        "outputs": {"text_polishing": {"enabled": False, "include_transcript": True}},
    }
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), update, *pcm_frames(audio()), CLOSE)
    assert code == 1000 and same_words(EXPECTED[FIXTURE], transcripts(messages)), messages
    assert all(m["language"] == "en" for m in of_type(messages, "transcription.completed")), messages


@pytest.mark.parametrize(
    ("update", "words"),
    [
        ("not json", "session.update, a JSON object"),
        (b"\x00\x01", "this one is audio"),
        ({"type": "session.close"}, "must be session.update"),
        ({**UPDATE, "voice": 1}, "no field 'voice'"),
        ({**UPDATE, "audio": {"format": "g711"}}, "audio.format must be pcm16"),
        ({**UPDATE, "audio": {"sample_rate": 8000}}, "audio has no field 'sample_rate'"),
        ({**UPDATE, "language": "ja-JP"}, "'ja-JP' is not one of the languages"),
        ({**UPDATE, "config": {"diarization": True}}, "speaker labels"),
        ({**UPDATE, "config": {"profanity_filter": True}}, "profanity"),
        ({**UPDATE, "outputs": {"text_polishing": {"enabled": True}}}, "text polishing"),
        ({**UPDATE, "config": {"model": ""}}, "config.model"),
        ({**UPDATE, "config": {"language_detection": {"mode": 1}}}, "language_detection.mode"),
        ({**UPDATE, "config": {"vocabulary": {"phrases": "x"}}}, "list of texts"),
        ({**UPDATE, "config": {"vocabulary": {"phrases": ["w"] * 101}}}, "over the limit of 100"),
        ({**UPDATE, "turn_detection": {"silence_duration_ms": -1}}, "silence_duration_ms"),
        ({**UPDATE, "turn_detection": {"silence_duration_ms": 300.5}}, "silence_duration_ms"),
        ({**UPDATE, "config": []}, "config must be an object"),
        ({**UPDATE, "config": {"diarization": "yes"}}, "config.diarization must be true or false"),
    ],
)
async def test_a_refused_session_update_is_a_fatal_error_then_1008(update: Any, words: str) -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), update)
    assert kinds(messages) == ["error"] and words in messages[0]["error"]["message"], messages
    assert messages[0]["error"]["code"] == "invalid_session_update" and messages[0]["error"]["fatal"] is True
    assert code == 1008


async def test_a_query_parameter_is_refused_in_band() -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, "model=x"), UPDATE)
    assert kinds(messages) == ["error"] and "model" in messages[0]["error"]["message"] and code == 1008
    assert messages[0]["error"]["fatal"] is True


@pytest.mark.parametrize(
    ("message", "words"),
    [
        ("not json", "not JSON"),
        (UPDATE, "unknown type 'session.update'"),
        ({"type": "session.close", "x": 1}, "no field 'x'"),
        (b"\x00", "whole"),
    ],
)
async def test_a_refused_message_loses_nothing_else(message: Any, words: str) -> None:
    """A bad message midway: Scribe's error, not fatal, with the sentence; every command is still heard."""
    data = audio()
    middle = 12 * PCM_FRAME_BYTES
    async with running_daemon() as daemon:
        messages, code = await stream(
            url(daemon), UPDATE, *pcm_frames(data[:middle]), message, *pcm_frames(data[middle:]), CLOSE
        )
    errors = of_type(messages, "error")
    assert len(errors) == 1 and words in errors[0]["error"]["message"] and errors[0]["error"]["fatal"] is False, errors
    assert same_words(EXPECTED[FIXTURE], transcripts(messages)) and code == 1000


async def test_an_engine_failure_is_an_error_and_the_stream_goes_on() -> None:
    async with running_daemon(FailsOnAWordEngineDouble("bedroom")) as daemon:
        messages, code = await stream(url(daemon))
    assert [e["error"]["code"] for e in of_type(messages, "error")] == ["engine_error"], messages
    said = normalise(" ".join(transcripts(messages)))
    assert "what time is it" in said and "garage door" in said and code == 1000


async def test_the_key_by_bearer_and_refusals_in_zooms_shape() -> None:
    """`Authorization: Bearer` (the client's way) with the `live-asr` subprotocol answered; none or a
    wrong one: 401 at the upgrade with a JSON `message` (which Pipecat reports); a plain GET: 426."""
    bearer = {"Authorization": f"Bearer {KEY}"}
    async with running_daemon(api_key=KEY) as daemon:
        async with websockets.connect(url(daemon), additional_headers=bearer, subprotocols=["live-asr"]) as ws:
            assert ws.subprotocol == "live-asr"
            await ws.send(json.dumps(UPDATE))
            await ws.send(json.dumps(CLOSE))
            assert kinds(await read_all(ws)) == ["session.updated", "session.closed"]
        async with aiohttp.ClientSession() as http:
            refusals = [
                ({}, 401, "missing_api_key"),
                ({"Authorization": "Bearer wrong"}, 401, "invalid_api_key"),
                (bearer, 426, "websocket_required"),
            ]
            for headers, status, code in refusals:
                async with http.get(url(daemon).replace("ws", "http", 1), headers=headers) as response:
                    body = await response.json()
                    assert response.status == status and body["message"], body
                    assert (body["code"], body["error_code"]) == (status, code), body


async def test_no_session_update_within_the_first_message_timeout_is_a_fatal_error() -> None:
    async with running_daemon(first_message_timeout_s=1) as daemon, websockets.connect(url(daemon)) as ws:
        messages = await read_all(ws)
    assert [(m["type"], m["error"]["code"], m["error"]["fatal"]) for m in messages] == [("error", "timeout", True)]
    assert ws.close_code == 1008


async def test_idle_timeout_sends_the_transcripts_then_a_fatal_error_and_session_closed() -> None:
    async with running_daemon(idle_timeout_s=2) as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(json.dumps(UPDATE))
        for frame in pcm_frames(audio()):
            await ws.send(frame)
        messages = await read_all(ws)
    assert kinds(messages)[-2:] == ["error", "session.closed"] and ws.close_code == 1001, kinds(messages)
    error = messages[-2]["error"]
    assert error["code"] == "idle_timeout" and error["fatal"] is True and "idle_timeout_s" in error["message"]
    assert messages[-1]["reason"] == "idle_timeout"
    assert same_words(EXPECTED[FIXTURE], transcripts(messages))


async def test_shutdown_sends_the_transcript_of_what_came_then_a_fatal_error() -> None:
    data = audio()
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(json.dumps(UPDATE))
        for frame in pcm_frames(data[: len(data) // 4]):
            await ws.send(frame)
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(daemon.stop())
        messages = await read_all(ws)
        await stopping
    assert kinds(messages)[-3:] == ["transcription.completed", "error", "session.closed"], kinds(messages)
    assert messages[-2]["error"]["code"] == "shutdown" and ws.close_code == 1001


async def test_shutdown_closes_a_connection_awaiting_its_session_update() -> None:
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        await asyncio.sleep(0.3)
        stopping = asyncio.create_task(daemon.stop())
        messages = await read_all(ws)
        await stopping
    assert kinds(messages) == ["error", "session.closed"] and messages[0]["error"]["code"] == "shutdown"
    assert ws.close_code == 1001


async def test_over_max_sessions_is_a_server_busy_error_1013_and_the_open_session_goes_on() -> None:
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(url(daemon)) as first,
    ):
        await first.send(json.dumps(UPDATE))
        assert json.loads(await first.recv())["type"] == "session.updated"
        refused, code = await stream(url(daemon), UPDATE)
        for frame in pcm_frames(audio()):
            await first.send(frame)
        await first.send(json.dumps(CLOSE))
        messages = await read_all(first)
    assert [(m["type"], m["error"]["code"], m["error"]["fatal"]) for m in refused] == [("error", "server_busy", False)]
    assert code == 1013
    assert same_words(EXPECTED[FIXTURE], transcripts(messages)) and messages[-1]["type"] == "session.closed"


async def test_a_message_over_1_mib_closes_1009_as_the_docs_say() -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), UPDATE, bytes(1 << 20) + b"\x00\x00")
    assert kinds(messages) in ([], ["session.updated"]) and code == 1009, (messages, code)


async def test_two_decodes_at_once_keep_each_speech_started_after_the_final_before_it() -> None:
    """The first command's final still decoding (gated) while the next is spoken: the next one's
    `speech_started` waits for that `transcription.completed`, so that a client ending its turn on
    each transcript (Pipecat's) never ends one the user is still speaking in."""
    engine = FirstFinalGatedEngineDouble()
    async with running_daemon(engine) as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(json.dumps(UPDATE))
        for frame in pcm_frames(audio()):
            await ws.send(frame)
            await asyncio.sleep(0.1)
        engine.gate.set()
        await ws.send(json.dumps(CLOSE))
        messages = await read_all(ws)
    pair = ["input_audio_buffer.speech_started", "transcription.completed"]
    assert kinds(messages) == ["session.updated", *pair * 3, "session.closed"], kinds(messages)
    assert same_words(EXPECTED[FIXTURE], transcripts(messages)), transcripts(messages)


async def test_session_close_while_a_final_is_still_decoding_sends_every_final_first() -> None:
    """`session.close` while the first command's final is held (gated) and the last is in progress:
    every command's `speech_started` and `transcription.completed`, in order, then `session.closed`."""
    engine = FirstFinalGatedEngineDouble()
    async with running_daemon(engine) as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(json.dumps(UPDATE))
        for frame in pcm_frames(audio()):
            await ws.send(frame)
            await asyncio.sleep(0.1)
        await ws.send(json.dumps(CLOSE))
        await asyncio.sleep(0.5)
        engine.gate.set()
        messages = await read_all(ws)
    pair = ["input_audio_buffer.speech_started", "transcription.completed"]
    assert kinds(messages) == ["session.updated", *pair * 3, "session.closed"], kinds(messages)
    assert same_words(EXPECTED[FIXTURE], transcripts(messages)) and ws.close_code == 1000, transcripts(messages)
