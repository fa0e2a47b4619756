"""What keeps one client, or many, from taking the daemon away from Home Assistant.

Connection caps per protocol and per client address (`ConnectionLimit`), writes that give up on a
client that does not read (`write_within`), and one rate-limited warning instead of a log line per
failed accept when the process runs out of file descriptors (`AcceptErrorLog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class TooManyConnections(Exception):
    """A connection over `ConnectionLimit`'s caps; the message says which cap and the setting."""


class ConnectionLimit:
    """Open connections of one protocol: at most `total`, at most `per_address` from one address.

    `total_setting` and `per_address_setting` name the settings the caps come from, for the refusal's message.
    """

    def __init__(
        self,
        protocol: str,
        total: int,
        per_address: int,
        *,
        total_setting: str,
        per_address_setting: str = "max_connections_per_address",
    ) -> None:
        self.protocol = protocol
        self.total = total
        self.total_setting = total_setting
        self.per_address = per_address
        self.per_address_setting = per_address_setting
        self._open: Counter[str] = Counter()

    def __len__(self) -> int:
        return self._open.total()

    @contextlib.contextmanager
    def opened(self, address: str) -> Iterator[None]:
        """Counts one connection from `address` while the block runs; `TooManyConnections` when over a cap."""
        if len(self) >= self.total:
            raise TooManyConnections(
                f"the daemon has {self.total} {self.protocol} connections open, its limit "
                f"({self.total_setting}); try again later"
            )
        if self._open[address] >= self.per_address:
            raise TooManyConnections(
                f"{address or 'this client'} has {self.per_address} {self.protocol} connections open, "
                f"the limit per address ({self.per_address_setting})"
            )
        self._open[address] += 1
        try:
            yield
        finally:
            self._open[address] -= 1
            if self._open[address] <= 0:
                del self._open[address]


class SlowClient(ConnectionResetError):
    """A write did not complete within `write_timeout_s`: the client is not reading; it was dropped."""


async def write_within(write: Awaitable[_T], seconds: float, transport: asyncio.WriteTransport | None) -> _T:
    """`write`, or the connection aborted and `SlowClient` when its peer has not read it in `seconds`.

    Aborting (not closing) discards what is buffered, so nothing waits on the client any more.
    """
    try:
        return await asyncio.wait_for(write, seconds)
    except TimeoutError:
        if transport is not None:
            transport.abort()
        raise SlowClient(f"the client read nothing for {seconds:g} s (write_timeout_s); disconnected") from None


ACCEPT_FAILED = "socket.accept() out of system resource"
"""What asyncio's loop reports on each failed accept (EMFILE, ENFILE, ENOBUFS, ENOMEM)."""
ACCEPT_RETRY = "._start_serving("
"""In what asyncio's loop reports when its scheduled retry of `accept()` fails: a failed accept
schedules one retry a second later, and one tick may fail up to 100 times (CPython 3.11-3.13 do not
stop at the first), so a listening socket closed meanwhile (the daemon shutting down) gets up to a
hundred "Invalid file descriptor" tracebacks."""


class AcceptErrorLog:
    """Loop exception handler: failed accepts become one warning per `interval` seconds.

    Out of file descriptors, asyncio reports every failed `accept()` through the loop's exception
    handler, with a traceback, and retries each second; with many clients waiting that is a log
    storm. asyncio itself pauses accepting on that socket for a second and resumes, so nothing
    else is needed: this keeps the log readable, counting what it did not print. A retry that finds
    its socket closed (the daemon stopped in that second) has nothing left to do and is dropped.
    Other reports go to the handler that was installed before (or the loop's default).
    """

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        self.failed = 0
        """Failed accepts since the last warning."""
        self._last_warning: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def uninstall(self) -> None:
        if self._loop is not None and self._loop.get_exception_handler() is self:
            self._loop.set_exception_handler(self._previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if ACCEPT_RETRY in message and isinstance(context.get("exception"), (ValueError, OSError)):
            log.debug("a retry of accept() found its listening socket closed: %s", context.get("exception"))
            return
        if message != ACCEPT_FAILED:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.failed += 1
        now = time.monotonic()
        if self._last_warning is None or now - self._last_warning >= self.interval:
            log.warning(
                "cannot accept connections: %s (%d failed accepts since the last warning; accepting pauses "
                "and resumes each second). Raise the open-file limit (ulimit -n, now %d) or lower the "
                "max_*_connections settings.",
                context.get("exception"),
                self.failed,
                open_file_limit(),
            )
            self.failed = 0
            self._last_warning = now


def open_file_limit() -> int:
    """The process's soft limit on open file descriptors (sockets included)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
