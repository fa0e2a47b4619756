"""`satellite-asr transcribe`: files through the same core (VAD, endpointing, engine) as the daemon."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from satellite_asr.audio import SAMPLE_RATE, Audio
from satellite_asr.clients.wav import read_wav
from satellite_asr.config import Settings
from satellite_asr.core import Core
from satellite_asr.engines.base import Engine
from satellite_asr.events import FinalTranscript
from satellite_asr.recording import Recording
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
        """The finals of every utterance in the file, in order, cut as a live stream's would be (the
        settings' turn_detection; an upload's are always `fixed`): bench compares the streams with them."""
        return await self.transcribe_audio(read_wav(path).to_16k_mono())

    async def transcribe_audio(self, audio: Audio) -> list[FinalTranscript]:
        """`transcribe` of audio already read (16 kHz mono)."""
        step = int(CHUNK_SECONDS * SAMPLE_RATE)

        async def chunks() -> AsyncIterator[Audio]:
            for offset in range(0, audio.size, step):
                yield audio[offset : offset + step]

        settings = self.core.settings  # its language as the loaded model names it
        options = SessionOptions.from_settings(settings, partials=False, language=settings.default_language)
        async with Recording(self.core, "offline", options) as recording:
            return [final async for final in recording.finals(chunks())]
