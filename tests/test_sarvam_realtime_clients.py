"""Sarvam AI's realtime speech-to-text API (`/speech-to-text-realtime/ws`) with the real clients,
against the real daemon (real Silero, real tiny.en): Pipecat's `SarvamRealtimeSTTService` in a
pipeline behind Pipecat's VAD, in both endpointing modes, and the `sarvamai` SDK's
`speech_to_text_realtime_streaming` (an environment at the daemon). The key goes as both send it,
`API-SUBSCRIPTION-KEY`."""

from __future__ import annotations

import asyncio
import base64

import pytest
from pipecat.services.sarvam.stt import SarvamRealtimeSTTService
from sarvamai import AsyncSarvamAI
from sarvamai.types import RealtimeAudioInput, RealtimeEnd, RealtimeTranscriptFinal

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.protocols import sarvam_realtime
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble
from tests.helpers import EXPECTED, PCM_FRAME_BYTES, fixture_16k, pcm16, running_daemon, same_words
from tests.test_pipecat import first_error, running_pipeline, settings_changed_between_commands, speak, transcribed
from tests.test_sarvam_clients import environment

pytestmark = pytest.mark.timeout(180)

KEY = "sarvam-test-key"
FIXTURE = "three_commands.wav"


def pipecat_service(daemon: Daemon, api_key: str = KEY, **kwargs: object) -> SarvamRealtimeSTTService:
    base_url = f"ws://127.0.0.1:{daemon.http_port}{sarvam_realtime.PATH}"
    return SarvamRealtimeSTTService(api_key=api_key, base_url=base_url, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("endpointing", ["vad", "manual"])
async def test_pipecat_transcribes_each_command_with_interims(endpointing: str) -> None:
    """`vad`: the daemon's VAD ends each turn; `manual`: Pipecat's VAD does, by `speech_start` /
    `speech_end`. Either way a `TranscriptionFrame` per command, interims before them."""
    async with running_daemon(api_key=KEY) as daemon:
        frames = await transcribed(pipecat_service(daemon, endpointing=endpointing), FIXTURE)
    assert frames.interims, frames.frames


async def test_pipecat_with_a_wrong_key_gets_an_error_frame() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        frames = await first_error(pipecat_service(daemon, "wrong"))
    assert frames.finals == [] and ("403" in frames.errors[0] or "401" in frames.errors[0]), frames.errors


async def test_pipecat_with_a_refused_mode_gets_the_sentence() -> None:
    """`mode=translate` (the engine does not translate): Sarvam's fatal error and Close 4000, which
    Pipecat reports with the sentence and does not retry."""
    settings = SarvamRealtimeSTTService.Settings(mode="translate")
    async with running_daemon(api_key=KEY) as daemon:
        frames = await first_error(pipecat_service(daemon, settings=settings))
    assert any("translation into English" in error for error in frames.errors), frames.errors


async def test_pipecat_reconnects_after_the_idle_timeout() -> None:
    """Silent past idle_timeout_s: the daemon's error and Close 1008 (Sarvam's inactivity close);
    Pipecat reconnects, and what is said afterwards is transcribed."""
    async with (
        running_daemon(api_key=KEY, idle_timeout_s=5) as daemon,
        running_pipeline(pipecat_service(daemon)) as (worker, frames),
    ):
        await frames.wait_for(errors=1)
        assert "idle_timeout" in frames.errors[0], frames.errors
        await speak(worker, FIXTURE)
        await frames.wait_for(finals=len(EXPECTED[FIXTURE]))
    assert same_words(EXPECTED[FIXTURE], frames.finals), frames.finals


async def test_pipecat_settings_changed_mid_call_apply_from_the_next_command() -> None:
    """An `STTUpdateSettingsFrame` of the prompt and the language between two commands, which Pipecat
    sends on as Sarvam's `config.update`: no error frame, and the second command is decoded with the
    new prompt and no language (`auto`, detected), the first with what the call began with."""
    engine = ContextRecordingEngineDouble()
    delta = SarvamRealtimeSTTService.Settings(prompt="Marigold room", language=None)
    async with running_daemon(engine, api_key=KEY) as daemon:
        stt = pipecat_service(daemon, settings=SarvamRealtimeSTTService.Settings(language="en-IN"))
        await settings_changed_between_commands(stt, delta)
    assert engine.contexts[:2] == ["", "Marigold room"] and engine.languages[:2] == ["en", None], engine.languages


async def test_sdk_realtime_stream_parses_every_message() -> None:
    """The SDK's `connect` then `audio_input` of 100 ms chunks at microphone pace and `end`: every
    message parsed by the SDK's own models, a final per command."""
    data = pcm16(fixture_16k(FIXTURE), SAMPLE_RATE)
    async with running_daemon(api_key=KEY) as daemon:
        client = AsyncSarvamAI(api_subscription_key=KEY, environment=environment(daemon))
        connecting = client.speech_to_text_realtime_streaming.connect(
            language_code="en-IN", model="saaras:v3-realtime", endpointing="vad", sample_rate="16000"
        )
        async with connecting as socket:
            for at in range(0, len(data), PCM_FRAME_BYTES):
                chunk = base64.b64encode(data[at : at + PCM_FRAME_BYTES]).decode()
                await socket.send_realtime_audio_input(RealtimeAudioInput(audio=chunk))
                await asyncio.sleep(0.1)
            await socket.send_realtime_end(RealtimeEnd())
            received = [message async for message in socket]
    kinds = {type(message).__name__ for message in received}
    assert {"RealtimeSessionBegin", "RealtimeVadSpeechStart", "RealtimeSessionEnd"} <= kinds, kinds
    texts = [m.text for m in received if isinstance(m, RealtimeTranscriptFinal) and m.text]
    assert same_words(EXPECTED[FIXTURE], texts), texts
