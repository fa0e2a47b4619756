"""Test doubles for things outside the product's own path: a crashing engine, one that breaks
until restarted, one whose finals wait for the test, a slow-loading one, one that hears no words in
the first utterance (what a model makes of a cough), one whose finals report scores the test
knows; a peer Wyoming server that needs Home Assistant's VAD to end its audio; and a microphone, and
Home Assistant, whose audio stalls on the way to the daemon until the test lets it on.

The engines wrap the real whisper engine, so everything but the injected fault is the product's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

from wyoming import asr as wyoming_asr
from wyoming.audio import AudioChunk, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.server import AsyncEventHandler, AsyncTcpServer

from satellite_asr.audio import Audio
from satellite_asr.clients.audio_source import BLOCK_SECONDS, WavSource
from satellite_asr.engines.base import EngineError, EngineStream, StreamOptions, Transcript
from satellite_asr.engines.whisper import WhisperEngine


class _CrashingStream(EngineStream):
    def __init__(self, inner: EngineStream, error: type[Exception]) -> None:
        self._inner = inner
        self._error = error

    async def partial(self, audio: Audio) -> Transcript:
        return await self._inner.partial(audio)

    async def final(self, audio: Audio) -> Transcript:
        raise self._error("injected failure (CrashingEngineDouble)")


class CrashingEngineDouble(WhisperEngine):
    """Real whisper, except that finals of sessions whose context contains 'crash' raise `error`
    (an `EngineError`, or anything else: a bug, a CUDA error)."""

    def __init__(self, error: type[Exception] = EngineError) -> None:
        super().__init__()
        self._error = error

    def open_stream(self, options: StreamOptions) -> EngineStream:
        stream = super().open_stream(options)
        return _CrashingStream(stream, self._error) if "crash" in options.context else stream


class BreakableEngineDouble(WhisperEngine):
    """Real whisper that the test breaks: while `broken`, every decode raises what a CUDA fault
    raises (a RuntimeError). A restart (`start` again after `close`) waits for `restart_allowed`,
    then comes back mended."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False
        self.starts = 0
        self.restart_allowed = asyncio.Event()

    async def start(self) -> None:
        self.starts += 1
        if self.starts > 1:
            await self.restart_allowed.wait()
            self.broken = False
        await super().start()

    async def decode(self, audio: Audio, options: StreamOptions, *, final: bool) -> Transcript:
        if self.broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (BreakableEngineDouble)")
        return await super().decode(audio, options, final=final)


class UnreachableEngineDouble(WhisperEngine):
    """Real whisper standing in for an engine whose model lives elsewhere (remote vLLM servers): it
    is never restarted, and while `reachable` is False it says it is not ready and every decode
    fails, as when no server answers."""

    restartable = False

    def __init__(self) -> None:
        super().__init__()
        self.reachable = True

    @property
    def ready(self) -> bool:
        return self._ready and self.reachable

    async def decode(self, audio: Audio, options: StreamOptions, *, final: bool) -> Transcript:
        if not self.reachable:
            raise EngineError("no vLLM server answered (UnreachableEngineDouble)")
        return await super().decode(audio, options, final=final)


class FailsOnAWordEngineDouble(WhisperEngine):
    """Real whisper whose decodes fail, as a remote server's that went down, once they hear `word`:
    a failure at a known utterance of a file, whatever decodes came before it."""

    def __init__(self, word: str) -> None:
        super().__init__()
        self.word = word

    async def decode(self, audio: Audio, options: StreamOptions, *, final: bool) -> Transcript:
        heard = await super().decode(audio, options, final=final)
        if self.word in heard.text.lower():
            raise EngineError(f"the server went away (FailsOnAWordEngineDouble, on {self.word!r})")
        return heard


class GatedEngineDouble(WhisperEngine):
    """Real whisper whose final decodes are logged by their session's context, in the order the
    scheduler starts them, and wait for `gate` (so that the test can let a queue build up)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.finals: list[str] = []

    async def decode(self, audio: Audio, options: StreamOptions, *, final: bool) -> Transcript:
        if final:
            self.finals.append(options.context)
            await self.gate.wait()
        return await super().decode(audio, options, final=final)


class FirstFinalGatedEngineDouble(GatedEngineDouble):
    """Real whisper with two decodes at once, whose first final waits for `gate`: the next
    utterance's partials come while the turn before has not ended yet."""

    def __init__(self) -> None:
        WhisperEngine.__init__(self, concurrency=2)
        self.gate = asyncio.Event()
        self.finals: list[str] = []

    async def decode(self, audio: Audio, options: StreamOptions, *, final: bool) -> Transcript:
        if final and not self.gate.is_set():
            self.finals.append(options.context)
            await self.gate.wait()
        return await WhisperEngine.decode(self, audio, options, final=final)


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


class _FinalHearsNothingStream(EngineStream):
    def __init__(self, inner: EngineStream) -> None:
        self._inner = inner

    async def partial(self, audio: Audio) -> Transcript:
        return await self._inner.partial(audio)

    async def final(self, audio: Audio) -> Transcript:
        return Transcript("")


class FirstFinalIsEmptyEngineDouble(WhisperEngine):
    """Real whisper, except that the first utterance's final has no words though its partials had
    some (a mumble the final decode drops)."""

    def __init__(self) -> None:
        super().__init__()
        self.streams = 0

    def open_stream(self, options: StreamOptions) -> EngineStream:
        self.streams += 1
        inner = super().open_stream(options)
        return _FinalHearsNothingStream(inner) if self.streams == 1 else inner


class _ChangesItsMindStream(EngineStream):
    def __init__(self, inner: EngineStream) -> None:
        self._inner = inner

    async def partial(self, audio: Audio) -> Transcript:
        await self._inner.partial(audio)  # the real decode's time, so partials come at their real pace
        return Transcript("lights on in the hall")

    async def final(self, audio: Audio) -> Transcript:
        return await self._inner.final(audio)


class ChangesItsMindEngineDouble(WhisperEngine):
    """Real whisper finals, but partials that always read "lights on in the hall": the streamed
    stable text and the final disagree, as they rarely do when a fresh decode hears it better."""

    def open_stream(self, options: StreamOptions) -> EngineStream:
        return _ChangesItsMindStream(super().open_stream(options))


class ContextRecordingEngineDouble(WhisperEngine):
    """Real whisper that records the biasing context, names and language of every stream opened:
    what reached the engine."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[str] = []
        self.names: list[tuple[str, ...]] = []
        self.languages: list[str | None] = []

    def open_stream(self, options: StreamOptions) -> EngineStream:
        self.contexts.append(options.context)
        self.names.append(options.names)
        self.languages.append(options.language)
        return super().open_stream(options)


class _HeardAsGermanStream(EngineStream):
    def __init__(self, inner: EngineStream, mean_logprob: float) -> None:
        self._inner = inner
        self._mean_logprob = mean_logprob

    async def partial(self, audio: Audio) -> Transcript:
        return await self._inner.partial(audio)

    async def final(self, audio: Audio) -> Transcript:
        heard = await self._inner.final(audio)
        return dataclasses.replace(heard, language="de", mean_logprob=self._mean_logprob)


class HeardAsGermanEngineDouble(WhisperEngine):
    """Real whisper text, reported as German with the given confidence: for a language other than
    English the turn detector has only the text's punctuation and the engine's confidence."""

    def __init__(self, mean_logprob: float) -> None:
        super().__init__()
        self._mean_logprob = mean_logprob

    def open_stream(self, options: StreamOptions) -> EngineStream:
        return _HeardAsGermanStream(super().open_stream(options), self._mean_logprob)


class SwitchesLanguageEngineDouble(WhisperEngine):
    """Real whisper text, each utterance reported in the next of `languages` in turn: a
    multilingual model hearing a conversation that switches language between utterances."""

    def __init__(self, *languages: str) -> None:
        super().__init__()
        self._reported = itertools.cycle(languages)

    def open_stream(self, options: StreamOptions) -> EngineStream:
        return _ReportedInStream(super().open_stream(options), next(self._reported))


class _ReportedInStream(EngineStream):
    def __init__(self, inner: EngineStream, language: str) -> None:
        self._inner = inner
        self._language = language

    async def partial(self, audio: Audio) -> Transcript:
        return await self._inner.partial(audio)

    async def final(self, audio: Audio) -> Transcript:
        return dataclasses.replace(await self._inner.final(audio), language=self._language)


class _CountsAudioUntilStop(AsyncEventHandler):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self._bytes = 0

    async def handle_event(self, event: Event) -> bool:
        if AudioChunk.is_type(event.type):
            self._bytes += len(AudioChunk.from_event(event).audio)
        elif AudioStop.is_type(event.type):
            await self.write_event(wyoming_asr.Transcript(text=f"{self._bytes / 2 / 16000:.2f}").event())
            return False
        return True


@contextlib.asynccontextmanager
async def wyoming_server_without_endpointing_double(port: int) -> AsyncIterator[None]:
    """A Wyoming speech-to-text server that, like wyoming-faster-whisper by default, answers only at
    `audio-stop`; its transcript is the seconds of audio it was sent, counted as 16 kHz 16-bit mono
    (what the tests send; `audio-start` is not read)."""
    server = AsyncTcpServer("127.0.0.1", port)
    await server.start(_CountsAudioUntilStop)
    try:
        yield
    finally:
        await server.stop()


class _ScoresEachFinalStream(EngineStream):
    def __init__(self, inner: EngineStream, engine: ScoresEachFinalEngineDouble) -> None:
        self._inner = inner
        self._engine = engine

    async def partial(self, audio: Audio) -> Transcript:
        return await self._inner.partial(audio)

    async def final(self, audio: Audio) -> Transcript:
        return self._engine.scored(await self._inner.final(audio))


class ScoresEachFinalEngineDouble(WhisperEngine):
    """Real whisper text whose final decodes each report scores of their own, so a test can tell which
    decode's reached the client: the nth (from 1) a mean log-probability of -n/10 over 3 tokens and
    a no-speech probability of n/100; or none at all (`reports=False`, as Qwen3-ASR). Every final
    decode that finished is kept in `finals`, in order."""

    def __init__(self, *, reports: bool = True) -> None:
        super().__init__()
        self._reports = reports
        self.finals: list[Transcript] = []

    def open_stream(self, options: StreamOptions) -> EngineStream:
        return _ScoresEachFinalStream(super().open_stream(options), self)

    def scored(self, heard: Transcript) -> Transcript:
        n = len(self.finals) + 1
        if self._reports:
            heard = dataclasses.replace(heard, tokens=3, mean_logprob=-n / 10, no_speech_prob=n / 100)
        else:
            heard = dataclasses.replace(heard, mean_logprob=None, no_speech_prob=None)
        self.finals.append(heard)
        return heard


class StallingWavSourceDouble(WavSource):
    """A file played at microphone pace whose audio stops reaching the daemon at each of `stalls_s`
    until `resume(k)` returns for the k-th stall, as over a network that stalls, then goes on at
    microphone pace. The daemon counts silence in samples, so a stall changes nothing it decides: it
    lets a test wait for a verdict or a partial that a busy machine decodes late where a quick one
    has it in time."""

    def __init__(self, path: str | Path, stalls_s: Sequence[float], resume: Callable[[int], Awaitable[None]]) -> None:
        super().__init__(path)
        self.stalls_at = [round(stall_s * self.sample_rate) * 2 for stall_s in stalls_s]
        if not all(0 < stall_at < len(self.pcm) for stall_at in self.stalls_at):
            raise ValueError(f"{path}: a stall in {list(stalls_s)} s is outside the file")
        self.resume = resume

    async def blocks(self) -> AsyncGenerator[bytes, None]:
        block_bytes = int(BLOCK_SECONDS * self.sample_rate) * 2
        cuts = sorted({*range(0, len(self.pcm), block_bytes), *self.stalls_at, len(self.pcm)})
        origin = time.monotonic()
        for start, end in itertools.pairwise(cuts):
            await asyncio.sleep(max(0.0, origin + end / 2 / self.sample_rate - time.monotonic()))
            yield self.pcm[start:end]
            if end in self.stalls_at:
                stalled = time.monotonic()
                await self.resume(self.stalls_at.index(end))
                origin += time.monotonic() - stalled


class StallingWyomingClientDouble(AsyncTcpClient):
    """Home Assistant's end of a Wyoming connection whose audio stalls on the way to the daemon before
    the chunk that would take it past `stall_s`, until `resume(self)` returns (then the chunks that
    piled up go at once); `kinds_read` holds the types of the events read so far."""

    def __init__(
        self,
        host: str,
        port: int,
        stall_s: float,
        resume: Callable[[StallingWyomingClientDouble], Awaitable[None]],
    ) -> None:
        super().__init__(host, port)
        self.stall_s = stall_s
        self.resume = resume
        self.kinds_read: set[str] = set()
        self._sent_s = 0.0
        self._stalled = False

    async def write_event(self, event: Event) -> None:
        if AudioChunk.is_type(event.type) and not self._stalled:
            self._sent_s += AudioChunk.from_event(event).seconds
            if self._sent_s > self.stall_s:
                self._stalled = True
                await self.resume(self)
        await super().write_event(event)

    async def read_event(self) -> Event | None:
        event = await super().read_event()
        if event is not None:
            self.kinds_read.add(event.type)
        return event
