"""`satellite-asr transcribe`: files through the same core (VAD, endpointing, engine) as the daemon."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from satellite_asr.audio_files import AudioFile, FileRefused, decoded_chunks
from satellite_asr.config import Settings
from satellite_asr.core import Core
from satellite_asr.engines.base import Engine
from satellite_asr.events import FinalTranscript
from satellite_asr.homeassistant.client import State
from satellite_asr.recording import Recording
from satellite_asr.session import SessionOptions

log = logging.getLogger(__name__)

NAMES_WAIT_S = 10.0
"""How long `transcribe` waits for Home Assistant's first answer before it goes on without the
household names: a daemon's first streams may come before the names do, but a file is transcribed
once, now, so a Home Assistant that answers within seconds should still bias it."""

MAX_SECONDS = math.inf
"""No cap on a local file's length, unlike an upload's `max_upload_audio_s`: that guards a shared
server's slots against a stranger's file, while here the person who picked the file is the one
waiting (Ctrl-C stops it), and a meeting can run past four hours."""


class OfflineTranscriber:
    """A daemon without servers: one session per file, fed as fast as the engine goes."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.core = Core(settings, engine)
        self._decoding = ThreadPoolExecutor(1, thread_name_prefix="file-decode")
        """FFmpeg decodes beside the event loop, which meanwhile hands the VAD's utterances to the engine."""

    async def __aenter__(self) -> OfflineTranscriber:
        await self.core.start()
        try:
            await self.core.wait_ready()
            await self._wait_for_names()
        except BaseException:
            await self.close()
            raise
        return self

    async def _wait_for_names(self) -> None:
        """The household names' first read when Home Assistant is configured, or its refusal; a file
        transcribed before it would be transcribed as if the home had no names, and nobody would know."""
        names = self.core.home_assistant
        if names is None:
            return
        outcomes = [
            asyncio.ensure_future(outcome)
            for outcome in (names.wait_loaded(), names.wait_for(State.AUTH_FAILED), names.wait_for(State.UNREACHABLE))
        ]
        try:
            await asyncio.wait(outcomes, timeout=NAMES_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for outcome in outcomes:
                outcome.cancel()
        if names.loads == 0:
            if names.status.state is State.STARTING:  # it answered: its names are read once it has started
                why = ": it is still starting"
            elif names.status.last_error:
                why = " (the error above)"  # the client logged it: said once
            else:
                why = f": it did not answer within {NAMES_WAIT_S:.0f} s"
            log.warning("transcribing without Home Assistant's household names%s", why)

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        try:
            await self.core.close()
        finally:
            self._decoding.shutdown()

    async def transcribe(self, path: str | Path) -> list[FinalTranscript]:
        """Every final of `finals`, once the file is done (bench compares the streams with them)."""
        return [final async for final in self.finals(path)]

    async def finals(self, path: str | Path) -> AsyncIterator[FinalTranscript]:
        """The finals of every utterance in the file, in order, as each is decoded (a long file shows
        its progress, and a decode that fails midway leaves those before it), cut as a live stream's
        would be (the settings' turn_detection; an upload's are always `fixed`).

        The file is decoded as an upload to /v1/audio/transcriptions is (`AudioFile`: any format
        FFmpeg reads, WAV included), so the product reads audio files one way. `FileRefused` naming
        the file when it cannot be read, is not audio, or stops decoding midway."""
        audio_file = await asyncio.get_running_loop().run_in_executor(self._decoding, _open, path)
        settings = self.core.settings  # its language as the loaded model names it
        options = SessionOptions.from_settings(settings, partials=False, language=settings.default_language)
        try:
            async with Recording(self.core, "offline", options) as recording:
                async for final in recording.finals(decoded_chunks(audio_file, self._decoding)):
                    yield final
        except FileRefused as exc:
            raise FileRefused(f"{path}: {exc}") from None
        finally:
            audio_file.close()


def _open(path: str | Path) -> AudioFile:
    """`AudioFile.open` of the file's bytes, read once (FFmpeg decodes from them, not from a copy)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FileRefused(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        return AudioFile.open(data, MAX_SECONDS)
    except FileRefused as exc:
        raise FileRefused(f"{path}: {exc}") from None
