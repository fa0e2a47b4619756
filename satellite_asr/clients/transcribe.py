"""`satellite-asr transcribe`: files through the same VAD, endpointing and engine as the daemon."""

from __future__ import annotations

from pathlib import Path

from satellite_asr.clients.wav import read_wav
from satellite_asr.config import Settings
from satellite_asr.engines.base import Engine
from satellite_asr.engines.factory import create_engine
from satellite_asr.events import FinalTranscript, SessionEvent
from satellite_asr.metrics import Metrics
from satellite_asr.scheduler import DecodeScheduler
from satellite_asr.session import SessionOptions
from satellite_asr.session_manager import SessionManager
from satellite_asr.vad.silero import SileroVad

CHUNK_SECONDS = 0.1


class OfflineTranscriber:
    """A daemon without servers: one session per file, fed as fast as the engine goes."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or create_engine(settings)
        self.metrics = Metrics()
        self.vad = SileroVad()
        self.scheduler = DecodeScheduler(self.engine.info.max_concurrency, self.metrics)
        self.sessions = SessionManager(
            vad=self.vad,
            engine=self.engine,
            scheduler=self.scheduler,
            metrics=self.metrics,
            max_sessions=settings.max_sessions,
            idle_timeout_s=settings.idle_timeout_s,
        )

    async def __aenter__(self) -> OfflineTranscriber:
        await self.vad.start()
        await self.engine.start()
        self.scheduler.engine_ready.set()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.close()
        await self.vad.close()

    async def transcribe(self, path: str | Path) -> list[FinalTranscript]:
        """The finals of every utterance in the file, in order."""
        audio = read_wav(path).to_16k_mono()
        finals: list[FinalTranscript] = []

        async def collect(event: SessionEvent) -> None:
            if isinstance(event, FinalTranscript):
                finals.append(event)

        async def no_connection(reason: str) -> None:
            return None

        options = SessionOptions.from_settings(self.settings, partials=False, language=self.settings.default_language)
        session = self.sessions.create("offline", options, collect, no_connection)
        step = int(CHUNK_SECONDS * 16000)
        for offset in range(0, audio.size, step):
            await session.feed(audio[offset : offset + step])
        await self.sessions.release(session, "end", finalize=True)
        return finals
