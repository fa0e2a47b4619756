"""Gladia's live API v2 with the three real Gladia clients, against the real daemon (real Silero,
real tiny.en): Gladia's SDK (`gladiaio_sdk`'s async live session), LiveKit's `gladia.STT` stream
and Pipecat's `GladiaSTTService` behind its own Silero VAD. Each is pointed at the daemon on
127.0.0.1 by its URL alone, with the key as it sends it (`X-Gladia-Key`), does its POST, then the
WebSocket its answer names, fed three_commands.wav at microphone pace. These tests are where a
field the daemon leaves out or mistypes, or a default it refuses, shows."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from gladiaio_sdk import GladiaClient
from livekit import rtc
from livekit.agents import APIConnectionError, APIConnectOptions, APIStatusError
from livekit.agents import stt as lk_stt
from livekit.plugins import gladia as lk_gladia
from pipecat.frames.frames import TranscriptionFrame
from pipecat.services.gladia.config import LanguageConfig, RealtimeProcessingConfig
from pipecat.services.gladia.stt import GladiaSTTService

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.protocols import gladia
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble, CrashingEngineDouble
from tests.helpers import (
    EXPECTED,
    eventually,
    fixture_16k,
    microphone_chunks,
    normalise,
    pcm16,
    running_daemon,
    same_words,
)
from tests.livekit_events import LiveKitEvents, stream_fixture
from tests.test_pipecat import refused, running_pipeline, transcribed

pytestmark = pytest.mark.timeout(180)

KEY = "gladia-test-key"
FIXTURE = "three_commands.wav"
FRAME_S = 0.1
"""100 ms of audio a message, sent as a microphone delivers it."""


def base_url(daemon: Daemon) -> str:
    return f"http://127.0.0.1:{daemon.http_port}"


async def sdk_session(
    daemon: Daemon, options: dict[str, Any], api_key: str = KEY, speak: bool = True
) -> tuple[list[Any], list[Exception]]:
    """The SDK's async live session: the fixture at microphone pace if `speak`, then
    `stop_recording`; every message and error until the session ends."""
    client = GladiaClient(api_key=api_key, api_url=base_url(daemon)).live_v2_async()
    session = client.start_session(options)
    messages: list[Any] = []
    errors: list[Exception] = []
    ended = asyncio.Event()
    session.on("message", messages.append)
    session.on("error", errors.append)
    session.on("ended", lambda _message: ended.set())
    for chunk in microphone_chunks(FIXTURE, FRAME_S) if speak else []:
        session.send_audio(chunk)
        await asyncio.sleep(FRAME_S)
    if speak:
        session.stop_recording()
    try:
        async with asyncio.timeout(60):
            await ended.wait()
    finally:
        await client._http_client.close()  # the live client has no close of its own: its keep-alive socket would leak
    return messages, errors


SDK_OPTIONS = {"encoding": "wav/pcm", "sample_rate": SAMPLE_RATE, "bit_depth": 16, "channels": 1}


async def test_sdk_session_gets_partials_finals_and_its_lifecycle() -> None:
    """The SDK's typed messages: partial and final transcripts, speech events, the lifecycle it
    asked for, acknowledgments (which the SDK always asks for, to trim its resend buffer), and
    the closing transcript."""
    messages_config = {"receive_partial_transcripts": True, "receive_lifecycle_events": True}
    async with running_daemon(api_key=KEY) as daemon:
        messages, errors = await sdk_session(daemon, {**SDK_OPTIONS, "messages_config": messages_config})
    assert errors == []
    transcripts = [m for m in messages if m.type == "transcript"]
    finals = [m.data.utterance.text for m in transcripts if m.data.is_final]
    assert same_words(EXPECTED[FIXTURE], finals), finals
    assert any(not m.data.is_final for m in transcripts)
    kinds = [m.type for m in messages]
    assert kinds[0] == "start_session" and kinds[-1] == "end_session"
    assert kinds.count("start_session") == 1  # the SDK's own, from the POST's answer
    assert {"start_recording", "speech_start", "speech_end", "end_recording"} <= set(kinds)
    [post_final] = [m for m in messages if m.type == "post_final_transcript"]
    assert post_final.data.transcription is not None
    assert [u.text for u in post_final.data.transcription.utterances] == finals
    assert all(u.language == "en" for u in post_final.data.transcription.utterances)


async def test_sdk_with_a_wrong_key_reports_the_401() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        messages, errors = await sdk_session(daemon, SDK_OPTIONS, api_key="wrong", speak=False)
    assert messages == []
    assert "the API key is not valid" in str(errors[0]) and "401" in str(errors[0])


async def test_sdk_reports_a_refused_config_with_the_daemons_sentence() -> None:
    options = {**SDK_OPTIONS, "realtime_processing": {"translation": True}}
    async with running_daemon(api_key=KEY) as daemon:
        _messages, errors = await sdk_session(daemon, options, speak=False)
    assert "this server does not do translation" in str(errors[0]), errors


def livekit_stt(daemon: Daemon, http: aiohttp.ClientSession, api_key: str = KEY, **options: Any) -> lk_gladia.STT:
    return lk_gladia.STT(api_key=api_key, base_url=f"{base_url(daemon)}{gladia.PATH}", http_session=http, **options)


async def test_livekit_stream_with_its_defaults_gets_a_speech_per_command() -> None:
    """LiveKit's defaults (interim results, code switching, its endpointing, its region and
    `words_accurate_timestamps` false): START_OF_SPEECH, interims, then a FINAL_TRANSCRIPT and
    END_OF_SPEECH for each command."""
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        events = await stream_fixture(livekit_stt(daemon, http), FIXTURE, finals=3)
    finals = [final.text for final in events.finals()]
    assert same_words(EXPECTED[FIXTURE], finals), finals
    kinds = lk_stt.SpeechEventType
    assert len(events.of(kinds.START_OF_SPEECH)) == 3 and len(events.of(kinds.END_OF_SPEECH)) == 3
    assert events.of(kinds.INTERIM_TRANSCRIPT)
    for event in events.of(kinds.FINAL_TRANSCRIPT):
        data = event.alternatives[0]
        assert data.language == "en" and 0 <= data.start_time < data.end_time


async def test_livekit_custom_vocabulary_and_language_reach_the_engine() -> None:
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine, api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        stt = livekit_stt(daemon, http, languages=["en"], custom_vocabulary=["Aoife", {"value": "Calloway"}])
        events = await stream_fixture(stt, FIXTURE, finals=3)
    assert same_words(EXPECTED[FIXTURE], [final.text for final in events.finals()])
    assert engine.names and all(names[:2] == ("Aoife", "Calloway") for names in engine.names)
    assert set(engine.languages) == {"en"}


async def test_livekit_recognize_a_recording_over_the_live_api() -> None:
    """LiveKit's `recognize` (a recording at once) posts a session, sends it all, `stop_recording`,
    and reads the finals until `post_final_transcript`: one event, each command one of its
    alternatives (LiveKit's way of giving the recording's utterances)."""
    audio = pcm16(fixture_16k(FIXTURE), SAMPLE_RATE)
    frame = rtc.AudioFrame(audio, SAMPLE_RATE, 1, len(audio) // 2)
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        stt = livekit_stt(daemon, http)
        event = await stt.recognize([frame], conn_options=APIConnectOptions(max_retry=0, timeout=20))
        await stt.aclose()
    assert event.type == lk_stt.SpeechEventType.FINAL_TRANSCRIPT
    said = [alternative.text for alternative in event.alternatives]
    assert same_words(EXPECTED[FIXTURE], said), said


async def test_livekit_stream_outlives_an_engine_failure() -> None:
    """Every final decode fails (the vocabulary says `crash`): each is an `error` message, which
    LiveKit's stream reads past, so the stream stays up and still gets the finals that follow (the
    session's fallback, the utterance's last partial) instead of failing: a Close would end it
    and lose them."""
    async with running_daemon(CrashingEngineDouble(), api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        errors = daemon.core.metrics.errors.labels("engine_error")
        before = errors._value.get()
        stt = livekit_stt(daemon, http, custom_vocabulary=["crash"])
        stream = stt.stream(conn_options=APIConnectOptions(max_retry=0, timeout=10))
        events = LiveKitEvents(stream)
        try:
            for chunk in microphone_chunks(FIXTURE, FRAME_S):
                stream.push_frame(rtc.AudioFrame(chunk, SAMPLE_RATE, 1, len(chunk) // 2))
                await asyncio.sleep(FRAME_S)
            await eventually(lambda: errors._value.get() - before >= 3)
            assert not events.reading.done(), "the stream is still up after the failures"
            stream.end_input()
            async with asyncio.timeout(30):
                await events.reading
        finally:
            await stream.aclose()
            await stt.aclose()
    said = [normalise(final.text) for final in events.finals()]
    assert said and said[0].startswith("turn off"), events.turns()


async def test_livekit_stream_fails_with_the_daemons_401() -> None:
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        with pytest.raises((APIStatusError, APIConnectionError)) as failure:
            await stream_fixture(livekit_stt(daemon, http, api_key="wrong"), FIXTURE, finals=1)
    assert "401" in str(failure.value)


async def test_livekit_stream_fails_on_refused_translation() -> None:
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        stt = livekit_stt(daemon, http, translation_enabled=True, translation_target_languages=["fr"])
        with pytest.raises((APIStatusError, APIConnectionError)) as failure:
            await stream_fixture(stt, FIXTURE, finals=1)
    assert "400" in str(failure.value)


def pipecat_service(daemon: Daemon, api_key: str = KEY, **options: Any) -> GladiaSTTService:
    return GladiaSTTService(api_key=api_key, url=f"{base_url(daemon)}{gladia.PATH}", **options)


async def test_pipecat_service_gets_a_final_per_command() -> None:
    """Pipecat's defaults (Gladia's messages defaults: finals, no partials)."""
    async with running_daemon(api_key=KEY) as daemon:
        frames = await transcribed(pipecat_service(daemon), FIXTURE)
    transcripts = [frame for frame in frames.frames if isinstance(frame, TranscriptionFrame)]
    assert all(frame.language == "en" for frame in transcripts)


async def test_pipecat_service_with_its_language_and_vocabulary() -> None:
    engine = ContextRecordingEngineDouble()
    realtime = RealtimeProcessingConfig(custom_vocabulary=True, custom_vocabulary_config={"vocabulary": ["Aoife"]})
    settings = GladiaSTTService.Settings(
        language_config=LanguageConfig(languages=["en"], code_switching=False), realtime_processing=realtime
    )
    async with running_daemon(engine, api_key=KEY) as daemon:
        await transcribed(pipecat_service(daemon, settings=settings), FIXTURE)
    assert engine.names and all(names[:1] == ("Aoife",) for names in engine.names)
    assert set(engine.languages) == {"en"}


async def test_pipecat_service_with_a_wrong_key_gets_an_error_frame_with_the_401() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        frames = await refused(pipecat_service(daemon, "wrong"))
    assert "401" in frames.errors[0] and "the API key is not valid" in frames.errors[0], frames.errors


async def test_pipecat_service_with_a_refused_config_gets_an_error_frame_with_the_sentence() -> None:
    settings = GladiaSTTService.Settings(realtime_processing=RealtimeProcessingConfig(sentiment_analysis=True))
    async with (
        running_daemon(api_key=KEY) as daemon,
        running_pipeline(pipecat_service(daemon, settings=settings)) as (_worker, frames),
    ):
        await frames.wait_for(errors=1)
    assert "this server does not do sentiment analysis" in frames.errors[0], frames.errors


async def test_sdk_reconnects_after_a_network_drop_and_its_session_goes_on() -> None:
    """The SDK reconnects to the session's URL after a drop (a close it retries: 1006 here) and
    sends the audio it was given meanwhile; the session goes on, to the last command's final. (The
    command the drop cut, acknowledged already, is lost: docs/gladia.md says so.) The drop comes
    once the daemon has acknowledged every chunk sent: the SDK resends on reconnecting whatever is
    not acknowledged yet, so acknowledgements a loaded machine delivered late would bring the cut
    command's tail to the new connection, where it is transcribed (its words then depend on the
    load, not on the daemon)."""
    async with running_daemon(api_key=KEY) as daemon:
        client = GladiaClient(api_key=KEY, api_url=base_url(daemon)).live_v2_async()
        session = client.start_session(SDK_OPTIONS)
        messages: list[Any] = []
        errors: list[Exception] = []
        connected: list[Any] = []
        ended = asyncio.Event()
        session.on("message", messages.append)
        session.on("error", errors.append)
        session.on("connected", connected.append)
        session.on("ended", lambda _message: ended.set())
        chunks = microphone_chunks(FIXTURE, FRAME_S)
        for index, chunk in enumerate(chunks):
            if index == len(chunks) // 2:
                await eventually(lambda: not session._audio_buffer)  # the SDK's unacknowledged audio
                session._ws._ws.transport.abort()  # the network drops
            session.send_audio(chunk)
            await asyncio.sleep(FRAME_S)
        session.stop_recording()
        try:
            async with asyncio.timeout(60):
                await ended.wait()
        finally:
            await client._http_client.close()
    assert errors == [] and len(connected) == 2
    finals = [m.data.utterance.text for m in messages if m.type == "transcript" and m.data.is_final]
    first, _cut, last = EXPECTED[FIXTURE]
    assert same_words([first, last], [normalise(t) for t in finals]), finals
    assert {m.session_id for m in messages} == {await session.get_session_id()}
