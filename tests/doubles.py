"""Test doubles for things outside the product's own path: a crashing engine, a slow-loading one,
one that hears no words in the first utterance (what a model makes of a cough).

Both wrap the real whisper engine, so everything but the injected fault is the product's code.
"""

from __future__ import annotations

import asyncio

from satellite_asr.audio import Audio
from satellite_asr.engines.base import EngineError, EngineStream, StreamOptions, Transcript
from satellite_asr.engines.whisper import WhisperEngine


class _CrashingStream(EngineStream):
    def __init__(self, inner: EngineStream) -> None:
        self._inner = inner

    async def partial(self, audio: Audio) -> Transcript:
        return await self._inner.partial(audio)

    async def final(self, audio: Audio) -> Transcript:
        raise EngineError("injected failure (CrashingEngineDouble)")


class CrashingEngineDouble(WhisperEngine):
    """Real whisper, except that finals of sessions whose context contains 'crash' fail."""

    def open_stream(self, options: StreamOptions) -> EngineStream:
        stream = super().open_stream(options)
        return _CrashingStream(stream) if "crash" in options.context else stream


class SlowLoadingEngineDouble(WhisperEngine):
    """Real whisper whose loading waits until the test sets `release`."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def start(self) -> None:
        await self.release.wait()
        await super().start()


class _HearsNothingStream(EngineStream):
    async def partial(self, audio: Audio) -> Transcript:
        return Transcript("")

    async def final(self, audio: Audio) -> Transcript:
        return Transcript("")


class FirstUtteranceIsNoiseEngineDouble(WhisperEngine):
    """Real whisper, except that the first utterance decodes to no words (as a cough or a door would)."""

    def __init__(self) -> None:
        super().__init__()
        self.streams = 0

    def open_stream(self, options: StreamOptions) -> EngineStream:
        self.streams += 1
        return _HearsNothingStream() if self.streams == 1 else super().open_stream(options)


class ContextRecordingEngineDouble(WhisperEngine):
    """Real whisper that records the biasing context of every stream opened: what reached the engine."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[str] = []

    def open_stream(self, options: StreamOptions) -> EngineStream:
        self.contexts.append(options.context)
        return super().open_stream(options)
