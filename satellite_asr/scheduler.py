"""Who decodes when: the engine's decode slots shared by every session.

Rules: finals go before partials, and both before batch finals (uploaded files); a session has at
most one partial in flight; a partial asked for while another is waiting replaces it (the newest
audio wins), and runs only after a pause as long as the previous one took; so when the engine is
slower than real time, partials come less often while finals keep their place at the head of the
queue.
Finals are never dropped; batch finals wait while live work is queued, so an upload uses only the
engine time live sessions leave (a batch decode already running is not interrupted).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

from satellite_asr.audio import Audio
from satellite_asr.engines.base import EngineStream, Transcript
from satellite_asr.metrics import Metrics

FINAL, PARTIAL, BATCH = 0, 1, 2
"""Slot priorities, lower goes first: live finals, live partials, then finals of batch sessions."""


class DecodeScheduler:
    """Priority slots in front of the engine; `slots` = decodes the engine runs at once."""

    def __init__(self, slots: int, metrics: Metrics, engine_ready: asyncio.Event) -> None:
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._metrics = metrics
        self._engine_ready = engine_ready
        """Set by the core once the engine has loaded; decodes wait for it."""

    @asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        await self._engine_ready.wait()
        if self._free > 0 and not self._waiters:
            self._free -= 1
        else:
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiters, (priority, next(self._order), granted))
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiters:
            _, _, granted = heapq.heappop(self._waiters)
            if not granted.done():
                granted.set_result(None)
                return
        self._free += 1

    async def final(self, stream: EngineStream, audio: Audio, priority: int = FINAL) -> Transcript:
        """Decode a final; `priority` is `BATCH` for sessions that must not delay live ones."""
        async with self.slot(priority):
            started = time.perf_counter()
            result = await stream.final(audio)
            self._metrics.decode_seconds.labels("final").observe(time.perf_counter() - started)
            return result

    async def partial(self, stream: EngineStream, audio: Callable[[], Audio]) -> Transcript:
        """Decode a partial; `audio` is read once the slot is granted, so it is the newest audio."""
        async with self.slot(PARTIAL):
            started = time.perf_counter()
            result = await stream.partial(audio())
            self._metrics.decode_seconds.labels("partial").observe(time.perf_counter() - started)
            return result


class PartialRequests:
    """One session's partials: at most one in flight, requests coalesce while one is pending."""

    def __init__(self, run: Callable[[], Awaitable[None]], metrics: Metrics) -> None:
        self._run_once = run
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def request(self) -> None:
        if self._task is None or self._task.done():
            self._again = False
            self._task = asyncio.create_task(self._loop(), name="partial")
        elif self._again:
            self._metrics.partials_skipped.inc()
        else:
            self._again = True

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            await self._run_once()
            if not self._again:
                return
            # Back off by as long as the last partial took (queueing included): an idle engine
            # barely delays the next one, a saturated one gets half as many partials per session.
            await asyncio.sleep(time.monotonic() - started)
            self._again = False

    async def cancel(self) -> None:
        """Stop what is queued or in flight (the utterance ended; its final supersedes any partial)."""
        task, self._task = self._task, None
        self._again = False
        if task is not None and not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
