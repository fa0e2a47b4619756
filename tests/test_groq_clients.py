"""Groq's speech-to-text with the real Groq clients, against the daemon's OpenAI-compatible upload
route (`POST /v1/audio/transcriptions`; real Silero, real tiny.en): Pipecat's `GroqSTTService` in a
pipeline behind its own Silero VAD (a WAV of each segment its VAD cut), and LiveKit's
`groq.STT.recognize` (a WAV of the buffer). Both are pointed at the daemon by `base_url=` and send
every parameter they have: Groq's model names, `response_format` json or verbose_json, `language`,
`prompt`, `temperature` (docs/groq.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import APIConnectOptions, APIStatusError
from livekit.agents.stt import SpeechEvent
from livekit.plugins import groq as lk_groq
from openai import DefaultAsyncHttpxClient
from pipecat.services.groq.stt import GroqSTTService
from pipecat.transcriptions.language import Language

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble
from tests.helpers import EXPECTED, fixture_16k, pcm16, running_daemon, same_words
from tests.test_pipecat import ServiceFrames, running_pipeline, speak, transcribed

pytestmark = pytest.mark.timeout(180)

KEY = "groq-test-key"
FIXTURE = "three_commands.wav"


def base_url(daemon: Daemon) -> str:
    return f"http://127.0.0.1:{daemon.http_port}/v1"


@asynccontextmanager
async def pipecat_service(
    daemon: Daemon, api_key: str = KEY, include_prob_metrics: bool = False, **settings: Any
) -> AsyncIterator[GroqSTTService]:
    """Groq's service on an HTTP client the test closes (Pipecat never closes one it made itself)."""
    async with DefaultAsyncHttpxClient() as http:
        yield GroqSTTService(
            api_key=api_key,
            base_url=base_url(daemon),
            http_client=http,
            include_prob_metrics=include_prob_metrics,
            settings=GroqSTTService.Settings(**settings),
        )


async def test_pipecat_service_with_its_defaults_gets_a_transcript_per_segment() -> None:
    """whisper-large-v3-turbo, English, `response_format=json`, with the daemon's key."""
    async with running_daemon(api_key=KEY) as daemon, pipecat_service(daemon) as stt:
        await transcribed(stt, FIXTURE)


@pytest.mark.parametrize("model", ["whisper-large-v3", "whisper-large-v3-turbo", "distil-whisper-large-v3-en"])
async def test_pipecat_service_with_every_setting_reaches_the_engine(model: str) -> None:
    """verbose_json (`include_prob_metrics`), a prompt and a temperature, under each of Groq's model
    names: accepted; the prompt is the engine's context (the temperature is checked, not applied)."""
    engine = ContextRecordingEngineDouble()
    async with (
        running_daemon(engine, api_key=KEY) as daemon,
        pipecat_service(
            daemon, include_prob_metrics=True, model=model, prompt="Kowalski", temperature=0.2, language=Language.EN
        ) as stt,
    ):
        await transcribed(stt, "lights_on.wav")
    assert engine.contexts == ["Kowalski"] and engine.languages == ["en"], (engine.contexts, engine.languages)


@pytest.mark.parametrize(
    ("daemon_settings", "service_settings", "reason"),
    [
        ({"api_key": KEY}, {"api_key": "wrong"}, "401 - the API key is not valid"),
        ({}, {"language": Language.DE}, "'de' is not one of the languages of this engine (en)"),
        ({}, {"temperature": 1.5}, "temperature"),
    ],
    ids=["wrong key", "a language the engine lacks", "temperature over 1"],
)
async def test_pipecat_service_gets_an_error_frame_with_the_daemons_reason(
    daemon_settings: dict[str, Any], service_settings: dict[str, Any], reason: str
) -> None:
    api_key = service_settings.pop("api_key", KEY)
    async with (
        running_daemon(**daemon_settings) as daemon,
        pipecat_service(daemon, api_key=api_key, **service_settings) as stt,
    ):
        frames = await first_error_after_speech(stt)
    assert frames.finals == [] and reason in frames.errors[0], frames.errors


async def first_error_after_speech(stt: GroqSTTService) -> ServiceFrames:
    """A segmented service uploads only when its VAD cut a segment: a command, then its error."""
    async with running_pipeline(stt) as (worker, frames):
        await speak(worker, "lights_on.wav")
        await frames.wait_for(errors=1)
    return frames


def buffer(fixture: str) -> list[rtc.AudioFrame]:
    samples = pcm16(fixture_16k(fixture), SAMPLE_RATE)
    return [rtc.AudioFrame(samples, SAMPLE_RATE, 1, len(samples) // 2)]


async def recognize(stt: lk_groq.STT, fixture: str) -> SpeechEvent:
    """`stt.recognize` of the fixture, no retry; the STT closed after, its HTTP client too (the
    plugin's `aclose` leaves the OpenAI client it made open, which warns when collected)."""
    try:
        return await stt.recognize(buffer(fixture), conn_options=APIConnectOptions(max_retry=0))
    finally:
        await stt.aclose()
        await stt._client.close()


async def test_livekit_recognize_posts_the_buffer_with_its_model_language_and_prompt() -> None:
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine, api_key=KEY) as daemon:
        event = await recognize(lk_groq.STT(api_key=KEY, base_url=base_url(daemon), prompt="Kowalski"), "lights_on.wav")
    [speech] = event.alternatives
    assert same_words(EXPECTED["lights_on.wav"], [speech.text]) and speech.language == "en", speech
    assert engine.contexts == ["Kowalski"] and engine.languages == ["en"], (engine.contexts, engine.languages)


async def test_livekit_recognize_with_detect_language_sends_no_language() -> None:
    """`detect_language=True`: no `language` goes, the daemon's default answers."""
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine, api_key=KEY) as daemon:
        stt = lk_groq.STT(api_key=KEY, base_url=base_url(daemon), model="whisper-large-v3", detect_language=True)
        event = await recognize(stt, "timer.wav")
    assert same_words(EXPECTED["timer.wav"], [event.alternatives[0].text]), event
    assert engine.languages == [daemon.core.settings.default_language], engine.languages


async def test_livekit_recognize_with_a_wrong_key_fails_with_the_401() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        with pytest.raises(APIStatusError) as refused:
            await recognize(lk_groq.STT(api_key="wrong", base_url=base_url(daemon)), "lights_on.wav")
    assert refused.value.status_code == 401
