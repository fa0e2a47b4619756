"""Creates and ends sessions: the `max_sessions` limit and Wyoming's reserve, idle timeouts and shutdown.

Idle means no speech, not no frames: a client that sends a little silence now and then must not
hold a slot forever. A session is idle when `idle_timeout_s` have passed since its last speech (or
its start); inside an utterance, arriving audio counts too (its end comes by endpoint or length cap).
Time the client's audio waits on the daemon (a busy engine) is not quiet: its speech is not heard yet.

For the APIs whose clients do not reconnect after the idle timeout (`SessionOptions.idle_means_missing_audio`:
Inworld, Meta, Sarvam's streaming API, Gradium) the same clock reads the audio the client failed to send
since its last speech instead: a client streaming at a microphone's pace is never idle, and one whose
audio stops or trickles is, `idle_timeout_s` after it falls that far behind real time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

from satellite_asr.engines.base import Engine
from satellite_asr.metrics import Metrics
from satellite_asr.scheduler import DecodeScheduler
from satellite_asr.session import Emit, Session, SessionOptions
from satellite_asr.vad.silero import SileroVad
from satellite_asr.vad.turn import TurnDetector

log = logging.getLogger(__name__)

CloseConnection = Callable[[str], Awaitable[None]]
"""How the server ends a connection it decided to end (idle timeout, shutdown); gets the reason."""


class ServerBusy(Exception):
    """`max_sessions` sessions are open already."""


class SessionManager:
    def __init__(
        self,
        *,
        vad: SileroVad,
        engine: Engine,
        scheduler: DecodeScheduler,
        metrics: Metrics,
        turn_detector: TurnDetector,
        max_sessions: int,
        idle_timeout_s: float,
        wyoming_reserved: int,
        home_names: Callable[[], Sequence[str]] = tuple,
        home_names_in_context: int = 0,
    ) -> None:
        self._vad = vad
        self._engine = engine
        self._scheduler = scheduler
        self._metrics = metrics
        self._turn_detector = turn_detector
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s
        self.wyoming_reserved = wyoming_reserved
        """Slots only Wyoming sessions may take, so Home Assistant is served while WebSocket clients fill the rest."""
        self._home_names = home_names
        self._home_names_in_context = home_names_in_context
        self._sessions: dict[str, tuple[Session, CloseConnection, Callable[[], bool]]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._expiring: dict[str, asyncio.Task[None]] = {}
        self._hurried = False

    def __len__(self) -> int:
        return len(self._sessions)

    def open_sessions(self) -> list[Session]:
        return [session for session, _, _ in self._sessions.values()]

    def create(
        self,
        protocol: str,
        options: SessionOptions,
        emit: Emit,
        close_connection: CloseConnection,
        *,
        quiet_s: float = 0.0,
        arriving: Callable[[], bool] = lambda: False,
    ) -> Session:
        """A new session, or `ServerBusy`. The caller must `release` it when the stream ends.

        The home's names are read here, for every protocol, unless the client opted out: a
        session's options are fixed, so a change in Home Assistant reaches the next session.
        `quiet_s` is the quiet of the session this one follows on the same connection: reconfiguring
        every few seconds without speaking must not keep a session open past `idle_timeout_s`.
        `arriving` says whether a message of the client is arriving now (see `_expire_idle`).
        """
        self.check_room(protocol)
        if options.household_names:
            options = dataclasses.replace(
                options, home_names=tuple(self._home_names()), home_names_in_context=self._home_names_in_context
            )
        session = Session(
            uuid.uuid4().hex[:12],
            protocol,
            options,
            vad=self._vad,
            engine=self._engine,
            scheduler=self._scheduler,
            metrics=self._metrics,
            turn_detector=self._turn_detector,
            emit=emit,
            quiet_s=quiet_s,
        )
        self._sessions[session.id] = (session, close_connection, arriving)
        if self._hurried:
            session.hurry()
        self._metrics.sessions.labels(protocol).inc()
        self._metrics.sessions_active.labels(protocol).inc()
        log.info("session %s opened (%s)", session.id, protocol)
        return session

    def check_room(self, protocol: str) -> None:
        """`ServerBusy` when a session of `protocol` could not open now (so a client can be refused
        before it sends what the session would need, e.g. an upload's body)."""
        if len(self._sessions) >= self.max_sessions:
            raise ServerBusy(f"the server has {self.max_sessions} sessions open, its limit; try again later")
        if protocol != "wyoming" and len(self._sessions) >= self.max_sessions - self.wyoming_reserved:
            raise ServerBusy(
                f"the server has {len(self._sessions)} sessions open; the other {self.wyoming_reserved} of its "
                f"{self.max_sessions} are kept for Home Assistant (wyoming_reserved_sessions); try again later"
            )

    async def release(self, session: Session, reason: str, *, finalize: bool) -> None:
        """End `session` (finals first when `finalize`) and forget it; safe to call twice.

        While the server is ending the session (idle timeout, shutdown), a release that finalizes
        waits for that to finish, finals and the server's Close included: its adapter would
        otherwise close the connection before them (a client's `end` read meanwhile). One that does
        not finalize (the client left) cancels what is in flight, as on any disconnect.
        """
        expiry = self._expiring.get(session.id)
        if finalize and expiry is not None and expiry is not asyncio.current_task():
            await asyncio.gather(asyncio.shield(expiry), return_exceptions=True)
            return
        try:
            await session.close(reason, finalize=finalize)
        finally:
            if self._sessions.pop(session.id, None) is not None:
                self._metrics.sessions_active.labels(session.protocol).dec()

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_idle(), name="idle-reaper")

    async def close_all(self, reason: str, *, protocol: str | None = None) -> None:
        """Shutdown: every session's (or one protocol's) pending finals are sent, then its connection is closed."""
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        expiries = [
            self._expiring.get(session.id) or self._start_expiry(session, close, reason)
            for session, close, _ in list(self._sessions.values())
            if protocol in (None, session.protocol)
        ]
        if protocol is None:  # idle expiries past their release too
            expiries.extend(self._expiring.values())
        for outcome in await asyncio.gather(*expiries, return_exceptions=True):
            if isinstance(outcome, Exception):  # the others still close; this one is left to the cut
                log.error("shutdown: a session could not be closed", exc_info=outcome)

    def hurry(self) -> None:
        """Shutdown is running out of time: every final still to decode is sent at once (`Session.hurry`)."""
        self._hurried = True
        for session, _, _ in self._sessions.values():
            session.hurry()

    async def cancel_all(self, reason: str) -> None:
        """Shutdown ran out of time: the sessions left end now, what they have in flight is cancelled."""
        for task in self._expiring.values():
            task.cancel()
        releases = [self.release(session, reason, finalize=False) for session, _, _ in list(self._sessions.values())]
        await asyncio.gather(*releases, *self._expiring.values(), return_exceptions=True)

    async def _expire(self, session: Session, close_connection: CloseConnection, reason: str) -> None:
        await self.release(session, reason, finalize=True)
        try:
            await close_connection(reason)
        except (ConnectionError, RuntimeError) as exc:
            log.debug("session %s: closing the connection failed: %s", session.id, exc)

    def _forget_expiring(self, session_id: str, _: asyncio.Task[None]) -> None:
        """Done callback of an `_expire` task: the session no longer counts as expiring."""
        self._expiring.pop(session_id, None)

    async def _reap_idle(self) -> None:
        period = min(1.0, self.idle_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            self._expire_idle()

    def _expire_idle(self) -> None:
        """A function of its own, so that no session stays referenced while the reaper sleeps.

        Idle means no speech (silence sent as a keep-alive does not count), or for some APIs audio
        missing (`Session.quiet_seconds` reads the one the session's options ask for). A recording's session
        (an upload, a file `transcribe` reads: `SessionOptions.recording`) is never idle: the
        daemon reads it itself, as fast as it goes, and its caller owns its lifetime; an upload may
        also wait behind live work, and a long silence in a file takes its time to be listened to. A
        session whose client has a message arriving (`create`'s `arriving`) is given until it is
        whole, up to as long again: the client has not been idle (the message may hold speech), and
        closing as it sends would reset the connection, losing the Close.
        """
        now = time.monotonic()
        for session, close, arriving in list(self._sessions.values()):
            if session.options.recording or session.id in self._expiring:
                continue
            quiet = session.quiet_seconds(now)
            if quiet > self.idle_timeout_s and (quiet > 2 * self.idle_timeout_s or not arriving()):
                log.info("session %s idle for %.0f s, closing", session.id, quiet)
                self._start_expiry(session, close, "idle_timeout")

    def _start_expiry(self, session: Session, close_connection: CloseConnection, reason: str) -> asyncio.Task[None]:
        """The server ends `session` (`_expire`) in a task that `release` and `cancel_all` can find."""
        task = asyncio.create_task(self._expire(session, close_connection, reason), name=f"expire-{session.id}")
        self._expiring[session.id] = task
        task.add_done_callback(functools.partial(self._forget_expiring, session.id))
        return task
