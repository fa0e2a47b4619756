"""A whole recording through one session: the same VAD endpointing as a live stream cuts it into
utterances, and their finals are its segments.

Used by the offline transcriber and the REST API. The audio is fed as fast as the engine keeps up:
feeding pauses while `MAX_PENDING_FINALS` utterances wait for their finals, so a long file costs
memory for a few utterances, not for all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from satellite_asr.audio import Audio
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript, SessionError, SessionEvent, SpeechStopped
from satellite_asr.session import SessionOptions

MAX_PENDING_FINALS = 2
"""Utterances ended but not yet transcribed before feeding waits: one decoding, one queued."""


class TranscriptionFailed(Exception):
    """The recording could not be transcribed to the end: `code` and `message` say why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Progress:
    """Events of the session, queued for the reader, and how many finals are still owed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[FinalTranscript | BaseException | None] = asyncio.Queue()
        self.owed = 0
        self.final_arrived = asyncio.Event()

    async def on_event(self, event: SessionEvent) -> None:
        if isinstance(event, SpeechStopped):
            self.owed += 1
        elif isinstance(event, FinalTranscript):
            self.owed -= 1
            self.final_arrived.set()
            self.queue.put_nowait(event)
        elif isinstance(event, SessionError):
            self.queue.put_nowait(TranscriptionFailed(event.code, event.message))

    async def on_server_close(self, reason: str) -> None:
        """The daemon ended the session (shutdown, idle timeout): the recording is not finished."""
        self.queue.put_nowait(TranscriptionFailed(reason, f"the server ended the transcription ({reason})"))

    async def room_to_feed(self) -> None:
        while self.owed >= MAX_PENDING_FINALS:
            self.final_arrived.clear()
            await self.final_arrived.wait()


async def transcribe_recording(
    core: Core, protocol: str, options: SessionOptions, chunks: AsyncIterator[Audio]
) -> AsyncIterator[FinalTranscript]:
    """The finals of every utterance in `chunks` (16 kHz mono float32), in order, as they are decoded.

    Raises `TranscriptionFailed` on an engine error or when the server ends the session, and passes
    on whatever `chunks` raises; the session is released in every case. `protocol` labels metrics.
    """
    progress = _Progress()
    session = core.sessions.create(protocol, options, progress.on_event, progress.on_server_close)

    async def feed() -> None:
        try:
            async for chunk in chunks:
                await progress.room_to_feed()
                await session.feed(chunk)
            await core.sessions.release(session, "end", finalize=True)
            progress.queue.put_nowait(None)
        except Exception as exc:
            progress.queue.put_nowait(exc)

    feeder = asyncio.create_task(feed(), name=f"feed-{session.id}")
    try:
        while (item := await progress.queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await core.sessions.release(session, "stopped", finalize=False)
