"""What keeps one client, or many, from taking the daemon away from Home Assistant.

Connection caps per protocol and per client address (`ConnectionLimit`), every TCP connection to
the HTTP port counted from accept to close (`CountedConnection`), writes that give up on a client
that does not read (`write_within`), and one rate-limited warning instead of a log line per refused
connection or per failed accept when the process runs out of file descriptors (`AcceptErrorLog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import ssl
import time
from asyncio.constants import ACCEPT_RETRY_DELAY
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
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
        self.take(address)
        try:
            yield
        finally:
            self.give_back(address)

    def take(self, address: str) -> None:
        """Counts one connection from `address`, or `TooManyConnections` when over a cap; `give_back` ends it."""
        self.check(address)
        self._open[address] += 1

    def check(self, address: str) -> None:
        """`TooManyConnections` when one more connection from `address` would be over a cap; counts nothing."""
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

    def give_back(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]


WARNING_INTERVAL_S = 30.0
"""How often a `RateLimitedWarning` may repeat."""


class RateLimitedWarning:
    """A warning that repeats at most once per `WARNING_INTERVAL_S` and says how often it was held
    back: what any client can cause at will must not become a log line each time."""

    def __init__(self) -> None:
        self._count = 0
        """Occurrences since the last warning."""
        self._last_warning: float | None = None

    def occurred(self) -> int | None:
        """Counts one occurrence; when a warning is due, returns how many there were since the last one."""
        self._count += 1
        now = time.monotonic()
        if self._last_warning is not None and now - self._last_warning < WARNING_INTERVAL_S:
            return None
        count, self._count, self._last_warning = self._count, 0, now
        return count


class CountedConnection(asyncio.Protocol):
    """One TCP connection to an HTTP server, counted against `limit` from accept to close.

    aiohttp counts nothing below a request, so connections that stay silent were limited by nothing
    but file descriptors, which Wyoming shares. Over the limit the connection is answered 503 and
    closed before anything is read; otherwise `make_handler`'s protocol (aiohttp's) gets everything.
    With `tls` the handshake is made here, after the count (within `handshake_timeout_s`): asyncio's
    own TLS server tells a protocol nothing before a handshake completes, so connections that never
    finished one were not counted.
    """

    def __init__(
        self,
        make_handler: Callable[[], asyncio.Protocol],
        limit: ConnectionLimit,
        refused: Callable[[str], None],
        tls: ssl.SSLContext | None,
        handshake_timeout_s: float,
        handshakes: set[asyncio.Task[None]],
    ) -> None:
        self._make_handler = make_handler
        self._limit = limit
        self._refused = refused
        """Told why, for each connection refused."""
        self._tls = tls
        self._handshake_timeout_s = handshake_timeout_s
        self._handshakes = handshakes
        """The handshakes in progress on the server, for its shutdown to cancel."""
        self._handshake: asyncio.Task[None] | None = None
        self._early: list[bytes] = []
        """What came after the handshake and before the handler was made (asyncio reads on at once)."""
        self._handler: asyncio.Protocol | None = None
        self._counted = False
        self._kept = 0
        """Duplicates of the socket keeping the connection open past its transport (`kept`)."""
        self._lost = False
        self._address = ""
        self.last_received = 0.0
        """When data last arrived (`time.monotonic()`): a WebSocket message may be arriving
        (`ReadAhead.arriving`, through the module's `last_received`)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        try:
            self._limit.take(self._address)
        except TooManyConnections as exc:
            self._refuse(transport, str(exc))
            return
        self._counted = True
        if self._tls is None:
            self._begin(transport)
        else:
            assert isinstance(transport, asyncio.WriteTransport), "a TCP server's connection"
            self._handshake = asyncio.create_task(self._start_tls(transport, self._tls))
            self._handshakes.add(self._handshake)
            self._handshake.add_done_callback(self._handshakes.discard)

    async def _start_tls(self, transport: asyncio.WriteTransport, tls: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        secure: asyncio.Transport | None = None
        try:
            secure = await loop.start_tls(
                transport, self, tls, server_side=True, ssl_handshake_timeout=self._handshake_timeout_s
            )
        except OSError as exc:  # asyncio has closed the connection
            log.debug("TLS handshake from %s failed: %s", self._address, exc)
        finally:
            if secure is None:  # failed, cancelled (shutdown) or lost as it ended; asyncio has closed the
                self._give_back()  # connection, and passes on no loss before the handshake is done
        if secure is None:
            return
        handler = self._begin(secure)
        for data in self._early:
            handler.data_received(data)
        self._early.clear()

    def _begin(self, transport: asyncio.BaseTransport) -> asyncio.Protocol:
        self._handler = handler = self._make_handler()
        handler.connection_made(transport)
        return handler

    def _refuse(self, transport: asyncio.BaseTransport, reason: str) -> None:
        """A plain-HTTP 503 saying why; a TLS client, which could not read it, is only closed."""
        body = json.dumps({"type": "error", "code": "too_many_connections", "message": reason}).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 5\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        if self._tls is None and isinstance(transport, asyncio.WriteTransport):
            transport.write(head.encode() + body)
        transport.close()
        self._refused(reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if not self._kept:
            self._give_back()
        if self._handler is not None:
            self._handler.connection_lost(exc)

    @contextlib.contextmanager
    def kept(self) -> Iterator[None]:
        """The connection stays counted while the block runs, its transport closed or not: a duplicate
        of its socket keeps it open (a WebSocket's lingering close)."""
        self._kept += 1
        try:
            yield
        finally:
            self._kept -= 1
            if self._lost and not self._kept:
                self._give_back()

    def _give_back(self) -> None:
        """Once per connection: a failed TLS handshake may end in both `_start_tls` and here."""
        if self._counted:
            self._counted = False
            self._limit.give_back(self._address)

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        if self._handler is not None:
            self._handler.data_received(data)
        elif self._handshake is not None:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received() if self._handler is not None else None

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()


def kept_counted(transport: asyncio.BaseTransport | None) -> contextlib.AbstractContextManager[None]:
    """`CountedConnection.kept` for the HTTP connection of `transport`; nothing for another."""
    protocol = transport.get_protocol() if transport is not None else None
    return protocol.kept() if isinstance(protocol, CountedConnection) else contextlib.nullcontext()


def last_received(transport: asyncio.BaseTransport | None) -> float:
    """When the HTTP connection of `transport` last received data (`time.monotonic()`; 0.0 unknown)."""
    protocol = transport.get_protocol() if transport is not None else None
    return protocol.last_received if isinstance(protocol, CountedConnection) else 0.0


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
    """Loop exception handler: failed accepts become one warning per `WARNING_INTERVAL_S`.

    Out of file descriptors, asyncio reports every failed `accept()` through the loop's exception
    handler, with a traceback, and retries each second; with many clients waiting that is a log
    storm. asyncio itself pauses accepting on that socket for a second and resumes, so nothing
    else is needed: this keeps the log readable, counting what it did not print. A retry that finds
    its socket closed (the daemon stopped in that second) has nothing left to do and is dropped.
    Other reports go to the handler that was installed before (or the loop's default).
    """

    def __init__(self) -> None:
        self._failed = RateLimitedWarning()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def uninstall(self) -> None:
        """Give the loop its handler back once asyncio's pending retries of `accept()` have come (at
        most `ACCEPT_RETRY_DELAY` after the last failed accept): the daemon's stop ends here, but
        the loop runs on (asyncio.run's teardown), and those retries find their socket closed."""
        if self._loop is not None:
            self._loop.call_later(ACCEPT_RETRY_DELAY, self._restore)

    def _restore(self) -> None:
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
        failed = self._failed.occurred()
        if failed is not None:
            log.warning(
                "cannot accept connections: %s (%d failed accepts since the last warning; accepting pauses "
                "and resumes each second). Raise the open-file limit (ulimit -n, now %d) or lower the "
                "max_*_connections settings.",
                context.get("exception"),
                failed,
                open_file_limit(),
            )


def open_file_limit() -> int:
    """The process's soft limit on open file descriptors (sockets included)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
