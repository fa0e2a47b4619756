"""`satellite-asr stream`: a real WebSocket client that plays a WAV file or the microphone to the daemon.

It follows docs/protocol.md: a `config` message declaring the source's rate and encoding, binary
frames of 100 ms as the source delivers them, then `end` when the source ends or is stopped, and
it reads events until the server closes the connection (after the last final).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from collections.abc import Callable
from contextlib import aclosing, suppress
from pathlib import Path
from typing import Any, TextIO

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidStatus

from satellite_asr.clients import reader_may_leave
from satellite_asr.clients.audio_source import BLOCK_SECONDS, AudioSource, WavSource

FRAME_SECONDS = BLOCK_SECONDS
PING_S = 20.0
"""Keepalive: a ping this often, and the connection is dropped if its answer takes longer. The
daemon answers when it reads the ping, after the audio sent before it: a file is therefore sent no
more than `audio_source.FAST_LEAD_S` (less than this) ahead of what the daemon reads."""


class StreamClosed(Exception):
    """The daemon closed the stream before it was finished (the reason is in the message)."""


REALTIME_CREATED = ("session.created", "transcription_session.created")
"""The first event of /v1/realtime, which a mistyped --url reaches."""


class StreamRefused(Exception):
    """The daemon refused the stream: its upgrade (`status`, and why in the daemon's own words), or
    a URL of another route."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def refusal(status: int, body: bytes | bytearray | None, what: str = "connection") -> str:
    """What a refused upgrade (or `what` else) says: the status, and the daemon's error code and
    sentence when its body has them (`{"type": "error", ...}`, OpenAI's `{"error": {...}}`,
    Deepgram's `{"err_code": ..., "err_msg": ...}`, AssemblyAI's `{"error": "...", "code": ...}`,
    ElevenLabs' `{"detail": {"status": ..., "message": ...}}`, Cartesia's `{"error_code": ...,
    "message": ...}`, Soniox's `{"error_code": ..., "error_message": ...}`, whose code is the status,
    Gladia's `{"statusCode": ..., "message": ...}`, or Telnyx's `{"errors": [{"code", "detail"}]}`)."""
    try:
        error = json.loads(body or b"")
    except ValueError:
        error = None
    if isinstance(error, dict) and isinstance(error.get("errors"), list) and error["errors"]:
        first = error["errors"][0]
        error = {"code": first.get("code"), "message": first.get("detail")} if isinstance(first, dict) else None
    if isinstance(error, dict) and isinstance(error.get("error"), dict):
        error = error["error"]
    if isinstance(error, dict) and "err_msg" in error:
        error = {"code": error.get("err_code"), "message": error["err_msg"]}
    if isinstance(error, dict) and isinstance(error.get("error"), str):
        error = {"code": error.get("code"), "message": error["error"]}
    if isinstance(error, dict) and isinstance(error.get("error_message"), str):
        error = {"message": error["error_message"]}
    if isinstance(error, dict) and isinstance(error.get("detail"), dict):
        error = {"code": error["detail"].get("status"), "message": error["detail"].get("message")}
    if isinstance(error, dict) and "error_code" in error:
        error = {"code": error["error_code"], "message": error.get("message")}
    said = ""
    if isinstance(error, dict) and error.get("message"):
        said = f": {error.get('code') or 'error'}: {error['message']}"
    return f"the daemon refused the {what} with HTTP {status}{said}"


def handshake_failure(exc: InvalidHandshake) -> str:
    """What a failed WebSocket upgrade says: the daemon's refusal (`refusal`), a page where a
    WebSocket route was expected, or something that is not an HTTP server at all (the Wyoming port,
    or ws:// to a daemon that speaks TLS)."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if 200 <= status < 300:
            return (
                f"HTTP {status}: this path is not a WebSocket route "
                "(the WebSocket protocol is at /v1/stream, OpenAI's Realtime API at /v1/realtime)"
            )
        return refusal(status, exc.response.body)
    if isinstance(exc, InvalidMessage):  # no HTTP answer at all
        return (
            f"no WebSocket server answered ({exc}): use the daemon's HTTP port (http_port, 10301 by default; "
            "the Wyoming port speaks no HTTP), and wss:// when the daemon has tls_cert"
        )
    return f"the WebSocket upgrade failed: {exc}"


class TranscriptPrinter:
    """Shows events as a person reads them: the partial line rewritten in place, finals kept."""

    def __init__(self, out: TextIO, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.rewrite = out.isatty() and not as_json
        self._partial_shown = False

    def __call__(self, message: dict[str, Any]) -> None:
        with reader_may_leave():
            self._print(message)

    def _print(self, message: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(message), file=self.out, flush=True)
            return
        kind = message.get("type")
        if kind == "partial":
            if self.rewrite:
                print(f"\r\033[K… {message['text']}", end="", file=self.out, flush=True)
                self._partial_shown = True
            else:
                print(f"partial: {message['text']}", file=self.out, flush=True)
        elif kind == "final":
            if self._partial_shown:
                print("\r\033[K", end="", file=self.out)
                self._partial_shown = False
            print(f"[{message['start']:7.2f} - {message['end']:7.2f}] {message['text']}", file=self.out, flush=True)
        elif kind == "error":  # OpenAI's shape nests it: a URL of another route (/v1/realtime)
            error = message["error"] if isinstance(message.get("error"), dict) else message
            print(f"error {error.get('code')}: {error.get('message')}", file=sys.stderr, flush=True)


async def stream_file(
    path: str | Path,
    url: str,
    *,
    fast: bool = False,
    config: dict[str, Any] | None = None,
    on_message: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Stream the file, return every server message (also passed to `on_message` as it arrives)."""
    return await stream_source(WavSource(path, realtime=not fast), url, config=config, on_message=on_message)


async def stream_source(
    source: AudioSource,
    url: str,
    *,
    config: dict[str, Any] | None = None,
    on_message: Callable[[dict[str, Any]], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    api_key: str = "",
) -> list[dict[str, Any]]:
    """Stream until the source ends (or is stopped), send `end`, return every server message.

    Raises `StreamClosed` when the daemon closes the connection other than normally after `end`,
    `StreamRefused` when it refuses the upgrade. `ssl_context` replaces the system's trust for
    wss:// (e.g. a self-signed certificate); `api_key` goes as `Authorization: Bearer`.
    """
    messages: list[dict[str, Any]] = []
    # websockets refuses an explicit ssl=None for wss://: leave it out to get the system's trust
    options: dict[str, Any] = {} if ssl_context is None else {"ssl": ssl_context}
    if api_key:
        options["additional_headers"] = {"Authorization": f"Bearer {api_key}"}
    try:
        ws = await websockets.connect(url, max_size=1 << 20, ping_interval=PING_S, ping_timeout=PING_S, **options)
    except InvalidHandshake as exc:
        status = exc.response.status_code if isinstance(exc, InvalidStatus) else None
        raise StreamRefused(handshake_failure(exc), status) from None
    async with ws:
        await ws.send(
            json.dumps({"type": "config", **(config or {}), "sample_rate": source.sample_rate, "encoding": "s16le"})
        )

        async def receive() -> None:
            async for raw in ws:
                message = json.loads(raw)
                if not messages and message.get("type") in REALTIME_CREATED:
                    await ws.close()  # this client's config, audio and end would each be an error there
                    raise StreamRefused(
                        "this URL speaks OpenAI's Realtime API; satellite-asr stream speaks the WebSocket "
                        "protocol, at /v1/stream"
                    )
                messages.append(message)
                if on_message is not None:
                    try:
                        on_message(message)
                    except Exception:
                        await ws.close()  # the sending ends too (a microphone would go on for ever)
                        raise

        receiver = asyncio.create_task(receive())
        with suppress(ConnectionClosed):  # the server ended the stream early: the close code says why
            async with aclosing(source.blocks()) as blocks:
                async for block in blocks:
                    await ws.send(block)
            await ws.send(json.dumps({"type": "end"}))
        with suppress(ConnectionClosed):
            await receiver
    if ws.close_code != 1000:
        reason = f" ({ws.close_reason})" if ws.close_reason else ""
        raise StreamClosed(f"the daemon closed the stream with code {ws.close_code}{reason}")
    return messages
