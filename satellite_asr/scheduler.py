"""Who decodes when: the engine's decode slots shared by every session.

Rules: finals go before partials, and both before batch finals (uploaded files); among the
sessions waiting at one of the three, the one that has
used the engine least lately goes first (deficit-based fair sharing: seconds of final decodes,
halving every `USAGE_HALF_LIFE_S`; equal ones take turns; partials do not count, so that a
session's partials never put its final behind another's), so a client sending a file faster than real time
waits behind sessions that speak at real-time pace, yet is never starved (its usage decays while
it waits, theirs grows as they are served); a session's own decodes keep their order; a session has
at most one partial in flight; a partial asked for while another is waiting replaces it (the newest audio
wins), and runs only after a pause as long as the previous one took; so when the engine is slower
than real time, partials come less often while finals keep their place ahead of them.
Finals are never dropped; batch finals wait while live work is queued, so an upload uses only the
engine time live sessions leave (a batch decode already running is not interrupted).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from satellite_asr.audio import Audio
from satellite_asr.engines.base import EngineStream, Transcript
from satellite_asr.metrics import Metrics

FINAL, PARTIAL, BATCH = 0, 1, 2
"""Slot priorities, lower goes first: live finals, live partials, then finals of batch sessions."""
USAGE_HALF_LIFE_S = 10.0
"""How fast a session's past decode time stops counting against it in the turn order."""

EngineFailed = Callable[[Exception], None]
"""Told of every decode that raised (the core probes the engine then)."""


class DecodeScheduler:
    """Priority slots in front of the engine; `slots` = decodes the engine runs at once.

    Each decode names its `owner` (the session): waiters queue per owner, and a freed slot goes to
    the waiting owner with the least recent engine usage, one decode at a time.
    """

    def __init__(
        self, slots: int, metrics: Metrics, engine_ready: asyncio.Event, on_failure: EngineFailed | None = None
    ) -> None:
        self._free = slots
        self._turns: tuple[dict[str, deque[asyncio.Future[None]]], ...] = ({}, {}, {})
        """Per priority: each waiting owner's queue; among equal usage, owners go in this order."""
        self._usage: dict[str, tuple[float, float]] = {}
        """Owner -> (decode seconds, when counted): decays by half every `USAGE_HALF_LIFE_S`."""
        self._metrics = metrics
        self._engine_ready = engine_ready
        """Set by the core once the engine has loaded; decodes wait for it."""
        self._on_failure = on_failure

    @asynccontextmanager
    async def slot(self, owner: str, priority: int) -> AsyncIterator[None]:
        await self._engine_ready.wait()
        if self._free > 0 and not any(self._turns):
            self._free -= 1
        else:
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._turns[priority].setdefault(owner, deque()).append(granted)
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()
                else:
                    self._forget(owner, priority, granted)
                raise
        try:
            yield
        finally:
            self._release()

    def waiting(self, owner: str) -> int:
        """Decodes of `owner` waiting for a slot."""
        return sum(len(turns.get(owner, ())) for turns in self._turns)

    def _forget(self, owner: str, priority: int, waiter: asyncio.Future[None]) -> None:
        queue = self._turns[priority].get(owner)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._turns[priority][owner]

    def usage(self, owner: str) -> float:
        """`owner`'s recent final decode time in seconds, decayed."""
        seconds, counted = self._usage.get(owner, (0.0, 0.0))
        return float(seconds * 0.5 ** ((time.monotonic() - counted) / USAGE_HALF_LIFE_S))

    def _charge(self, owner: str, seconds: float) -> None:
        self._usage[owner] = (self.usage(owner) + seconds, time.monotonic())
        for other in list(self._usage):  # forget owners whose usage has faded (sessions that ended)
            if self.usage(other) < 1e-3 and not any(other in turns for turns in self._turns):
                del self._usage[other]

    def _release(self) -> None:
        """Hand the freed slot to the waiting owner with the least usage (finals first), or keep it free."""
        for turns in self._turns:
            while turns:
                owner = min(turns, key=self.usage)  # the first of equals: they take turns
                queue = turns.pop(owner)
                granted = queue.popleft()
                if queue:
                    turns[owner] = queue  # behind its equals for its next decode
                if not granted.done():
                    granted.set_result(None)
                    return
        self._free += 1

    async def final(self, owner: str, stream: EngineStream, audio: Audio, priority: int = FINAL) -> Transcript:
        """Decode a final; `priority` is `BATCH` for sessions that must not delay live ones."""
        async with self.slot(owner, priority):
            return await self._decode(owner, "final", stream.final(audio))

    async def partial(self, owner: str, stream: EngineStream, audio: Callable[[], Audio]) -> Transcript:
        """Decode a partial; `audio` is read once the slot is granted, so it is the newest audio."""
        async with self.slot(owner, PARTIAL):
            return await self._decode(owner, "partial", stream.partial(audio()))

    async def _decode(self, owner: str, kind: str, decode: Awaitable[Transcript]) -> Transcript:
        started = time.perf_counter()
        try:
            result = await decode
        except Exception as exc:
            if self._on_failure is not None:
                self._on_failure(exc)
            raise
        finally:
            if kind == "final":
                self._charge(owner, time.perf_counter() - started)
        self._metrics.decode_seconds.labels(kind).observe(time.perf_counter() - started)
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
            await asyncio.wait([task])  # not `await task`: the caller's own cancellation must not be swallowed
