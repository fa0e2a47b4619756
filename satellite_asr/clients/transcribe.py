"""`satellite-asr transcribe`: files through the same core (VAD, endpointing, engine) as the daemon."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.clients.wav import read_wav
from satellite_asr.config import Settings
from satellite_asr.core import Core
from satellite_asr.engines.base import Engine
from satellite_asr.events import FinalTranscript, SessionEvent
from satellite_asr.session import SessionOptions

CHUNK_SECONDS = 0.1


class OfflineTranscriber:
    """A daemon without servers: one session per file, fed as fast as the engine goes."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.core = Core(settings, engine)

    async def __aenter__(self) -> OfflineTranscriber:
        await self.core.start()
        try:
            await self.core.wait_ready()
        except BaseException:
            await self.core.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.core.close()

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
        options = dataclasses.replace(options, max_feed_ahead_s=None)  # a file, not a live stream: no pacing
        session = self.core.sessions.create("offline", options, collect, no_connection)
        step = int(CHUNK_SECONDS * SAMPLE_RATE)
        for offset in range(0, audio.size, step):
            await session.feed(audio[offset : offset + step])
        await self.core.sessions.release(session, "end", finalize=True)
        return finals
