"""One event's messages at a time on every streaming API connection (`StreamingConnection.emit`): the
session's tasks emit at once (the final of one utterance from its decode, the next utterance's
partials from the partial decoder), and a newer partial decided and sent while a final and the
partial it held back were being written must not go out before that older partial. Real daemon, a
raw WebSocket client, one API of each connection class."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import websockets

from satellite_asr.events import FinalTranscript, PartialTranscript, SpeechStarted, SpeechStopped
from satellite_asr.protocols import deepgram, meta, speechmatics
from satellite_asr.protocols.streaming_apis import StreamingApiHandler
from satellite_asr.server import Daemon
from tests.doubles import GatedEngineDouble
from tests.helpers import eventually, fixture_16k, pcm16, pcm_frames, read_all, running_daemon
from tests.test_meta import END as META_END
from tests.test_meta import HANDSHAKE as META_HANDSHAKE
from tests.test_speechmatics import END as SPEECHMATICS_END
from tests.test_speechmatics import START as SPEECHMATICS_START

Messages = list[dict[str, Any]]
Shown = tuple[str, str]
"""A transcript message as ("partial" or "final", its text)."""


def speechmatics_shown(message: dict[str, Any]) -> Shown | None:
    kind = {"AddPartialTranscript": "partial", "AddTranscript": "final"}.get(message.get("message", ""))
    if kind is None:
        return None
    return kind, " ".join(r["alternatives"][0]["content"] for r in message["results"] if r["type"] == "word")


def deepgram_shown(message: dict[str, Any]) -> Shown | None:
    if message.get("type") != "Results":
        return None
    return "final" if message["is_final"] else "partial", message["channel"]["alternatives"][0]["transcript"]


def meta_shown(message: dict[str, Any]) -> Shown | None:
    if message.get("type") == "speechComplete":
        return "final", message["transcript"]
    if message.get("type") == "transcript":
        return "partial", message["transcript"]
    return None


@dataclass(frozen=True)
class Api:
    """How a raw client opens, ends and reads one stream of the API."""

    path: str
    query: str
    handler: Callable[[Daemon], StreamingApiHandler]
    first: dict[str, Any] | None
    end: str | bytes
    shown: Callable[[dict[str, Any]], Shown | None]

    def url(self, daemon: Daemon) -> str:
        return f"ws://127.0.0.1:{daemon.http_port}{self.path}{'?' + self.query if self.query else ''}"


APIS = {
    "speechmatics": Api(  # InOrderConnection
        speechmatics.PATH, "", lambda d: d.speechmatics, SPEECHMATICS_START, SPEECHMATICS_END, speechmatics_shown
    ),
    "meta": Api(  # SettingsMessageConnection (an ErrorEventConnection)
        meta.PATH, "", lambda d: d.meta, META_HANDSHAKE, json.dumps(META_END), meta_shown
    ),
    "deepgram": Api(  # a StreamingConnection with PendingFinals of its own
        deepgram.PATH,
        "encoding=linear16&sample_rate=16000&interim_results=true",
        lambda d: d.deepgram,
        None,
        json.dumps({"type": "CloseStream"}),
        deepgram_shown,
    ),
}


def slow_client_writes_double(send_json: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """aiohttp's WebSocket write, waiting first as one to a client whose socket buffer is full does:
    aiohttp's own suspends only past its buffer's limit, and Python 3.12's `wait_for` (`write_within`)
    adds no suspension of its own (3.11's did), so without this a final's write need not yield at all."""

    async def write(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0)
        await send_json(*args, **kwargs)

    return write


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", APIS)
async def test_a_newer_partial_sent_while_a_final_is_written_follows_the_older_one_it_released(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Utterance 2's partial 'older' is held behind utterance 1's final; the final is emitted and,
    at once, utterance 2's newer partial: the client sees the final, then 'older', then 'newer'
    (never 'newer' and then the stale 'older'). The session's events are given to the daemon's
    real connection directly, where the session gives them: no engine's timing can place a partial
    in the moment of a final's write every time."""
    api = APIS[name]
    async with running_daemon() as daemon, websockets.connect(api.url(daemon)) as ws:
        if api.first is not None:
            await ws.send(json.dumps(api.first))
        handler = api.handler(daemon)
        await eventually(lambda: any(c.input is not None for c in handler.serving))
        (connection,) = handler.serving
        monkeypatch.setattr(connection.ws, "send_json", slow_client_writes_double(connection.ws.send_json))
        await connection.emit(SpeechStarted(1, 0.0))
        await connection.emit(SpeechStopped(1, 1.0))
        await connection.emit(SpeechStarted(2, 1.5))
        await connection.emit(PartialTranscript(2, "older", ""))  # held: utterance 1's final is still to come
        await asyncio.gather(
            connection.emit(FinalTranscript(1, "one", True, 0.0, 1.0, "en", "silence")),
            connection.emit(PartialTranscript(2, "older newer", "")),
        )
        await ws.send(api.end)
        messages = await read_all(ws)
    shown = [s for s in map(api.shown, messages) if s is not None and s[1]]
    assert shown == [("final", "one"), ("partial", "older"), ("partial", "older newer")], messages


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("name", "control"),
    [
        ("speechmatics", SPEECHMATICS_END),  # the end of the stream: its finals, then the Close
        ("deepgram", json.dumps({"type": "Finalize"})),  # a flush: its final answers it, the stream goes on
    ],
)
async def test_a_flush_or_the_end_waiting_for_a_final_gets_it_while_it_is_emitted(name: str, control: str) -> None:
    """The client's flush or end of stream waits (on the handler's task) for the final still
    decoding, which the session's task then emits: emitting it must not wait for that flush. A
    lock taken around the control as around `emit` would hang here (the timeout fails it)."""
    api = APIS[name]
    engine = GatedEngineDouble()
    command = pcm16(fixture_16k("lights_on.wav"), 16000)
    async with running_daemon(engine) as daemon, websockets.connect(api.url(daemon)) as ws:
        if api.first is not None:
            await ws.send(json.dumps(api.first))
        for frame in pcm_frames(command):
            await ws.send(frame)
        await eventually(lambda: bool(engine.finals))  # a final decode of the command waits for the gate
        await ws.send(control)
        (connection,) = api.handler(daemon).serving
        assert connection.input is not None
        session = connection.input.session
        await eventually(lambda: session.pending_finals == 1)
        engine.gate.set()
        if control != api.end:
            await ws.send(api.end)
        messages = await read_all(ws)
    finals = [text for kind, text in filter(None, map(api.shown, messages)) if kind == "final" and text]
    assert len(finals) == 1 and "light" in finals[0].lower(), messages
