"""Together AI's dialect of `/v1/realtime` with a raw WebSocket client: its query parameters set the
session as a `session.update` would, values the daemon cannot take are refused before the upgrade
in the Realtime API's error shape naming the parameter, and its deltas carry the item's whole text
so far (docs/together.md). The real daemon, real Silero, real tiny.en, audio paced like a microphone."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from typing import Any

import aiohttp
import pytest
import websockets

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.server import Daemon
from tests.helpers import EXPECTED, fixture_16k, of_type, pcm16, running_daemon, same_words

pytestmark = pytest.mark.timeout(180)

KEY = "together-test-key"
HEADERS = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "realtime=v1"}
TOGETHER = "intent=transcription&model=openai/whisper-large-v3&input_audio_format=pcm_s16le_16000"
"""What Together's clients send, but `turn_detection` (Pipecat's adds `turn_detection=none`)."""
DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"
CHUNK_S = 0.1

Events = list[dict[str, Any]]


def url(daemon: Daemon, query: str) -> str:
    return f"ws://127.0.0.1:{daemon.http_port}/v1/realtime?{query}"


async def speak(ws: websockets.ClientConnection, fixture: str, silence_s: float = 0.0) -> None:
    """The fixture as 16 kHz appends of `CHUNK_S` each, at microphone pace, then `silence_s` of silence."""
    audio = pcm16(fixture_16k(fixture), SAMPLE_RATE) + bytes(int(silence_s * SAMPLE_RATE) * 2)
    step = int(CHUNK_S * SAMPLE_RATE) * 2
    for offset in range(0, len(audio), step):
        chunk = base64.b64encode(audio[offset : offset + step]).decode()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        await asyncio.sleep(CHUNK_S)


async def events_until(ws: websockets.ClientConnection, kind: str, n: int) -> Events:
    events: Events = []
    while len(of_type(events, kind)) < n:
        events.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
    return events


def assert_whole_text_deltas(events: Events) -> None:
    """Each delta holds its item's whole text so far, as `delta` and as `transcript`, each longer
    than the one before it (not pieces to add up); a final that does not continue them (its case or
    punctuation redone) is said by `completed` alone."""
    assert of_type(events, DELTA), "some command had a delta"
    for done in of_type(events, COMPLETED):
        deltas = [event for event in of_type(events, DELTA) if event["item_id"] == done["item_id"]]
        assert all(event["delta"] == event["transcript"] for event in deltas), deltas
        texts = [event["delta"] for event in deltas]
        pairs = list(itertools.pairwise(texts))
        assert all(later.startswith(earlier) and later != earlier for earlier, later in pairs), texts


async def test_turn_detection_none_and_pcm_s16le_16000_as_pipecat_connects() -> None:
    """`session.created` first (Together's name, under `OpenAI-Beta`), saying 16 kHz PCM and turn
    detection off; nothing ends an item but the commit, and its deltas are whole text."""
    async with (
        running_daemon(api_key=KEY) as daemon,
        websockets.connect(url(daemon, TOGETHER + "&turn_detection=none"), additional_headers=HEADERS) as ws,
    ):
        created = json.loads(await ws.recv())
        await speak(ws, "lights_on.wav", silence_s=1.5)
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))  # nothing since the last: refused
        events = await events_until(ws, "error", 1)
    # Had silence ended the item, the first commit would have made a second (empty) one before the error.
    assert len(of_type(events, "input_audio_buffer.committed")) == 1, events
    assert len(of_type(events, COMPLETED)) == 1, events
    assert of_type(events, "error")[0]["error"]["code"] == "input_audio_buffer_commit_empty", events
    assert created["type"] == "session.created", created
    assert created["session"]["input_audio_format"] == {"type": "audio/pcm", "rate": 16000}, created
    assert created["session"]["turn_detection"] is None, created
    assert of_type(events, "input_audio_buffer.speech_stopped") == []
    assert same_words(EXPECTED["lights_on.wav"], [event["transcript"] for event in of_type(events, COMPLETED)])
    assert_whole_text_deltas(events)


async def test_server_vad_and_its_query_parameters_end_each_command_without_a_commit() -> None:
    """`turn_detection=server_vad` with Together's VAD parameters: threshold, the silence and the
    padding are applied (the session says so in OpenAI's terms); min_speech_duration_ms and
    max_speech_duration_s are checked, not applied. The daemon's VAD ends each command."""
    query = (
        f"{TOGETHER}&turn_detection=server_vad&threshold=0.4&min_silence_duration_ms=600&speech_pad_ms=200"
        "&min_speech_duration_ms=250&max_speech_duration_s=5.0"
    )
    async with (
        running_daemon(api_key=KEY) as daemon,
        websockets.connect(url(daemon, query), additional_headers=HEADERS) as ws,
    ):
        created = json.loads(await ws.recv())
        await speak(ws, "three_commands.wav", silence_s=1.5)
        events = await events_until(ws, COMPLETED, 3)
    turn = created["session"]["turn_detection"]
    assert turn == {"type": "server_vad", "threshold": 0.4, "prefix_padding_ms": 200, "silence_duration_ms": 600}
    assert len(of_type(events, "input_audio_buffer.speech_stopped")) == 3
    assert same_words(EXPECTED["three_commands.wav"], [event["transcript"] for event in of_type(events, COMPLETED)])
    assert_whole_text_deltas(events)


async def test_vad_parameters_alone_turn_server_vad_on() -> None:
    """Together's VAD is on unless turned off: its parameters without `turn_detection` mean server_vad,
    whatever the daemon's own default is."""
    async with (
        running_daemon(api_key=KEY, turn_detection="manual") as daemon,
        websockets.connect(url(daemon, TOGETHER + "&min_silence_duration_ms=700"), additional_headers=HEADERS) as ws,
    ):
        created = json.loads(await ws.recv())
    assert created["session"]["turn_detection"]["silence_duration_ms"] == 700, created


@pytest.mark.parametrize("parameter", ["min_speech_duration_ms=250", "max_speech_duration_s=5.0"])
async def test_a_checked_vad_parameter_alone_turns_server_vad_on_too(parameter: str) -> None:
    """Together's two VAD parameters the daemon checks without applying are VAD parameters as much
    as the applied ones (docs/together.md: `server_vad` when a VAD parameter is given): a client
    tuning Together's VAD gets a VAD that ends its commands, whatever the daemon's default is."""
    async with (
        running_daemon(api_key=KEY, turn_detection="manual") as daemon,
        websockets.connect(url(daemon, f"{TOGETHER}&{parameter}"), additional_headers=HEADERS) as ws,
    ):
        created = json.loads(await ws.recv())
    assert created["session"]["turn_detection"] is not None, created
    assert created["session"]["turn_detection"]["type"] == "server_vad", created


async def test_without_input_audio_format_the_dialect_takes_togethers_16_khz() -> None:
    """Together's one format, `pcm_s16le_16000`, is its default too: a Together client that leaves
    `input_audio_format` out (here with only `turn_detection=none`) is heard at 16 kHz, not at
    OpenAI's 24 kHz, which would slow its words to a drawl."""
    query = "intent=transcription&model=openai/whisper-large-v3&turn_detection=none"
    async with (
        running_daemon(api_key=KEY) as daemon,
        websockets.connect(url(daemon, query), additional_headers=HEADERS) as ws,
    ):
        created = json.loads(await ws.recv())
        await speak(ws, "lights_on.wav", silence_s=0.5)
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events = await events_until(ws, COMPLETED, 1)
    assert created["session"]["input_audio_format"] == {"type": "audio/pcm", "rate": 16000}, created
    assert same_words(EXPECTED["lights_on.wav"], [event["transcript"] for event in of_type(events, COMPLETED)])


async def test_an_openai_client_without_together_parameters_still_gets_increments() -> None:
    """The dialect is the query's: the same beta connection without Together's parameters keeps
    OpenAI's shapes (`transcription_session.created`, deltas that add up, no `transcript`)."""
    async with (
        running_daemon(api_key=KEY) as daemon,
        websockets.connect(url(daemon, "intent=transcription"), additional_headers=HEADERS) as ws,
    ):
        created = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "transcription_session.update", "session": {"turn_detection": None}}))
        await speak(ws, "lights_on.wav")
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events = await events_until(ws, COMPLETED, 1)
    assert created["type"] == "transcription_session.created"
    deltas = of_type(events, DELTA)
    assert deltas and all("transcript" not in event for event in deltas), deltas
    assert "".join(event["delta"] for event in deltas) == of_type(events, COMPLETED)[0]["transcript"]


@pytest.mark.parametrize(
    ("query", "param", "sentence"),
    [
        ("input_audio_format=pcm_s16le_44100", "input_audio_format", "must be one of pcm_s16le_16000, pcm16"),
        ("input_audio_format=opus", "input_audio_format", "got 'opus'"),
        ("turn_detection=semantic", "turn_detection", "must be one of server_vad, semantic_vad, none"),
        ("turn_detection=server_vad&threshold=1.5", "threshold", "must be between 0.05 and 0.95"),
        ("threshold=loud", "threshold", "expected a number"),
        ("min_silence_duration_ms=50", "min_silence_duration_ms", "must be between 100 and 10000"),
        ("speech_pad_ms=0.5", "speech_pad_ms", "expected a whole number"),
        ("min_speech_duration_ms=99999", "min_speech_duration_ms", "must be between 32 and 5000"),
        ("max_speech_duration_s=0", "max_speech_duration_s", "must be between 1 and 300"),
    ],
)
async def test_a_value_the_daemon_cannot_take_is_refused_naming_its_parameter(
    query: str, param: str, sentence: str
) -> None:
    """A 400 before the upgrade with OpenAI's error object (`invalid_request_error`, `invalid_value`,
    the parameter, a sentence), as the WebSocket client sees it; the next connection is served."""
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        plain = url(daemon, f"intent=transcription&{query}").replace("ws:", "http:", 1)
        async with http.get(plain, headers=HEADERS) as response:
            assert response.status == 400
            error = (await response.json())["error"]
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url(daemon, f"intent=transcription&{query}"), additional_headers=HEADERS)
        async with websockets.connect(url(daemon, TOGETHER), additional_headers=HEADERS) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_value", error
    assert error["param"] == param and sentence in error["message"], error
    assert refused.value.response.status_code == 400
    assert json.loads(refused.value.response.body)["error"] == error
