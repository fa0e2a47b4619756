"""`satellite-asr stream`: a real WebSocket client that plays a WAV file to the daemon.

It follows docs/protocol.md: a `config` message declaring the file's rate and encoding, binary
frames of 100 ms at real-time pace (or as fast as possible with `fast`), then `end`, and it
reads events until the server closes the connection.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import websockets

from satellite_asr.clients.wav import read_wav

FRAME_SECONDS = 0.1


class TranscriptPrinter:
    """Shows events as a person reads them: the partial line rewritten in place, finals kept."""

    def __init__(self, out: TextIO, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.rewrite = out.isatty() and not as_json
        self._partial_shown = False

    def __call__(self, message: dict[str, Any]) -> None:
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
        elif kind == "error":
            print(f"error {message['code']}: {message['message']}", file=sys.stderr, flush=True)


async def stream_file(
    path: str | Path,
    url: str,
    *,
    fast: bool = False,
    config: dict[str, Any] | None = None,
    on_message: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Stream the file, return every server message (also passed to `on_message` as it arrives)."""
    wav = read_wav(path)
    if wav.channels != 1:
        raise ValueError(f"{path}: the WebSocket protocol takes mono audio, this file has {wav.channels} channels")
    messages: list[dict[str, Any]] = []
    frame_bytes = int(FRAME_SECONDS * wav.sample_rate) * 2 * wav.channels
    async with websockets.connect(url, max_size=1 << 20) as ws:
        await ws.send(
            json.dumps({"type": "config", "sample_rate": wav.sample_rate, "encoding": "s16le", **(config or {})})
        )

        async def receive() -> None:
            async for raw in ws:
                message = json.loads(raw)
                messages.append(message)
                if on_message is not None:
                    on_message(message)

        receiver = asyncio.create_task(receive())
        started = time.monotonic()
        for index, offset in enumerate(range(0, len(wav.pcm), frame_bytes)):
            if not fast:
                await asyncio.sleep(max(0.0, started + index * FRAME_SECONDS - time.monotonic()))
            await ws.send(wav.pcm[offset : offset + frame_bytes])
        await ws.send(json.dumps({"type": "end"}))
        await receiver
    return messages
