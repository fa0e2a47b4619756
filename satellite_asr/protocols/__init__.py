"""Protocol adapters: each turns one wire protocol into calls on a `Session` and back.

The contract every adapter follows (so that a new protocol is one thin file and one route):

1. It is handed the `Core` and reaches the engine, settings, metrics and sessions through it; it
   owns no VAD, model or timers of its own.
2. It creates a session (`open_session`) when the client configures one or sends its first audio,
   with `SessionOptions.from_settings` and the client's overrides, checked against the engine.
3. It decodes the client's audio to 16 kHz mono float32 with a `PcmInput` (wire PCM) and feeds it.
4. It turns the session's events (`events.py`) into wire messages; nothing else produces them.
5. When the stream ends it drains the decoder and releases the session in a `finally`:
   `finalize=True` when the client asked for an end (its finals are sent), `False` when it left.
6. Every input it refuses raises the one `ProtocolError` (a code and a human sentence, and the
   offending field as `param` where the protocol names it); the adapter answers it in the
   protocol's own error shape and ends the connection only when `fatal`.
"""

from __future__ import annotations

import time

from satellite_asr.audio import AudioFormatError, PcmDecoder
from satellite_asr.core import Core
from satellite_asr.session import Emit, Session, SessionOptions
from satellite_asr.session_manager import CloseConnection, ServerBusy


class ProtocolError(Exception):
    """Input a protocol refuses: `code`, `message` (and `param`, the field at fault) go to the client;
    `fatal` ends the connection."""

    def __init__(self, code: str, message: str, *, fatal: bool = False, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal
        self.param = param


def open_session(
    core: Core, protocol: str, options: SessionOptions, emit: Emit, close_connection: CloseConnection
) -> Session:
    """A new session, or a fatal `server_busy` error when the daemon is at `max_sessions`."""
    try:
        return core.sessions.create(protocol, options, emit, close_connection)
    except ServerBusy as exc:
        raise ProtocolError("server_busy", str(exc), fatal=True) from None


class PcmInput:
    """A session and the decoder of its wire PCM: what a streaming adapter feeds audio through."""

    def __init__(self, core: Core, session: Session, decoder: PcmDecoder) -> None:
        self.core = core
        self.session = session
        self.decoder = decoder

    async def feed(self, data: bytes) -> None:
        """Decode one frame and feed it; a frame that is not PCM of the format is `invalid_audio`."""
        received = time.perf_counter()
        try:
            decoded = self.decoder.decode(data)
        except AudioFormatError as exc:
            raise ProtocolError("invalid_audio", f"frame dropped: {exc}") from None
        if decoded.non_finite:
            self.core.metrics.invalid_samples.inc(decoded.non_finite)
        waited = await self.session.feed(decoded.samples)
        server_time = time.perf_counter() - received - waited  # back-pressure waits are not work
        self.core.metrics.frame_seconds.labels(self.session.protocol).observe(server_time)

    async def drain(self) -> None:
        """Feed what the resampler still holds (end of stream, or before the format changes)."""
        await self.session.feed(self.decoder.drain())
