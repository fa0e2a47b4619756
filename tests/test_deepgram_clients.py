"""Deepgram's live API (`/v1/listen`) with the three real Deepgram clients, against the real daemon
(real Silero, real tiny.en): the official SDK (deepgram-sdk), LiveKit's `deepgram.STT` stream and
Pipecat's `DeepgramSTTService` behind its own Silero VAD. Each is pointed at the daemon on
127.0.0.1 and fed three_commands.wav at microphone pace."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
from deepgram.core.api_error import ApiError
from deepgram.listen.v1 import (
    ListenV1Metadata,
    ListenV1Results,
    ListenV1SpeechStarted,
    ListenV1UtteranceEnd,
)
from livekit.agents import APIConnectOptions
from livekit.agents import stt as lk_stt
from livekit.plugins import deepgram as lk_deepgram
from pipecat.frames.frames import TranscriptionFrame
from pipecat.services.deepgram.stt import DeepgramSTTService

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.server import Daemon
from tests.helpers import EXPECTED, fixture_16k, pcm16, running_daemon, same_words
from tests.livekit_events import pushed
from tests.test_pipecat import running_pipeline, speak

pytestmark = [
    pytest.mark.timeout(180),
    # deepgram-sdk 7.17 connects with websockets' legacy client, whose names websockets 16 deprecates
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:websockets.exceptions.InvalidStatusCode is deprecated:DeprecationWarning"),
]

KEY = "deepgram-test-key"
FIXTURE = "three_commands.wav"
FRAME_S = 0.1
"""100 ms of audio a message, sent as a microphone delivers it."""


def sdk_client(daemon: Daemon, api_key: str = KEY, **options: Any) -> AsyncDeepgramClient:
    """The SDK's client with every URL of its environment on the daemon (it connects to
    `production` + `/v1/listen`, and posts files to `base` + `/v1/listen`); `options` go to the client."""
    http, ws = f"http://127.0.0.1:{daemon.http_port}", f"ws://127.0.0.1:{daemon.http_port}"
    environment = DeepgramClientEnvironment(base=http, production=ws, agent=ws, agent_rest=http)
    return AsyncDeepgramClient(api_key=api_key, environment=environment, **options)


def validated(message: Any) -> Any:
    """The SDK's model of a message validated as it declares it: the SDK builds its models without
    validation when validation fails, with missing fields None, so a field the server left out or
    mistyped fails here."""
    return type(message).model_validate(message.model_dump(by_alias=True))


async def sdk_stream(connection: Any, *, finalize: bool = False) -> list[Any]:
    """The fixture sent through an SDK connection in 100 ms frames at microphone pace, then
    `Finalize` if asked and `CloseStream`: every message the SDK made of what the daemon sent, until
    the daemon's Close."""
    audio = pcm16(fixture_16k(FIXTURE), SAMPLE_RATE)
    step = int(FRAME_S * SAMPLE_RATE) * 2
    messages: list[Any] = []

    async def read() -> None:
        async for message in connection:
            messages.append(message)

    reading = asyncio.create_task(read())
    for offset in range(0, len(audio), step):
        await connection.send_media(audio[offset : offset + step])
        await asyncio.sleep(FRAME_S)
    if finalize:
        await connection.send_finalize()
    await connection.send_close_stream()
    await asyncio.wait_for(reading, 30)
    return messages


async def test_sdk_streams_typed_results_speech_started_utterance_end_and_metadata() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        options: dict[str, Any] = {"encoding": "linear16", "sample_rate": 16000, "interim_results": True}
        options |= {"vad_events": True, "utterance_end_ms": 1000, "smart_format": True, "language": "en"}
        async with sdk_client(daemon).listen.v1.connect(model="nova-3", **options) as connection:
            # nothing is in progress at the Finalize: an empty final answers it; Metadata comes last
            messages = await sdk_stream(connection, finalize=True)
    assert all(message is not None for message in messages), "every message is one of the SDK's types"
    for message in messages:
        validated(message)
    results = [m for m in messages if isinstance(m, ListenV1Results)]
    finals = [m for m in results if m.is_final]
    answer = finals.pop()
    assert answer.from_finalize and answer.channel.alternatives[0].transcript == "", "the Finalize is answered"
    assert same_words(EXPECTED[FIXTURE], [m.channel.alternatives[0].transcript for m in finals])
    assert all(m.speech_final and not m.from_finalize for m in finals)
    assert any(not m.is_final for m in results), "interim results while each command is spoken"
    assert len([m for m in messages if isinstance(m, ListenV1SpeechStarted)]) == 3
    assert len([m for m in messages if isinstance(m, ListenV1UtteranceEnd)]) == 3
    metadata = messages[-1]
    assert isinstance(metadata, ListenV1Metadata)
    assert metadata.duration == pytest.approx(fixture_16k(FIXTURE).size / SAMPLE_RATE, abs=0.01)
    assert {m.metadata.request_id for m in results} == {metadata.request_id}


async def test_sdk_gets_api_errors_for_a_wrong_key_and_a_bad_parameter() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        with pytest.raises(ApiError) as wrong_key:
            async with sdk_client(daemon, "wrong").listen.v1.connect(
                model="nova-3", encoding="linear16", sample_rate=16000
            ):
                pass
        with pytest.raises(ApiError) as bad_parameter:
            async with sdk_client(daemon).listen.v1.connect(model="nova-3", encoding="opus", sample_rate=16000):
                pass
    assert wrong_key.value.status_code == 401
    assert bad_parameter.value.status_code == 400


async def livekit_stream(stt: lk_stt.STT) -> list[lk_stt.SpeechEvent]:
    """The fixture streamed through a LiveKit STT in 100 ms frames at microphone pace, then
    `end_input`: its events. No retries: an error from the stream, or an error event, fails the test."""
    audio = pcm16(fixture_16k(FIXTURE), SAMPLE_RATE)
    step = int(FRAME_S * SAMPLE_RATE) * 2
    events: list[lk_stt.SpeechEvent] = []
    errors: list[Any] = []
    stt.on("error", errors.append)
    stream = stt.stream(conn_options=APIConnectOptions(max_retry=0, timeout=10))

    async def read() -> None:
        async for event in stream:
            events.append(event)

    reading = asyncio.create_task(read())
    for offset in range(0, len(audio), step):
        if not pushed(stream, audio[offset : offset + step]):  # the stream failed: what it raised is raised below
            break
        await asyncio.sleep(FRAME_S)
    else:
        stream.end_input()
    await asyncio.wait_for(reading, 30)  # raises what the stream raised
    await stt.aclose()
    assert errors == []
    return events


async def test_livekit_stream_with_its_defaults() -> None:
    """LiveKit's defaults: endpointing=25, vad_events, interim results, no_delay, filler_words,
    en-US; 50 ms messages; KeepAlive first; Finalize then CloseStream at the end of input."""
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{daemon.http_port}/v1/listen"
        events = await livekit_stream(lk_deepgram.STT(api_key=KEY, base_url=url, http_session=http))
    kinds = lk_stt.SpeechEventType
    finals = [e.alternatives[0].text for e in events if e.type == kinds.FINAL_TRANSCRIPT]
    assert same_words(EXPECTED[FIXTURE], finals)
    turns = [e.type for e in events if e.type in (kinds.START_OF_SPEECH, kinds.FINAL_TRANSCRIPT, kinds.END_OF_SPEECH)]
    assert turns == [kinds.START_OF_SPEECH, kinds.FINAL_TRANSCRIPT, kinds.END_OF_SPEECH] * 3
    assert any(e.type == kinds.INTERIM_TRANSCRIPT for e in events)


@pytest.mark.parametrize("rate", [SAMPLE_RATE, 8000], ids=["16 kHz", "8 kHz"])
async def test_pipecat_service_behind_its_vad_gets_finalized_transcripts(rate: int) -> None:
    """Pipecat sends its pipeline's rate and a Finalize at each stop of its VAD; a final that
    answers one says `from_finalize`, which Pipecat marks `finalized`."""
    async with running_daemon(api_key=KEY) as daemon:
        stt = DeepgramSTTService(api_key=KEY, base_url=f"http://127.0.0.1:{daemon.http_port}")
        async with running_pipeline(stt, rate) as (worker, frames):
            await speak(worker, FIXTURE, rate)
            await frames.wait_for(finals=3)
    assert frames.errors == []
    assert same_words(EXPECTED[FIXTURE], frames.finals)
    transcripts = [frame for frame in frames.frames if isinstance(frame, TranscriptionFrame)]
    assert any(frame.finalized for frame in transcripts), "a final answered Pipecat's Finalize"
