"""Mistral's realtime transcription API (`/v1/audio/transcriptions/realtime`) with the three real
Mistral clients, against the real daemon (real Silero, real tiny.en): Mistral's SDK (`mistralai`,
its `transcribe_stream` helper and its `RealtimeConnection`), LiveKit's `mistralai.STT` stream
(behind its Silero VAD, whose end of speech flushes) and Pipecat's `MistralSTTService` behind its
own Silero VAD. Each is pointed at the daemon on 127.0.0.1 by its server URL alone, with the key
as the SDK sends it (`Authorization: Bearer`), and fed three_commands.wav at microphone pace: these
tests are where a field the daemon leaves out or mistypes shows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import APIConnectionError, APIConnectOptions
from livekit.plugins import mistralai as lk_mistral
from livekit.plugins import silero as lk_silero
from mistralai.client import Mistral
from mistralai.client.errors import SDKError
from mistralai.client.models import (
    AudioFormat,
    RealtimeTranscriptionError,
    TranscriptionStreamDone,
    TranscriptionStreamLanguage,
    TranscriptionStreamSegmentDelta,
    TranscriptionStreamTextDelta,
)
from mistralai.extra.exceptions import RealtimeTranscriptionException, RealtimeTranscriptionWSError
from pipecat.services.mistral.stt import MistralSTTService

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble
from tests.helpers import (
    EXPECTED,
    FIXTURES,
    fixture_16k,
    microphone_chunks,
    normalise,
    pcm16,
    running_daemon,
    same_words,
)
from tests.livekit_events import stream_fixture
from tests.test_pipecat import refused, transcribed

pytestmark = pytest.mark.timeout(180)

KEY = "mistral-test-key"
FIXTURE = "three_commands.wav"
MODEL = "voxtral-mini-transcribe-realtime-2602"
FRAME_S = 0.1
"""100 ms of audio a message, sent as a microphone delivers it."""


def server_url(daemon: Daemon) -> str:
    return f"http://127.0.0.1:{daemon.http_port}"


def client(daemon: Daemon, api_key: str = KEY) -> Mistral:
    return Mistral(api_key=api_key, server_url=server_url(daemon))


async def microphone() -> AsyncIterator[bytes]:
    for chunk in microphone_chunks(FIXTURE, FRAME_S):
        yield chunk
        await asyncio.sleep(FRAME_S)


async def test_sdk_transcribe_stream_gets_deltas_segments_and_one_done() -> None:
    """The SDK's `transcribe_stream` (which flushes and ends after the audio, and stops at the done):
    typed deltas as the commands are heard, the language, a segment per command, then the done with
    the whole transcript; no event left unparsed."""
    async with running_daemon(api_key=KEY) as daemon:
        events = [
            event
            async for event in client(daemon).audio.realtime.transcribe_stream(
                microphone(), model=MODEL, audio_format=AudioFormat(encoding="pcm_s16le", sample_rate=16000)
            )
        ]
    known = (TranscriptionStreamTextDelta, TranscriptionStreamLanguage, TranscriptionStreamSegmentDelta)
    assert all(isinstance(event, known) for event in events[2:-1]), events
    done = events[-1]
    assert isinstance(done, TranscriptionStreamDone) and done.language == "en" and done.model == MODEL
    assert same_words([" ".join(EXPECTED[FIXTURE])], [done.text]), done.text
    segments = [event.text for event in events if isinstance(event, TranscriptionStreamSegmentDelta)]
    assert same_words(EXPECTED[FIXTURE], segments) and [s.text for s in done.segments or []] == segments
    deltas = "".join(event.text for event in events if isinstance(event, TranscriptionStreamTextDelta))
    assert normalise(deltas) == normalise(done.text)


async def test_sdk_connection_flush_is_a_done_per_command() -> None:
    """The SDK's `RealtimeConnection`, flushing after each command as a client's VAD would: a done
    per command, each with that command alone; `end_audio`, then the server's Close ends the events."""
    chunks = microphone_chunks(FIXTURE, FRAME_S)
    pauses = {22, 48}  # silence after the first and second commands
    async with running_daemon(api_key=KEY) as daemon:
        connection = await client(daemon).audio.realtime.connect(model=MODEL)
        events: list[Any] = []

        async def read() -> None:
            async for event in connection.events():
                events.append(event)

        reading = asyncio.create_task(read())
        for index, chunk in enumerate(chunks):
            await connection.send_audio(chunk)
            if index in pauses:
                await connection.flush_audio()
            await asyncio.sleep(FRAME_S)
        await connection.flush_audio()
        await connection.end_audio()
        async with asyncio.timeout(60):
            await reading
    done = [event.text for event in events if isinstance(event, TranscriptionStreamDone)]
    assert same_words(EXPECTED[FIXTURE], done), done
    assert not [event for event in events if isinstance(event, RealtimeTranscriptionError)]


async def test_sdk_raises_the_daemons_sentence_for_a_bad_model_and_the_401_for_a_wrong_key() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        with pytest.raises(RealtimeTranscriptionWSError) as refused:
            await client(daemon).audio.realtime.connect(model=" ")
        with pytest.raises(RealtimeTranscriptionException) as wrong:
            await client(daemon, "wrong").audio.realtime.connect(model=MODEL)
    assert "model is required" in str(refused.value) and refused.value.code == 400
    assert "401" in str(wrong.value)


async def test_sdk_upload_is_transcribed_with_its_context_bias_and_segments() -> None:
    """The SDK's batch `audio.transcriptions.complete` posts to `POST /v1/audio/transcriptions`
    with Mistral's fields (`diarize` always, `context_bias` and `timestamp_granularities` repeated,
    `language`, `temperature`) and parses Mistral's answer (`model`, `text`, `language`, `segments`,
    `usage`): the context bias reaches the engine as the client's terms, segments come when asked,
    and `diarize=True` is refused with a sentence naming it, as is its streamed upload (whose events
    the daemon does not send)."""
    engine = ContextRecordingEngineDouble()
    file = {"content": (FIXTURES / FIXTURE).read_bytes(), "file_name": "three.wav"}
    async with running_daemon(engine, api_key=KEY) as daemon, client(daemon) as mistral:
        api = mistral.audio.transcriptions
        biased = await api.complete_async(
            model="voxtral-mini-latest",
            file=file,
            language="en",
            temperature=0.0,
            context_bias=["Zigbee", "kitchen lights"],
            timestamp_granularities=["segment"],
        )
        biased_names = list(engine.names)
        plain = await api.complete_async(model="voxtral-mini-latest", file=file)
        with pytest.raises(SDKError) as diarized:
            await api.complete_async(model="voxtral-mini-latest", file=file, diarize=True)
        with pytest.raises(SDKError) as streamed:
            await api.stream_async(model="voxtral-mini-latest", file=file)
    assert biased.model == "voxtral-mini-latest" and biased.language == "en"
    segments = biased.segments or []
    assert same_words(EXPECTED[FIXTURE], [segment.text for segment in segments]), segments
    assert biased.text == " ".join(segment.text for segment in segments)
    assert all(segment.start is not None and segment.end is not None for segment in segments)
    assert biased.usage.prompt_audio_seconds == 10 and biased.usage.total_tokens == 0
    assert biased_names and all(names == ("Zigbee", "kitchen lights") for names in biased_names), biased_names
    assert same_words([" ".join(EXPECTED[FIXTURE])], [plain.text]) and plain.segments == [], plain
    assert plain.language == "en"
    assert diarized.value.status_code == 400 and "diarize" in diarized.value.body, diarized.value.body
    assert streamed.value.status_code == 400 and "realtime API" in streamed.value.body, streamed.value.body


def livekit_stt(daemon: Daemon, api_key: str = KEY) -> lk_mistral.STT:
    return lk_mistral.STT(client=client(daemon, api_key), model=MODEL, vad=lk_silero.VAD.load())


async def test_livekit_recognize_with_a_batch_model_uploads_with_its_context_bias() -> None:
    """LiveKit's `mistralai.STT` with a batch model recognizes a buffer through the SDK's upload
    (`context_bias`, and segment timestamps when no language is set): the transcript, its language
    and its span from the daemon's segments."""
    samples = pcm16(fixture_16k("lights_on.wav"), SAMPLE_RATE)
    frame = rtc.AudioFrame(samples, SAMPLE_RATE, 1, len(samples) // 2)
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine, api_key=KEY) as daemon, client(daemon) as mistral:
        stt = lk_mistral.STT(client=mistral, model="voxtral-mini-latest", context_bias=["Zigbee"])
        event = await stt.recognize([frame], conn_options=APIConnectOptions(max_retry=0, timeout=20))
    [speech] = event.alternatives
    assert same_words(EXPECTED["lights_on.wav"], [speech.text]) and speech.language == "en", speech
    assert 0 <= speech.start_time < speech.end_time <= len(samples) / 2 / SAMPLE_RATE, speech
    assert engine.names and all(names == ("Zigbee",) for names in engine.names), engine.names


async def test_livekit_stream_gets_a_final_per_command_at_its_vads_flushes() -> None:
    """LiveKit's stream: deltas as interims, and at each end of speech of its Silero VAD a flush,
    answered by the done: a FINAL_TRANSCRIPT per command, in English."""
    async with running_daemon(api_key=KEY) as daemon:
        events = await stream_fixture(livekit_stt(daemon), FIXTURE, finals=3)
    finals = [final.text for final in events.finals() if final.text]
    assert same_words(EXPECTED[FIXTURE], finals), finals
    assert all(final.language == "en" for final in events.finals())
    assert "i" in events.turns(), events.turns()


async def test_livekit_stream_with_a_wrong_key_fails_to_connect() -> None:
    """The upgrade's 401 reaches LiveKit as its connection error (the plugin wraps what the SDK raises)."""
    async with running_daemon(api_key=KEY) as daemon:
        with pytest.raises(APIConnectionError):
            await stream_fixture(livekit_stt(daemon, "wrong"), FIXTURE, finals=1)


def pipecat_service(daemon: Daemon, api_key: str = KEY) -> MistralSTTService:
    return MistralSTTService(api_key=api_key, base_url=server_url(daemon))


async def test_pipecat_service_gets_a_transcript_per_command_at_its_vads_stops() -> None:
    """Pipecat's service flushes at each stop of its VAD: one transcript per command, deltas as interims."""
    async with running_daemon(api_key=KEY) as daemon:
        frames = await transcribed(pipecat_service(daemon), FIXTURE)
    assert frames.interims, "deltas reach Pipecat as interim transcripts"


async def test_pipecat_service_with_a_wrong_key_gets_an_error_frame_with_the_401() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        frames = await refused(pipecat_service(daemon, "wrong"))
    assert "401" in frames.errors[0], frames.errors
