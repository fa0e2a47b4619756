"""A whole recording through one session: the same VAD endpointing as a live stream cuts it into
utterances, and their finals are its segments.

Used by the offline transcriber and the REST API. The audio is fed as fast as the engine keeps up,
without real-time pacing; the session's own back-pressure pauses feeding while
`MAX_PENDING_FINALS` utterances wait for their finals, so a long file costs memory for a few
utterances, not for all of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

from satellite_asr.audio import Audio
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript, SessionError, SessionEvent
from satellite_asr.session import Session, SessionOptions

MAX_PENDING_FINALS = 2
"""Utterances ended but not yet transcribed before feeding waits: one decoding, one queued."""


class TranscriptionFailed(Exception):
    """The recording could not be transcribed to the end: `code` and `message` say why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Progress:
    """Events of the session, queued for the reader."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[FinalTranscript | BaseException | None] = asyncio.Queue()

    async def on_event(self, event: SessionEvent) -> None:
        if isinstance(event, FinalTranscript):
            self.queue.put_nowait(event)
        elif isinstance(event, SessionError):
            self.queue.put_nowait(TranscriptionFailed(event.code, event.message))

    async def on_server_close(self, reason: str) -> None:
        """The daemon ended the session (shutdown, idle timeout): the recording is not finished."""
        self.queue.put_nowait(TranscriptionFailed(reason, f"the server ended the transcription ({reason})"))


class Recording:
    """One recording's session: `async with Recording(...) as recording`, then `recording.finals(chunks)`.

    Entering creates the session (`ServerBusy` at `max_sessions`, before anything is read or sent);
    leaving releases it, cancelling what is still in flight if the finals were not read to the end.
    `protocol` labels the session in logs and metrics.
    """

    def __init__(self, core: Core, protocol: str, options: SessionOptions) -> None:
        self._core = core
        self._protocol = protocol
        # a file, not a live stream: no pacing, and a bound of its own on the finals it waits for
        self._options = dataclasses.replace(options, max_feed_ahead_s=None, max_pending_finals=MAX_PENDING_FINALS)
        self._progress = _Progress()
        self._session: Session | None = None
        self._feeder: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Recording:
        progress = self._progress
        self._session = self._core.sessions.create(
            self._protocol, self._options, progress.on_event, progress.on_server_close
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._feeder is not None:
            self._feeder.cancel()
            await asyncio.gather(self._feeder, return_exceptions=True)
        if self._session is not None:
            await self._core.sessions.release(self._session, "stopped", finalize=False)

    async def finals(self, chunks: AsyncIterator[Audio]) -> AsyncIterator[FinalTranscript]:
        """The finals of every utterance in `chunks` (16 kHz mono float32), in order, as they are decoded.

        Raises `TranscriptionFailed` on an engine error or when the server ends the session, and
        passes on whatever `chunks` raises.
        """
        session, progress = self._session, self._progress
        assert session is not None and self._feeder is None, "use once, inside `async with`"

        async def feed() -> None:
            try:
                async for chunk in chunks:
                    await session.feed(chunk)
                await self._core.sessions.release(session, "end", finalize=True)
                progress.queue.put_nowait(None)
            except Exception as exc:
                progress.queue.put_nowait(exc)

        self._feeder = asyncio.create_task(feed(), name=f"feed-{session.id}")
        while (item := await progress.queue.get()) is not None:
            if isinstance(item, BaseException):
                try:
                    raise item
                finally:  # the error's traceback holds this frame: a cycle that would keep the file's audio
                    del item
            yield item
