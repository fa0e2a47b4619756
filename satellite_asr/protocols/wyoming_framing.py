"""Wyoming's wire framing, read with limits: a JSON header line, then `data_length` bytes of JSON
data, then `payload_length` bytes of payload.

Limits are checked on the declared lengths before anything is buffered; the `wyoming` package's
own reader has none. Its `Event` class still carries what is read, so the events stay exactly what
its clients expect. Anything that leaves the byte stream unusable (a header line over 64 KiB, a
header that is not a JSON object, a length over 1 MiB or not a whole number, the connection cut
inside an event) is a fatal `ProtocolError`; an event without a `type` or with a data block that
is not a JSON object is refused on its own and the stream goes on.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from wyoming.event import Event

from satellite_asr.protocols import ProtocolError

MAX_HEADER_BYTES = 64 * 1024
"""Longest event header line (without its newline)."""
MAX_BLOCK_BYTES = 1 << 20
"""Largest `data_length` and largest `payload_length`."""


def _block_length(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError("invalid_header", f"{key} must be a whole number of bytes, got {value!r}", fatal=True)
    if value > MAX_BLOCK_BYTES:
        raise ProtocolError("too_large", f"{key} {value} is over the limit of {MAX_BLOCK_BYTES} bytes", fatal=True)
    return value


async def _read_block(reader: asyncio.StreamReader, length: int, what: str) -> bytes:
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ProtocolError("truncated_event", f"the connection ended inside an event's {what}", fatal=True) from None


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """The next event, None at a clean end of stream; `ProtocolError` for malformed input.

    `reader` must have been created with `limit=MAX_HEADER_BYTES` (as `WyomingServer` does).
    """
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise ProtocolError("truncated_event", "the connection ended inside an event header", fatal=True) from None
        return None
    except asyncio.LimitOverrunError:
        raise ProtocolError(
            "header_too_large", f"event header line is over the limit of {MAX_HEADER_BYTES} bytes", fatal=True
        ) from None
    try:
        header = json.loads(line)
    except (ValueError, RecursionError):
        raise ProtocolError("invalid_header", "event header line is not JSON", fatal=True) from None
    if not isinstance(header, dict):
        raise ProtocolError("invalid_header", "event header must be a JSON object", fatal=True)
    data_length = _block_length(header, "data_length")
    payload_length = _block_length(header, "payload_length")
    data_bytes = await _read_block(reader, data_length, "data") if data_length else b""
    payload = await _read_block(reader, payload_length, "payload") if payload_length else None

    kind = header.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError("invalid_event", "event header has no type")
    data = header.get("data")
    data = {} if data is None else data  # null: no data; 0 or [] is an error, not none
    if not isinstance(data, dict):
        raise ProtocolError("invalid_event", f"{kind}: data must be a JSON object")
    if data_bytes:
        try:
            extra = json.loads(data_bytes)
        except (ValueError, RecursionError):
            extra = None
        if not isinstance(extra, dict):
            raise ProtocolError("invalid_event", f"{kind}: the data block must be a JSON object")
        data = {**data, **extra}
    return Event(type=kind, data=data, payload=payload)
