"""xAI's real-time speech-to-text API (`/v1/stt`) with the real xAI clients, against the real daemon
(real Silero, real tiny.en): Pipecat's `XAISTTService` in a pipeline behind its own Silero VAD, and
LiveKit's `xai.STT` stream. Pipecat's is pointed at the daemon by its `ws_url`; LiveKit's plugin
hard-codes xAI's host in the module constant `XAI_WEBSOCKET_URL`, which the tests set as a user
must (docs/xai.md). The key goes as both send it (`Authorization: Bearer`); three_commands.wav at
microphone pace: these tests are where a field the daemon leaves out or mistypes shows."""

from __future__ import annotations

import asyncio

import aiohttp
import livekit.plugins.xai.stt as lk_xai_stt
import pytest
from livekit import rtc
from livekit.agents import APIConnectOptions, APIStatusError
from livekit.plugins import xai as lk_xai
from pipecat.services.xai.stt import XAISTTService

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.protocols import xai
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble
from tests.helpers import EXPECTED, fixture_16k, microphone_chunks, pcm16, running_daemon, same_words
from tests.livekit_events import FRAME_S, LiveKitEvents, stream_fixture
from tests.test_pipecat import across_a_pause, first_error, transcribed

pytestmark = pytest.mark.timeout(180)

KEY = "xai-test-key"
FIXTURE = "three_commands.wav"


def ws_url(daemon: Daemon) -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{xai.PATH}"


def pipecat_service(daemon: Daemon, api_key: str = KEY, **settings: object) -> XAISTTService:
    return XAISTTService(api_key=api_key, ws_url=ws_url(daemon), settings=XAISTTService.Settings(**settings))


async def test_pipecat_service_gets_a_transcript_per_command() -> None:
    """Pipecat's defaults (interim results, English, grok-voice-transcribe-2.0): each command's
    `speech_final` transcript is a `TranscriptionFrame`, its partials interim frames."""
    async with running_daemon(api_key=KEY) as daemon:
        frames = await transcribed(pipecat_service(daemon), FIXTURE)
    assert frames.interims, "partials reach Pipecat as interim transcripts"


async def test_pipecat_service_with_a_wrong_key_gets_an_error_frame_with_the_401() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        frames = await first_error(pipecat_service(daemon, "wrong"))
    assert "401" in frames.errors[0] and frames.finals == [], frames.errors


async def test_pipecat_service_reports_the_daemons_sentence_for_diarize() -> None:
    """`diarize=true` is refused in xAI's error event: Pipecat's error frame carries the sentence."""
    async with running_daemon(api_key=KEY) as daemon:
        frames = await first_error(pipecat_service(daemon, diarize=True))
    assert "speaker labels" in frames.errors[0], frames.errors


async def test_livekit_stream_with_the_constant_set_gets_a_final_per_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """LiveKit's defaults (interim results, endpointing=100, en) plus keyterms: a final per command,
    each between its START_OF_SPEECH and END_OF_SPEECH, its span from the words; the keyterms reach
    the engine; `end_input` sends `audio.done`, and the daemon's Close ends the stream cleanly."""
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine, api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        monkeypatch.setattr(lk_xai_stt, "XAI_WEBSOCKET_URL", ws_url(daemon))
        stt = lk_xai.STT(api_key=KEY, http_session=http, keyterm=["Grok", "Colossus"], vad_threshold=0.1)
        events = await stream_fixture(stt, FIXTURE, finals=3)
    finals = [final.text for final in events.finals() if final.text]
    assert same_words(EXPECTED[FIXTURE], finals), finals
    assert events.turns().replace("i", "") == "SFE" * 3, events.turns()
    assert all(0 <= f.start_time < f.end_time and f.words for f in events.finals()), events.finals()
    assert engine.names and all(names[:2] == ("Grok", "Colossus") for names in engine.names), engine.names


async def test_livekit_recognize_with_the_constant_set_posts_the_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """LiveKit's `recognize` posts a WAV of the buffer to `XAI_REST_URL` (its `file`, `language`,
    `format`): the transcript, its language and its span from the daemon's words."""
    samples = pcm16(fixture_16k("lights_on.wav"), SAMPLE_RATE)
    frame = rtc.AudioFrame(samples, SAMPLE_RATE, 1, len(samples) // 2)
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        monkeypatch.setattr(lk_xai_stt, "XAI_REST_URL", f"http://127.0.0.1:{daemon.http_port}{xai.PATH}")
        stt = lk_xai.STT(api_key=KEY, http_session=http)
        event = await stt.recognize([frame], conn_options=APIConnectOptions(max_retry=0, timeout=20))
    [speech] = event.alternatives
    assert same_words(EXPECTED["lights_on.wav"], [speech.text]) and speech.language == "en", speech
    assert 0 <= speech.start_time < speech.end_time <= len(samples) / 2 / SAMPLE_RATE, speech


async def test_livekit_stream_with_a_wrong_key_fails_with_the_401(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        monkeypatch.setattr(lk_xai_stt, "XAI_WEBSOCKET_URL", ws_url(daemon))
        with pytest.raises(APIStatusError) as refused:
            await stream_fixture(lk_xai.STT(api_key="wrong", http_session=http), FIXTURE, finals=1)
    assert refused.value.status_code == 401


async def test_livekit_stream_goes_on_after_the_idle_timeout_closes_its_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LiveKit keeps one stream for a whole session: when the daemon's idle timeout closes the
    connection (the error, then 1001), the plugin reconnects and the next command is transcribed."""
    async with running_daemon(api_key=KEY, idle_timeout_s=2) as daemon, aiohttp.ClientSession() as http:
        monkeypatch.setattr(lk_xai_stt, "XAI_WEBSOCKET_URL", ws_url(daemon))
        stt = lk_xai.STT(api_key=KEY, http_session=http)
        stream = stt.stream(conn_options=APIConnectOptions(max_retry=3, retry_interval=0.1, timeout=10))
        events = LiveKitEvents(stream)
        silence = [bytes(int(FRAME_S * SAMPLE_RATE) * 2)] * 40
        try:
            for chunk in [*microphone_chunks("lights_on.wav", FRAME_S), *silence, *microphone_chunks(FIXTURE, FRAME_S)]:
                stream.push_frame(rtc.AudioFrame(chunk, SAMPLE_RATE, 1, len(chunk) // 2))
                await asyncio.sleep(FRAME_S)
            await events.wait_for(lambda: len([final for final in events.finals() if final.text]) >= 4)
        finally:
            await stream.aclose()
            await stt.aclose()
    finals = [final.text for final in events.finals() if final.text]
    assert same_words([*EXPECTED["lights_on.wav"], *EXPECTED[FIXTURE]], finals), (finals, events.turns())


async def test_pipecat_service_reconnects_after_the_idle_timeout_closes_its_connection() -> None:
    """Pipecat's service is connected for the whole pipeline: when the daemon's idle timeout closes
    the connection, its error is an error frame with the daemon's sentence, the service reconnects
    (it waits for `transcript.created` again) and the next commands are transcribed. The timeout is
    over Pipecat's 5 s: a connection shorter than that is a quick failure, and after three in a row
    Pipecat stops reconnecting."""
    async with running_daemon(api_key=KEY, idle_timeout_s=6) as daemon:
        frames = await across_a_pause(pipecat_service(daemon), "lights_on.wav", FIXTURE, 8)
    assert same_words([*EXPECTED["lights_on.wav"], *EXPECTED[FIXTURE]], frames.finals), frames.finals
    assert frames.errors and all("idle_timeout_s" in error for error in frames.errors), frames.errors
