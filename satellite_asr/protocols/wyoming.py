"""The Wyoming protocol (Home Assistant's speech-to-text peer protocol) on tcp:// or unix://.

Thin like the WebSocket adapter: it reads events, drives a `Session` and turns what the session
emits into Wyoming events. Endpointing, decoding and timers live in the session and its manager.

The wire framing and its limits are in `wyoming_framing.py`; this module is the Home Assistant
round logic and the server. A fatal `ProtocolError` (the byte stream can no longer be trusted, or
the server is busy) answers `error` and closes; any other answers `error` and the connection goes on.

One session per transcribe round, not per connection: a round's language and biasing context
are fixed session options, the round ends with exactly one `transcript`, and a connection idling
between rounds holds no session slot. The first final of the round answers it; whatever the
session still produces after that is dropped with the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlparse

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.vad import VoiceStarted, VoiceStopped

from satellite_asr import __version__
from satellite_asr.audio import AudioFormatError, PcmDecoder
from satellite_asr.biasing.context import MAX_CLIENT_TERMS, client_terms, fitted_biasing
from satellite_asr.config import ConfigError, Settings, setting_fields
from satellite_asr.core import Core
from satellite_asr.engines.base import EngineInfo
from satellite_asr.events import (
    FinalTranscript,
    PartialTranscript,
    SessionError,
    SessionEvent,
    SpeechStarted,
    SpeechStopped,
)
from satellite_asr.limits import ConnectionLimit, TooManyConnections, write_within
from satellite_asr.protocols import (
    PcmInput,
    ProtocolError,
    biasing_problems,
    checked_language,
    echoable,
    open_session,
)
from satellite_asr.protocols.wyoming_framing import MAX_HEADER_BYTES, read_event
from satellite_asr.session import Session, SessionOptions

log = logging.getLogger(__name__)
_T = TypeVar("_T")

PROGRAM_NAME = "satellite-asr"
SAMPLE_WIDTH = 2
"""Audio must be signed 16-bit PCM; rate and channel count may be anything the decoder resamples."""


ABORT_GRACE_S = 1.0
"""At shutdown, how long a connection's task may take to end once its connection was cut."""

BIASING_FIELDS = "transcribe.context, transcript_names and transcript_terms"
"""What a round's biasing is made of, as the `error` that caps it names them."""
SENSITIVITY_SCALE = {"default": 1.0, "aggressive": 0.6, "relaxed": 2.0}
"""`min_silence_ms` and `silence_ms` times this, per `vad_sensitivity` of `transcribe` (unknown: default)."""


def silences_for(settings: Settings, sensitivity: Any) -> dict[str, int]:
    """Both end-of-speech silences for Home Assistant's "finished speaking detection" setting, scaled
    but kept within what each setting allows."""
    scale = SENSITIVITY_SCALE.get(str(getattr(sensitivity, "value", sensitivity) or "default"), 1.0)
    bounds = {
        f.name: (int(f.metadata["minimum"]), int(f.metadata["maximum"]))
        for f in setting_fields()
        if f.name in ("min_silence_ms", "silence_ms")
    }
    return {name: min(high, max(low, round(getattr(settings, name) * scale))) for name, (low, high) in bounds.items()}


@dataclass(frozen=True)
class ServerAddress:
    scheme: str
    """`tcp` or `unix`."""
    host: str
    port: int
    path: str


def parse_uri(uri: str) -> ServerAddress | None:
    """`tcp://HOST:PORT` or `unix://PATH`; None for `none` (the Wyoming server is off)."""
    if uri.strip().lower() in ("", "none"):
        return None
    parsed = urlparse(uri.strip())
    if parsed.scheme == "unix" and (parsed.netloc or parsed.path):
        return ServerAddress("unix", "", 0, parsed.netloc + parsed.path)
    if parsed.scheme == "tcp":
        try:
            port = parsed.port
        except ValueError:
            port = None
        if parsed.hostname is not None and port is not None:
            return ServerAddress("tcp", parsed.hostname, port, "")
    raise ConfigError(f"wyoming_uri: expected tcp://HOST:PORT, unix://PATH or none, got {uri!r}")


def build_info(engine: EngineInfo, settings: Settings) -> Info:
    """What `describe` answers; engine facts that exist before the model has loaded."""
    languages = engine.languages or ([settings.language] if settings.language else [])
    attribution = Attribution(name="Satellite ASR", url="")
    model = AsrModel(
        name=engine.model,
        attribution=Attribution(name=engine.name, url=""),
        installed=True,
        description=f"{engine.model} ({engine.name} engine)",
        version=None,
        languages=languages,
    )
    program = AsrProgram(
        name=PROGRAM_NAME,
        attribution=attribution,
        installed=True,
        description="Streaming speech-to-text with its own end-of-speech detection",
        version=__version__,
        models=[model],
        supports_transcript_streaming=True,
        requires_external_vad=False,
        # Audio no gain control or noise suppressor has touched: with both False Home Assistant
        # (2026.10+) takes a two-channel ESPHome satellite's unprocessed channel (docs/wyoming.md).
        prefers_auto_gain_enabled=False,
        prefers_noise_reduction_enabled=False,
    )
    return Info(asr=[program])


def _text_list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ProtocolError("invalid_event", f"transcribe: {field} must be a list of text")
    return client_terms(value)


def transcribe_context(transcribe: Transcribe) -> tuple[str, list[str]]:
    """Biasing from a `transcribe`: the context's text values, and its names (first) and terms.

    The home's names join them when the round's session is created (see `SessionOptions`).
    """
    if transcribe.context is not None and not isinstance(transcribe.context, dict):
        raise ProtocolError("invalid_event", "transcribe: context must be an object")
    parts = [v.strip() for v in (transcribe.context or {}).values() if isinstance(v, str) and v.strip()]
    terms = _text_list(transcribe.transcript_names, "transcript_names") + _text_list(
        transcribe.transcript_terms, "transcript_terms"
    )
    return "\n".join(parts), terms


@dataclass
class _Round:
    """One transcribe round: one session, answered by exactly one `transcript`."""

    session: Session
    language: str | None
    audio: PcmInput | None = None
    """Set by the first audio-start or audio-chunk (their format names the decoder)."""
    utterance_id: int | None = None
    """The utterance that answers the round: the first one in which words were heard."""
    sent: str = ""
    """Text of the transcript chunks sent so far."""
    started: bool = False
    answered: bool = False


class _Connection:
    """One client connection: reads events in order, writes events under one lock."""

    def __init__(self, server: WyomingServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.round: _Round | None = None
        self._write_lock = asyncio.Lock()
        self._ending = asyncio.Lock()
        self._releases: set[asyncio.Task[None]] = set()
        self.closing = False
        """Set once the server decided to end the connection; events still arriving are dropped."""
        self.quiet_s = 0.0
        """How long the last round had heard no speech when it ended: the next round takes it over,
        so rounds of silence one after another do not hold a session past `idle_timeout_s`."""
        self._closed_by_server = asyncio.Event()

    async def run(self) -> None:
        reason = "disconnect"
        first_message_timeout = self.server.core.settings.first_message_timeout_s
        try:
            while True:
                try:
                    # A round being heard is the idle reaper's; one answered holds no session, like none
                    open_round = self.round is not None and not self.round.answered
                    timeout = None if open_round else first_message_timeout
                    try:
                        event = await asyncio.wait_for(read_event(self.reader), timeout)
                    except TimeoutError:
                        raise ProtocolError(
                            "timeout",
                            f"no event within {first_message_timeout:g} s while no round was open "
                            "(first_message_timeout_s)",
                            fatal=True,
                        ) from None
                    if event is None:
                        break
                    if not self.closing:
                        await self.handle(event)
                except ProtocolError as exc:
                    await self.error(exc.code, exc.message)
                    if exc.fatal:
                        reason = exc.code
                        break
        except ConnectionError as exc:
            log.debug("wyoming connection lost: %s", exc)
        except Exception:
            log.exception("wyoming connection failed")
            reason = "internal_error"
        finally:
            if self.closing:
                await self._closed_by_server.wait()
            else:
                await self.end_round(reason, finalize=False)
            await asyncio.gather(*self._releases, return_exceptions=True)
            await self.close_writer()

    async def send(self, event: Event) -> None:
        """Raises `SlowClient` (a `ConnectionError`) and drops the client when it does not read."""
        async with self._write_lock:
            if not self.writer.is_closing():
                timeout = self.server.core.settings.write_timeout_s
                await write_within(async_write_event(event, self.writer), timeout, self.writer.transport)

    async def error(self, code: str, message: str) -> None:
        """`message` may quote the client's event type, which may hold a lone surrogate: the
        `wyoming` writer's UTF-8 could not encode it (`echoable`)."""
        message = echoable(message)
        self.server.core.metrics.errors.labels(code).inc()
        log.debug("wyoming error %s: %s", code, message)
        with contextlib.suppress(ConnectionError):
            await self.send(Error(text=message, code=code).event())

    async def close_writer(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            # Shielded: Python 3.11 hands every caller the same future, which a cancelled caller (a
            # shutdown out of time) would cancel for the connection's own task too.
            await asyncio.shield(self.writer.wait_closed())

    async def close_by_server(self, reason: str) -> None:
        """Idle timeout or shutdown: the round in progress is finalized and answered, then close."""
        self.closing = True
        try:
            await self.end_round(reason, finalize=True)
        finally:
            self._closed_by_server.set()
            await self.close_writer()

    async def handle(self, event: Event) -> None:
        if Describe.is_type(event.type):
            await self.send(build_info(self.server.core.engine_info, self.server.core.settings).event())
        elif Transcribe.is_type(event.type):
            transcribe = _parse(Transcribe.from_event, event)
            context, terms = await self.capped_biasing(*transcribe_context(transcribe))
            language = await self.checked_language(transcribe.language)
            await self.end_round("transcribe", finalize=True)
            await self.open_round(language, context, transcribe.vad_sensitivity, terms)
        elif AudioStart.is_type(event.type):
            start = _parse(AudioStart.from_event, event)
            _check_format(start.rate, start.width, start.channels)
            if self.round is None or self.round.answered:
                await self.end_round("audio-start", finalize=True)
                await self.open_round(None, "")
            assert self.round is not None
            await self.set_format(self.round, start.rate, start.channels)
        elif AudioChunk.is_type(event.type):
            await self.on_chunk(_parse(AudioChunk.from_event, event))
        elif AudioStop.is_type(event.type):
            if self.round is None:  # silence would leave a client waiting for a transcript for ever
                raise ProtocolError(
                    "invalid_event", "audio-stop: no round is open (send transcribe or audio first); nothing to answer"
                )
            await self.end_round("audio-stop", finalize=True)
        elif Ping.is_type(event.type):
            text = _parse(Ping.from_event, event).text  # echoed: a lone surrogate would fail the writer's UTF-8
            await self.send(Pong(text=text and echoable(text)).event())
        else:
            raise ProtocolError(
                "unknown_event", f"unknown event {event.type!r}; expected describe, transcribe or audio events"
            )

    async def capped_biasing(self, text: str, terms: list[str]) -> tuple[str, list[str]]:
        """The client's biasing, or, over a limit (`biasing_problems`), the start of it that fits after
        one `error`: the round still gets its transcript."""
        core = self.server.core
        problems = biasing_problems(core, text, terms, BIASING_FIELDS)
        if not problems:
            return text, terms
        kept_text, kept_terms = fitted_biasing(text, terms[:MAX_CLIENT_TERMS], core.settings.max_context_chars)
        using = []
        if text:
            using.append("the context" if kept_text == text else f"the context's first {len(kept_text)} characters")
        if terms:
            using.append(f"the first {len(kept_terms)} of the {len(terms)} names and terms")
        await self.error("context_too_long", f"{'; '.join(problems)}; using {' and '.join(using)}")
        return kept_text, kept_terms

    async def checked_language(self, language: Any) -> str | None:
        """The language if the engine knows it (a region tag like en-US falls back to en); else an
        `error` and None (the daemon's default), so the round still gets its transcript."""
        try:
            return checked_language(self.server.core, language, "transcribe.language")
        except ProtocolError as exc:
            await self.error(exc.code, f"{exc.message}; using the default")
            return None

    async def open_round(
        self, language: str | None, context: str, sensitivity: Any = None, terms: Sequence[str] = ()
    ) -> None:
        """A session for one transcribe round; `sensitivity` is Home Assistant's `vad_sensitivity`,
        `terms` its `transcript_names` and `transcript_terms` (the home's names join them)."""
        settings = self.server.core.settings
        options = SessionOptions.from_settings(
            settings,
            vad=silences_for(settings, sensitivity),
            language=language or settings.default_language,
            context=context,
            terms=terms,
        )
        round_: _Round

        async def emit(event: SessionEvent) -> None:  # the session emits nothing before `round_` is set
            await self.on_session_event(round_, event)

        session = open_session(self.server.core, "wyoming", options, emit, self.close_by_server, quiet_s=self.quiet_s)
        round_ = _Round(session, options.language)
        self.round = round_

    async def set_format(self, round_: _Round, rate: int, channels: int) -> None:
        old = round_.audio
        if old is not None and (old.decoder.sample_rate, old.decoder.channels) == (rate, channels):
            return
        try:
            decoder = PcmDecoder("s16le", rate, channels)
        except AudioFormatError as exc:
            raise ProtocolError("invalid_audio", str(exc)) from None
        if old is not None:
            await old.drain()
        # a client may half-close after its audio-stop and still read the transcript
        round_.audio = PcmInput(self.server.core, round_.session, decoder, self.writer.transport, half_close_ends=False)

    async def on_chunk(self, chunk: AudioChunk) -> None:
        _check_format(chunk.rate, chunk.width, chunk.channels)
        if self.round is None:
            await self.open_round(None, "")
        round_ = self.round
        assert round_ is not None
        if round_.answered:
            return
        await self.set_format(round_, chunk.rate, chunk.channels)
        assert round_.audio is not None
        await round_.audio.feed(chunk.audio)

    async def end_round(self, reason: str, *, finalize: bool) -> None:
        """Finish the current round: with `finalize`, what was heard is transcribed and answered.

        Serialized, so a server-side close waits for an `audio-stop` being answered at that moment.
        """
        async with self._ending:
            round_, self.round = self.round, None
            if round_ is None:
                return
            if not round_.answered:  # an answered round's quiet was taken when it was answered
                self.quiet_s = round_.session.quiet_seconds(time.monotonic())
            try:
                if finalize and not round_.answered:
                    if round_.audio is not None:
                        await round_.audio.drain()
                    await round_.session.flush()
                    if not round_.answered:
                        await self.answer(round_, "", round_.language)
            finally:  # also when the client left while the drain was held back (`ClientGone`)
                await self.server.core.sessions.release(round_.session, reason, finalize=False)

    async def answer(self, round_: _Round, text: str, language: str | None) -> None:
        """The round's one transcript (with transcript-start before it if not sent yet)."""
        if round_.answered:
            return
        round_.answered = True
        with contextlib.suppress(ConnectionError):
            await self.start_transcript(round_, language)
            await self.send(Transcript(text=text, language=language).event())
            await self.send(TranscriptStop().event())

    async def start_transcript(self, round_: _Round, language: str | None) -> None:
        """`transcript-start`, once per round: at the first speech, or just before the transcript."""
        if not round_.started:
            round_.started = True
            await self.send(TranscriptStart(language=language).event())

    async def on_session_event(self, round_: _Round, event: SessionEvent) -> None:
        if round_.answered:
            return
        if isinstance(event, SessionError):
            await self.send(Error(text=event.message, code=event.code).event())
            return
        if isinstance(event, SpeechStarted) and round_.utterance_id is None:
            round_.utterance_id = event.utterance_id
            await self.send(VoiceStarted(timestamp=round(event.start * 1000)).event())
            await self.start_transcript(round_, round_.language)
            return
        if getattr(event, "utterance_id", None) != round_.utterance_id:
            return
        if isinstance(event, PartialTranscript):
            stable = event.stable_text
            if len(stable) > len(round_.sent) and stable.startswith(round_.sent):
                chunk, round_.sent = stable[len(round_.sent) :], stable
                await self.send(TranscriptChunk(text=chunk).event())
        elif isinstance(event, SpeechStopped):
            await self.send(VoiceStopped(timestamp=round(event.end * 1000)).event())
        elif isinstance(event, FinalTranscript):
            if event.is_speech_final and not event.text.strip():
                # A cough or a door, not words: the round listens on for the command (if none comes,
                # audio-stop or the idle timeout still answers it, with empty text).
                round_.utterance_id = None
                return
            self.quiet_s = round_.session.quiet_seconds(time.monotonic())  # the time until the next round is not quiet
            await self.answer(round_, event.text, event.language or round_.language)
            # Not awaited here: this runs inside the session's own final task, which release would wait for.
            release = asyncio.create_task(self.server.core.sessions.release(round_.session, "answered", finalize=False))
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)


def _parse(parser: Callable[[Event], _T], event: Event) -> _T:
    """An event class from a generic event; a missing or mistyped field is `invalid_event`."""
    try:
        return parser(event)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError("invalid_event", f"{event.type}: missing or invalid field ({exc})") from None


def _check_format(rate: Any, width: Any, channels: Any) -> None:
    for name, value in (("rate", rate), ("width", width), ("channels", channels)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError("invalid_audio", f"audio {name} must be a whole number, got {value!r}")
    if width != SAMPLE_WIDTH:
        raise ProtocolError("invalid_audio", f"audio width must be {SAMPLE_WIDTH} (16-bit PCM), got {width}")


class WyomingServer:
    """Listens on the `wyoming_uri` address; one `_Connection` per client."""

    def __init__(self, address: ServerAddress, core: Core) -> None:
        self.address = address
        self.core = core
        self._server: asyncio.Server | None = None
        self._socket_inode: int | None = None
        """The inode of the unix socket this server bound (None on TCP, or not bound)."""
        self._connections: dict[asyncio.Task[Any], _Connection] = {}
        settings = core.settings
        self.limit = ConnectionLimit(
            "wyoming",
            settings.max_wyoming_connections,
            settings.max_connections_per_address,
            total_setting="max_wyoming_connections",
        )

    @property
    def port(self) -> int | None:
        """The bound TCP port (the real one when the URI asked for port 0); None on a unix socket."""
        if self._server is None or self.address.scheme != "tcp":
            return None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def hosts(self) -> tuple[str, ...]:
        """The addresses the TCP server listens on (two for localhost: 127.0.0.1 and ::1); none on a unix socket."""
        if self._server is None or self.address.scheme != "tcp":
            return ()
        return tuple(str(sock.getsockname()[0]) for sock in self._server.sockets)

    async def start(self) -> None:
        if self.address.scheme == "tcp":
            self._server = await asyncio.start_server(
                self._accept, self.address.host, self.address.port, limit=MAX_HEADER_BYTES
            )
            log.info("Wyoming server on tcp://%s:%d", self.address.host, self.port)
        else:
            _remove_stale_socket(self.address.path)
            self._server = await asyncio.start_unix_server(self._accept, self.address.path, limit=MAX_HEADER_BYTES)
            self._socket_inode = os.stat(self.address.path).st_ino
            log.info("Wyoming server on unix://%s", self.address.path)

    async def stop(self) -> None:
        """Stop listening; rounds in progress are answered, then every connection is closed."""
        if self._server is None:
            return
        self._server.close()
        connections = dict(self._connections)
        await asyncio.gather(*(c.close_by_server("shutdown") for c in connections.values()), return_exceptions=True)
        if connections:  # wait, not gather: a shutdown out of time must not cancel these tasks (see `abort`)
            await asyncio.wait(connections)
        await self._server.wait_closed()
        self._remove_own_socket()

    async def abort(self) -> None:
        """Shutdown ran out of time: cut every connection still open; its task then ends on its own
        (reads and writes fail), or is cancelled after `ABORT_GRACE_S`."""
        for connection in self._connections.values():
            connection.writer.transport.abort()
        if self._connections:
            _, stuck = await asyncio.wait(list(self._connections), timeout=ABORT_GRACE_S)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        self._remove_own_socket()

    def _remove_own_socket(self) -> None:
        """The unix socket this server bound, if it is still ours: never another daemon's, which a
        second daemon that failed to start would otherwise take from it."""
        if self._socket_inode is None:
            return
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.address.path).st_ino == self._socket_inode:
                os.unlink(self.address.path)
        self._socket_inode = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connection = _Connection(self, reader, writer)
        peer = writer.get_extra_info("peername")
        try:
            with self.limit.opened(str(peer[0]) if isinstance(peer, tuple) else ""):
                self._connections[task] = connection
                try:
                    await connection.run()
                finally:
                    del self._connections[task]
        except TooManyConnections as exc:
            await connection.error("server_busy", str(exc))
            await connection.close_writer()
        except asyncio.CancelledError:
            # Only `abort` cancels a connection: the end shutdown chose for it, so the task ends
            # normally (asyncio before 3.13 logs a connection task that ends cancelled as an error).
            log.debug("wyoming connection cancelled at shutdown")


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a daemon that is gone is removed; one a live server listens on is not
    taken over (`EADDRINUSE`), and a file that is not a socket is not deleted."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"wyoming_uri: {path} exists and is not a socket; remove it or choose another path")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)
            return
    raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE), path)
