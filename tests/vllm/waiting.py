"""Waiting on bookkeeping that offers no event to wait for (vLLM's counters, a server's metrics)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def until(check: Callable[[], bool | Awaitable[bool]], interval_s: float = 0.01) -> None:
    """Poll `check` until it is true; the test's timeout bounds the wait."""
    while True:
        done = check()
        if inspect.isawaitable(done):
            done = await done
        if done:
            return
        await asyncio.sleep(interval_s)
