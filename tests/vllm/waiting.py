"""Waiting on bookkeeping that offers no event to wait for (vLLM's counters and processes, a server's metrics)."""

from __future__ import annotations

import asyncio
import contextlib
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


def engine_processes() -> set[int]:
    """Ids of the vLLM engine processes started by this test process and still running."""
    import psutil  # type: ignore[import-untyped]  # comes with vllm; the vLLM tests are skipped without it

    found = set()
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):  # gone, or a zombie: not running
            if "EngineCore" in " ".join(process.cmdline()):
                found.add(process.pid)
    return found
