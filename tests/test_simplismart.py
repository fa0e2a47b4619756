"""Simplismart's speech-to-text APIs end to end: the stream at `/ws/audio` and `POST /predict`, real
daemon, real Silero, real tiny.en, a raw client for every message and for input no client would send."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import websockets

from satellite_asr.protocols import simplismart
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble
from tests.helpers import (
    EXPECTED,
    FIXTURES,
    curl_peak_memory,
    eventually,
    fixture_16k,
    pcm16,
    pcm_frames,
    running_daemon,
    same_words,
    write_wav,
)

pytestmark = pytest.mark.timeout(180)

FIXTURE = "three_commands.wav"
KEY = "simplismart-key"
CONFIG = {"language": "en"}
Received = list[str | dict[str, Any]]
"""What the stream sent: a final's text (a binary frame), or an error (a text frame, JSON)."""


def url(daemon: Daemon, query: str = "") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{simplismart.STREAM_PATH}{'?' + query if query else ''}"


def audio(name: str = FIXTURE) -> bytes:
    return pcm16(fixture_16k(name), 16000)


async def stream(
    target: str,
    *sent: dict[str, Any] | str | bytes,
    headers: dict[str, str] | None = None,
    idle: float = 0,
    paced: bool = True,
) -> tuple[Received, int | None]:
    """The `sent` messages (by default the configuration and the fixture), `paced` as a microphone,
    then, `idle` seconds on or until the server closes, every message read and the Close's code."""
    received: Received = []
    async with websockets.connect(target, additional_headers=headers) as ws:

        async def read() -> None:
            with suppress(websockets.ConnectionClosed):
                async for message in ws:
                    received.append(message.decode() if isinstance(message, bytes) else json.loads(message))

        reader = asyncio.create_task(read())
        for message in sent or (CONFIG, *pcm_frames(audio())):
            with suppress(websockets.ConnectionClosed):
                await ws.send(json.dumps(message) if isinstance(message, dict) else message)
            if paced and isinstance(message, bytes):
                await asyncio.sleep(0.1)
        with suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), idle or 3)
        await ws.close()
        await reader
    return received, ws.close_code


def texts(received: Received) -> list[str]:
    return [message for message in received if isinstance(message, str)]


def errors(received: Received) -> list[dict[str, Any]]:
    return [message for message in received if isinstance(message, dict)]


async def test_three_commands_each_a_binary_frame_of_text() -> None:
    """The configuration, then PCM: each command's final as one binary frame holding its text, no
    partials, no other message."""
    async with running_daemon() as daemon:
        received, _ = await stream(url(daemon))
    assert errors(received) == [] and same_words(EXPECTED[FIXTURE], texts(received)), received


@pytest.mark.parametrize(
    ("first", "words"),
    [
        ("hello", "the first message must be the configuration"),
        (b"\x00\x00", "this one is audio"),
        ({"language": "en", "model": "x"}, "the configuration has no field 'model'"),
        ({"language": "de"}, "'de' is not one of the languages of this engine"),
        ({"language": 5}, "language must be a language code"),
    ],
)
async def test_a_refused_configuration_is_an_error_then_1008(first: dict[str, Any] | str | bytes, words: str) -> None:
    async with running_daemon() as daemon:
        received, code = await stream(url(daemon), first, *pcm_frames(audio()[:32000]))
    [error] = received
    assert isinstance(error, dict) and error["code"] == "invalid_config" and words in error["message"], error
    assert code == 1008


async def test_an_empty_configuration_takes_the_default_language() -> None:
    async with running_daemon() as daemon:
        received, _ = await stream(url(daemon), {}, *pcm_frames(audio("lights_on.wav")))
    assert same_words(EXPECTED["lights_on.wav"], texts(received)), received


async def test_bad_messages_are_errors_and_the_stream_goes_on() -> None:
    frames = pcm_frames(audio())
    half = len(frames) // 2
    async with running_daemon() as daemon:
        received, _ = await stream(url(daemon), CONFIG, *frames[:half], '{"language": "en"}', b"\x00", *frames[half:])
    assert [e["code"] for e in errors(received)] == ["invalid_message", "invalid_audio"], received
    assert all(e["type"] == "error" and e["message"] for e in errors(received))
    assert same_words(EXPECTED[FIXTURE], texts(received)), received


async def test_the_key_by_bearer_and_refusals() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        received, _ = await stream(url(daemon), headers={"Authorization": f"Bearer {KEY}"})
        async with aiohttp.ClientSession() as http:
            for headers, status, code in [
                ({}, 401, "missing_api_key"),
                ({"Authorization": "Bearer wrong"}, 401, "invalid_api_key"),
                ({"Authorization": f"Bearer {KEY}"}, 426, "websocket_required"),
            ]:
                async with http.get(url(daemon).replace("ws", "http", 1), headers=headers) as response:
                    body = await response.json()
                    assert response.status == status and body["code"] == code and body["message"], body
        refused, refused_code = await stream(url(daemon, "x=1"), headers={"Authorization": f"Bearer {KEY}"})
    assert same_words(EXPECTED[FIXTURE], texts(received))
    assert errors(refused)[0]["code"] == "invalid_query_parameter" and refused_code == 1008, refused


async def test_idle_timeout_is_an_error_then_1001() -> None:
    """Nobody speaks for idle_timeout_s after the commands (sent at once: the pauses between them are
    not waited): their finals, then the error naming the setting, then 1001."""
    async with running_daemon(idle_timeout_s=2) as daemon:
        received, code = await stream(url(daemon), CONFIG, *pcm_frames(audio()), idle=30, paced=False)
    assert same_words(EXPECTED[FIXTURE], texts(received)), received
    [error] = errors(received)
    assert error["code"] == "idle_timeout" and "idle_timeout_s" in error["message"] and code == 1001


async def test_over_max_sessions_is_an_error_and_the_open_session_goes_on() -> None:
    async with running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon:
        first = asyncio.create_task(stream(url(daemon)))
        await asyncio.sleep(1)
        refused, code = await stream(url(daemon), CONFIG, *pcm_frames(audio()[:3200]))
        received, _ = await first
    assert [e["code"] for e in errors(refused)] == ["server_busy"] and code == 1013, refused
    assert same_words(EXPECTED[FIXTURE], texts(received))


async def shut_down_while_connected(daemon: Daemon, ws: websockets.ClientConnection) -> Received:
    """The daemon stopped while `ws` is connected; every message it got, in order."""
    stopping = asyncio.create_task(daemon.stop())
    received: Received = []
    with suppress(websockets.ConnectionClosed):
        async for message in ws:
            received.append(message.decode() if isinstance(message, bytes) else json.loads(message))
    await stopping
    return received


async def test_shutdown_sends_the_finals_then_the_error_then_1001() -> None:
    data = audio("lights_on.wav")
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        for message in (json.dumps(CONFIG), *pcm_frames(data)):
            await ws.send(message)
        heard = len(data) / 32000 - 0.1
        await eventually(lambda: any(s.seconds_received >= heard for s in daemon.core.sessions.open_sessions()))
        received = await shut_down_while_connected(daemon, ws)
    assert same_words(EXPECTED["lights_on.wav"], texts(received)), received
    assert [e["code"] for e in errors(received)] == ["shutdown"] and ws.close_code == 1001, received


async def test_shutdown_closes_a_connection_awaiting_its_configuration_with_1001() -> None:
    """Before the configuration: the `shutdown` error, then 1001 (the server going away), not the 1008
    of a refused configuration."""
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        await eventually(lambda: len(daemon.simplismart.serving) == 1)
        received = await shut_down_while_connected(daemon, ws)
    assert [e["code"] for e in errors(received)] == ["shutdown"] and ws.close_code == 1001, received


async def predict(daemon: Daemon, body: Any, key: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    async with aiohttp.ClientSession() as http:
        address = f"http://127.0.0.1:{daemon.http_port}{simplismart.PATH}"
        async with http.post(address, data=io.BytesIO(json.dumps(body).encode()), headers=headers) as response:
            return response.status, await response.json()


def wav(name: str = FIXTURE) -> str:
    return base64.b64encode((FIXTURES / name).read_bytes()).decode()


PLUGIN_OPTIONS: dict[str, Any] = {
    "language": "en",
    "task": "transcribe",
    "without_timestamps": True,
    "vad_model": "frame",
    "vad_filter": True,
    "vad_onset": 0.5,
    "vad_offset": None,
    "min_speech_duration_ms": 0,
    "max_speech_duration_s": 30,
    "min_silence_duration_ms": 2000,
    "speech_pad_ms": 400,
    "initial_prompt": None,
    "hotwords": None,
    "num_speakers": 0,
    "compression_ratio_threshold": 2.4,
    "beam_size": 4,
    "temperature": 0.0,
    "multilingual": False,
    "max_tokens": 400,
    "log_prob_threshold": -1.0,
    "length_penalty": 1,
    "repetition_penalty": 1.01,
    "strict_hallucination_reduction": False,
    "model": "openai/whisper-large-v3-turbo",
}
"""Every field the plugin's `recognize` sends beside `audio_data`, at its defaults."""


async def test_predict_transcribes_with_the_plugins_fields() -> None:
    """The plugin's body: a text per command (joined as they are, they read as one transcript), no
    timestamps unless asked, the language and the request's id; with `without_timestamps` false, a
    span per command; `initial_prompt` and `hotwords` reach the engine."""
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine) as daemon:
        status, body = await predict(daemon, {**PLUGIN_OPTIONS, "audio_data": wav()})
        timed = {**PLUGIN_OPTIONS, "audio_data": wav(), "without_timestamps": False, "hotwords": "Jarvis, Alexa"}
        timed_status, timed_body = await predict(daemon, timed)
        names = list(engine.names)
    assert status == 200 and same_words(EXPECTED[FIXTURE], [t.strip() for t in body["transcription"]]), body
    assert same_words([" ".join(EXPECTED[FIXTURE])], ["".join(body["transcription"])])
    assert body["timestamps"] == [] and body["info"]["language"] == "en" and body["request_id"], body
    assert timed_status == 200 and len(timed_body["timestamps"]) == 3, timed_body
    assert all(0 <= start <= end for start, end in timed_body["timestamps"]), timed_body
    assert any(n[:2] == ("Jarvis", "Alexa") for n in names), names


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"task": "translate"}, "task: this server transcribes and does not translate"),
        ({"num_speakers": 2}, "num_speakers: this server does not do speaker labels"),
        ({"language": "xx"}, "language: 'xx' is not one of the languages"),
        ({"vad_model": "webrtc"}, "vad_model must be one of silero, frame"),
        ({"beam_size": 0}, "beam_size must be a whole number from 1 to 64"),
        ({"temperature": "hot"}, "temperature must be a number from 0 to 2"),
        ({"vad_filter": "yes"}, "vad_filter must be true or false"),
        ({"initial_prompt": 5}, "initial_prompt must be a text"),
        ({"initial_prompt": False}, "initial_prompt must be a text"),  # falsy: was taken as no prompt
        ({"hotwords": 0}, "hotwords must be a text"),
        ({"hotwords": ["Jarvis"]}, "hotwords must be a text"),
        ({"prompt": "hi"}, "unknown field 'prompt'"),
        ({"audio_data": "%%%"}, "audio_data is not valid base64"),
        ({"audio_data": None}, "audio_data must be the audio file, base64"),
        ({"audio_data": base64.b64encode(b"not audio at all").decode()}, "the file is not audio"),
    ],
)
async def test_predict_refusals(change: dict[str, Any], words: str) -> None:
    async with running_daemon() as daemon:
        status, body = await predict(daemon, {**PLUGIN_OPTIONS, "audio_data": wav("lights_on.wav"), **change})
    assert status == 400 and body["type"] == "error" and body["code"] and words in body["message"], body


async def test_predict_refuses_a_body_that_is_not_a_json_object_and_takes_the_key_by_bearer() -> None:
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        address = f"http://127.0.0.1:{daemon.http_port}{simplismart.PATH}"
        headers = {"Authorization": f"Bearer {KEY}"}
        async with http.post(address, data=b"[1]", headers={**headers, "Content-Type": "application/json"}) as r:
            not_object = r.status, await r.json()
        async with http.post(address, data=b"{", headers={**headers, "Content-Type": "application/json"}) as r:
            not_json = r.status, await r.json()
        async with http.post(address, data=b"x", headers={**headers, "Content-Type": "text/plain"}) as r:
            not_typed = r.status, await r.json()
        wrong = await predict(daemon, {"audio_data": wav("lights_on.wav")}, key="wrong")
        status, body = await predict(daemon, {"audio_data": wav("lights_on.wav")}, key=KEY)
    assert not_object[0] == 400 and "JSON object" in not_object[1]["message"], not_object
    assert not_json[0] == 400 and "not JSON" in not_json[1]["message"], not_json
    assert not_typed[0] == 400 and "JSON body" in not_typed[1]["message"], not_typed
    assert wrong[0] == 401 and wrong[1]["code"] == "invalid_api_key", wrong
    assert status == 200 and same_words(EXPECTED["lights_on.wav"], ["".join(body["transcription"])]), body


async def test_predict_over_the_upload_limit_is_413() -> None:
    async with running_daemon(max_upload_mb=1) as daemon:
        status, body = await predict(daemon, {"audio_data": base64.b64encode(b"\x00" * (1 << 21)).decode()})
    assert status == 413 and body["code"] == "file_too_large", body


async def test_a_predict_body_is_not_held_in_several_copies(tmp_path: Path) -> None:
    """A JSON body carries its file base64 (4/3 of it): read, parsed and decoded without keeping the
    body's bytes, its text and the parsed base64 all at once (they made a 12 MB file peak at over 4
    times its size in the daemon, and stay held while it was transcribed). Measured with tracemalloc
    over the request, from curl (another process); the audio is longer than `max_upload_audio_s`, so
    the request ends once the file is read and opened."""
    size = 12 << 20
    wav_file = write_wav(tmp_path / "long.wav", np.zeros(size // 2, dtype=np.int16), 16000)
    body = tmp_path / "body.json"
    body.write_text(json.dumps({**PLUGIN_OPTIONS, "audio_data": base64.b64encode(wav_file.read_bytes()).decode()}))
    out = tmp_path / "answer.json"
    async with running_daemon(max_upload_audio_s=10) as daemon:
        address = f"http://127.0.0.1:{daemon.http_port}{simplismart.PATH}"
        json_type = "Content-Type: application/json"
        peak = await curl_peak_memory("-H", json_type, "--data-binary", f"@{body}", "-o", str(out), address)
    answer = json.loads(out.read_bytes())
    assert answer["code"] == "audio_too_long", answer
    assert peak < 3 * size, f"{peak / size:.2f} times the file"
