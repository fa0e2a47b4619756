"""Pipecat's OpenAI speech-to-text services against the real daemon (real Silero, real tiny.en).

Each test runs a Pipecat pipeline as a bot would: microphone-paced 16 kHz audio frames into Pipecat's
own Silero VAD processor, then the service pointed at the daemon on 127.0.0.1. `OpenAISTTService`
uploads each segment its VAD cut to `/v1/audio/transcriptions`; `OpenAIRealtimeSTTService` streams
to `/v1/realtime` and commits at each of its VAD's stops (turn detection off, Pipecat's default) or
lets the daemon's VAD end the items (`turn_detection` server_vad).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import pytest
from openai import DefaultAsyncHttpxClient
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    STTUpdateSettingsFrame,
    TranscriptionFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.openai.stt import OpenAIRealtimeSTTService, OpenAISTTService
from pipecat.services.stt_service import STTService
from pipecat.transcriptions.language import Language
from pipecat.workers.runner import WorkerRunner

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble
from tests.helpers import EXPECTED, fixture_16k, pcm16, running_daemon, same_words

pytestmark = pytest.mark.timeout(180)

FRAME_S = 0.02
"""What a Pipecat input transport delivers at a time: 20 ms of audio."""
TRAILING_SILENCE_S = 1.0
"""Silence after the fixture, so Pipecat's VAD hears the last command end."""
KEY = "pipecat-test-key"


class ServiceFrames(BaseObserver):
    """What one processor pushed (either direction): its transcripts and errors, in order."""

    def __init__(self, service: FrameProcessor) -> None:
        super().__init__()
        self.service = service
        self.frames: list[Frame] = []
        self.changed = asyncio.Event()

    async def on_push_frame(self, data: FramePushed) -> None:
        if data.source is self.service and isinstance(
            data.frame, (TranscriptionFrame, InterimTranscriptionFrame, ErrorFrame)
        ):
            self.frames.append(data.frame)
            self.changed.set()

    @property
    def finals(self) -> list[str]:
        return [frame.text for frame in self.frames if isinstance(frame, TranscriptionFrame)]

    @property
    def interims(self) -> list[str]:
        return [frame.text for frame in self.frames if isinstance(frame, InterimTranscriptionFrame)]

    @property
    def errors(self) -> list[str]:
        return [frame.error for frame in self.frames if isinstance(frame, ErrorFrame)]

    async def wait_for(self, finals: int = 0, errors: int = 0) -> None:
        """Until `finals` transcripts or `errors` errors have come (60 s at most: a hang fails); an
        error while waiting for transcripts ends the wait, so the test fails on its text."""
        async with asyncio.timeout(60):
            while not ((finals and len(self.finals) >= finals) or len(self.errors) >= max(errors, 1)):
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def running_pipeline(
    stt: STTService, rate: int = SAMPLE_RATE
) -> AsyncIterator[tuple[PipelineWorker, ServiceFrames]]:
    """Pipecat's Silero VAD then `stt`, running on `rate` Hz input audio; ended with an EndFrame
    (queued segments finish)."""
    frames = ServiceFrames(stt)
    worker = PipelineWorker(
        Pipeline([VADProcessor(vad_analyzer=SileroVADAnalyzer()), stt]),
        params=PipelineParams(audio_in_sample_rate=rate),
        observers=[frames],
        cancel_on_idle_timeout=False,
        enable_rtvi=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")  # type: ignore[untyped-decorator]
    async def on_started(_worker: PipelineWorker, _frame: Frame) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(60):
            await started.wait()
        yield worker, frames
        await worker.queue_frame(EndFrame())
        async with asyncio.timeout(60):
            await running
    finally:
        if not running.done():
            await worker.cancel()
            await running


async def speak(worker: PipelineWorker, fixture: str, rate: int = SAMPLE_RATE) -> None:
    """The fixture, then silence, as 20 ms input frames of `rate` Hz audio at microphone pace."""
    audio = pcm16(fixture_16k(fixture), rate) + bytes(int(TRAILING_SILENCE_S * rate) * 2)
    step = int(FRAME_S * rate) * 2
    for offset in range(0, len(audio), step):
        await worker.queue_frame(InputAudioRawFrame(audio[offset : offset + step], rate, 1))
        await asyncio.sleep(FRAME_S)


async def across_a_pause(stt: STTService, first: str, then: str, pause_s: float) -> ServiceFrames:
    """`first` spoken through `stt`, `pause_s` of silence at microphone pace (past the daemon's idle
    timeout, say), then `then`, until a transcript per command of both came (errors meanwhile do not
    end the wait); the frames seen."""
    async with running_pipeline(stt) as (worker, frames):
        await speak(worker, first)
        silence = bytes(int(FRAME_S * SAMPLE_RATE) * 2)
        for _ in range(round(pause_s / FRAME_S)):
            await worker.queue_frame(InputAudioRawFrame(silence, SAMPLE_RATE, 1))
            await asyncio.sleep(FRAME_S)
        await speak(worker, then)
        async with asyncio.timeout(60):
            while len(frames.finals) < len(EXPECTED[first]) + len(EXPECTED[then]):
                frames.changed.clear()
                await frames.changed.wait()
    return frames


async def settings_changed_between_commands(stt: STTService, delta: Any) -> ServiceFrames:
    """A command spoken through `stt`, then once its transcript came an `STTUpdateSettingsFrame` of
    `delta` (a settings change mid-call), then the command again, until its transcript came; the
    frames seen, checked to hold no error and the command's words twice."""
    async with running_pipeline(stt) as (worker, frames):
        await speak(worker, "lights_on.wav")
        await frames.wait_for(finals=1)
        await worker.queue_frame(STTUpdateSettingsFrame(delta=delta))
        await speak(worker, "lights_on.wav")
        await frames.wait_for(finals=2)
    assert not frames.errors, frames.errors
    assert same_words(EXPECTED["lights_on.wav"] * 2, frames.finals), frames.finals
    return frames


async def refused(stt: STTService) -> ServiceFrames:
    """`stt` in a pipeline until its first error (a wrong key's, say), checked to hold no final."""
    async with running_pipeline(stt) as (_worker, frames):
        await frames.wait_for(errors=1)
    assert frames.finals == [], frames.finals
    return frames


async def transcribed(stt: STTService, fixture: str, rate: int = SAMPLE_RATE) -> ServiceFrames:
    """The fixture spoken through `stt` behind Pipecat's VAD until a transcript per command came,
    checked to hold no error and the fixture's words; the frames seen, for each test's own checks."""
    async with running_pipeline(stt, rate) as (worker, frames):
        await speak(worker, fixture, rate)
        await frames.wait_for(finals=len(EXPECTED[fixture]))
    assert frames.errors == []
    assert same_words(EXPECTED[fixture], frames.finals), frames.finals
    return frames


async def first_error(stt: STTService) -> ServiceFrames:
    """`stt` started in a pipeline until it pushes an error frame (a refused connection, say); the
    frames seen."""
    async with running_pipeline(stt) as (_worker, frames):
        await frames.wait_for(errors=1)
    return frames


@asynccontextmanager
async def rest_service(daemon: Daemon, api_key: str = "unused", **settings: Any) -> AsyncIterator[OpenAISTTService]:
    """The REST service, its `settings` over English and gpt-4o-transcribe, on an HTTP client the
    test closes (Pipecat never closes the one it would make itself)."""
    async with DefaultAsyncHttpxClient() as http:
        yield OpenAISTTService(
            api_key=api_key,
            base_url=f"http://127.0.0.1:{daemon.http_port}/v1",
            http_client=http,
            settings=OpenAISTTService.Settings(**{"model": "gpt-4o-transcribe", "language": Language.EN, **settings}),
        )


def realtime_service(
    daemon: Daemon, api_key: str = "unused", turn_detection: dict[str, Any] | Literal[False] = False, **settings: Any
) -> OpenAIRealtimeSTTService:
    """The Realtime service, its `settings` over English and gpt-4o-transcribe; `turn_detection`
    False (Pipecat's default) commits at each stop of Pipecat's VAD."""
    return OpenAIRealtimeSTTService(
        api_key=api_key,
        base_url=f"ws://127.0.0.1:{daemon.http_port}/v1/realtime",
        turn_detection=turn_detection,
        settings=OpenAIRealtimeSTTService.Settings(
            **{"model": "gpt-4o-transcribe", "language": Language.EN, **settings}
        ),
    )


async def test_openai_stt_service_transcribes_each_segment_its_vad_cut() -> None:
    """With the daemon's API key, as a deployment that requires one is used."""
    async with (
        running_daemon(api_key=KEY) as daemon,
        rest_service(daemon, api_key=KEY) as stt,
    ):
        await transcribed(stt, "three_commands.wav")


async def test_realtime_stt_service_commits_at_its_vads_stops() -> None:
    async with running_daemon() as daemon:
        await transcribed(realtime_service(daemon), "three_commands.wav")


async def test_realtime_stt_service_with_the_daemons_turn_detection() -> None:
    turn = {"type": "server_vad", "silence_duration_ms": 500}
    async with running_daemon() as daemon:
        frames = await transcribed(realtime_service(daemon, turn_detection=turn), "three_commands.wav")
    assert frames.interims, "the daemon's deltas reach Pipecat as interim transcripts"


async def test_openai_stt_service_keywords_and_prompt_reach_the_engine() -> None:
    engine = ContextRecordingEngineDouble()
    async with (
        running_daemon(engine) as daemon,
        rest_service(daemon, prompt="Kowalski", keywords=["Zigbee", "kitchen lights"]) as stt,
    ):
        await transcribed(stt, "lights_on.wav")
    assert engine.contexts == ["Kowalski. Zigbee, kitchen lights"] and engine.names == [("Zigbee", "kitchen lights")]


async def test_realtime_stt_service_prompt_reaches_the_engine() -> None:
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine) as daemon:
        await transcribed(realtime_service(daemon, prompt="Kowalski, Zigbee"), "lights_on.wav")
    assert engine.contexts == ["Kowalski, Zigbee"]


@pytest.mark.parametrize(
    ("daemon_settings", "service_settings", "reason"),
    [
        ({"api_key": KEY}, {"api_key": "wrong"}, "401 - the API key is not valid"),
        ({}, {"language": Language.DE}, "'de' is not one of the languages of this engine (en)"),
    ],
    ids=["wrong key", "a language the engine lacks"],
)
async def test_openai_stt_service_gets_an_error_frame_with_the_daemons_reason(
    daemon_settings: dict[str, Any], service_settings: dict[str, Any], reason: str
) -> None:
    async with (
        running_daemon(**daemon_settings) as daemon,
        rest_service(daemon, **service_settings) as stt,
        running_pipeline(stt) as (worker, frames),
    ):
        await speak(worker, "lights_on.wav")
        await frames.wait_for(errors=1)
    assert frames.finals == []
    assert reason in frames.errors[0]


async def test_realtime_stt_service_with_a_wrong_key_gets_an_error_frame() -> None:
    async with (
        running_daemon(api_key=KEY) as daemon,
        running_pipeline(realtime_service(daemon, api_key="wrong")) as (_worker, frames),
    ):
        await frames.wait_for(errors=1)
    assert frames.finals == []
    assert "401" in frames.errors[0]


async def test_realtime_stt_service_in_a_language_the_engine_lacks_gets_an_error_frame_naming_it() -> None:
    async with (
        running_daemon() as daemon,
        running_pipeline(realtime_service(daemon, language=Language.DE)) as (_worker, frames),
    ):
        await frames.wait_for(errors=1)
    assert "[unsupported_language]" in frames.errors[0]
    assert "'de' is not one of the languages of this engine (en)" in frames.errors[0]
