"""Mistral's realtime transcription API (`/v1/audio/transcriptions/realtime`) end to end: real
daemon, real Silero, real tiny.en, a raw WebSocket client for every message and for input no SDK
would send."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest
import websockets

from satellite_asr.audio import PcmDecoder
from satellite_asr.protocols import mistral
from satellite_asr.server import Daemon
from tests.doubles import FailsOnAWordEngineDouble, FirstFinalGatedEngineDouble
from tests.helpers import (
    EXPECTED,
    PCM_FRAME_BYTES,
    fixture_16k,
    normalise,
    of_type,
    pcm16,
    read_all,
    running_daemon,
    same_words,
    send_all,
)
from tests.test_speechmatics import encoded

pytestmark = pytest.mark.timeout(180)

Messages = list[dict[str, Any]]
FIXTURE = "three_commands.wav"
MODEL = "voxtral-mini-transcribe-realtime-2602"
FLUSH = {"type": "input_audio.flush"}
END = {"type": "input_audio.end"}
KEY = "mistral-key"


def url(daemon: Daemon, query: str = f"model={MODEL}") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{mistral.PATH}{'?' + query if query else ''}"


def audio() -> bytes:
    return pcm16(fixture_16k(FIXTURE), 16000)


def appends(data: bytes, frame: int = PCM_FRAME_BYTES) -> list[dict[str, Any]]:
    """`data` as `input_audio.append` messages of `frame` bytes (100 ms of 16 kHz PCM16 by default)."""
    return [
        {"type": "input_audio.append", "audio": base64.b64encode(data[at : at + frame]).decode()}
        for at in range(0, len(data), frame)
    ]


async def stream(
    target: str, *sent: dict[str, Any] | str | bytes, headers: dict[str, str] | None = None, paced: bool = False
) -> tuple[Messages, int | None]:
    """The `sent` messages (by default the fixture then `input_audio.end`); every message until the
    Close, and its code."""
    return await send_all(target, sent or (*appends(audio()), END), headers, paced, is_append)


def is_append(message: dict[str, Any] | str | bytes) -> bool:
    return isinstance(message, dict) and message["type"] == "input_audio.append"


def kinds(messages: Messages) -> list[str]:
    return [message["type"] for message in messages if message["type"] != "transcription.text.delta"]


def segments(messages: Messages) -> list[str]:
    return [message["text"] for message in of_type(messages, "transcription.segment")]


async def test_three_commands_every_message() -> None:
    """`session.created` (Mistral's default format), deltas while each command is heard, one
    `transcription.language`, a segment per command; `input_audio.end`: one `transcription.done`
    with the three, last, then a normal Close. The deltas joined are the transcript."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), *appends(audio()), END, paced=True)
    assert code == 1000
    created = messages[0]
    assert created["type"] == "session.created" and created["session"]["request_id"]
    assert created["session"]["model"] == MODEL
    assert created["session"]["audio_format"] == {"encoding": "pcm_s16le", "sample_rate": 16000}
    expected = ["session.created", "transcription.language", *["transcription.segment"] * 3, "transcription.done"]
    assert kinds(messages) == expected, kinds(messages)
    assert of_type(messages, "transcription.language") == [{"type": "transcription.language", "audio_language": "en"}]
    said = segments(messages)
    assert same_words(EXPECTED[FIXTURE], said), said
    done = messages[-1]
    assert done["text"] == " ".join(said) and done["model"] == MODEL and done["language"] == "en"
    assert [segment["text"] for segment in done["segments"]] == said
    assert all(s["type"] == "transcription_segment" and 0 <= s["start"] < s["end"] for s in done["segments"])
    assert done["usage"]["prompt_audio_seconds"] == round(len(audio()) / 32000)
    deltas = "".join(message["text"] for message in of_type(messages, "transcription.text.delta"))
    assert normalise(deltas) == normalise(done["text"]), deltas
    assert len(of_type(messages, "transcription.text.delta")) > 3, "words come while they are heard"


async def test_each_flush_is_a_done_of_the_words_since_the_last() -> None:
    """A flush midway through the first command: a done with its words so far; a flush with nothing
    new: nothing; the end: a done with the rest alone."""
    data = audio()
    middle = 12 * PCM_FRAME_BYTES
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), *appends(data[:middle]), FLUSH, FLUSH, *appends(data[middle:]), END)
    done = of_type(messages, "transcription.done")
    assert len(done) == 2 and code == 1000, kinds(messages)
    assert normalise(done[0]["text"]).split()[0] == normalise(EXPECTED[FIXTURE][0]).split()[0]
    rest = normalise(done[1]["text"])
    assert "what time is it" in rest and "garage door" in rest and not rest.startswith("turn"), rest
    assert done[1]["segments"][0]["start"] >= done[0]["segments"][-1]["end"]


@pytest.mark.parametrize(
    ("encoding", "rate", "ours"),
    [("pcm_mulaw", 8000, "pcmu"), ("pcm_f32le", 16000, "f32le"), ("pcm_s16le", 44100, "s16le")],
)
async def test_session_update_sets_the_format_before_the_audio(encoding: str, rate: int, ours: str) -> None:
    """`session.update` before the audio: `session.updated` with the new format (and the delay,
    echoed), and the audio in it decodes to the same three commands."""
    data = encoded(fixture_16k(FIXTURE), ours, rate)
    update = {
        "type": "session.update",
        "session": {"audio_format": {"encoding": encoding, "sample_rate": rate}, "target_streaming_delay_ms": 480},
    }
    frame = PcmDecoder(ours, rate).frame_bytes * rate // 10
    async with running_daemon() as daemon:
        messages, _ = await stream(url(daemon), update, *appends(data, frame), END)
    [updated] = of_type(messages, "session.updated")
    assert updated["session"]["audio_format"] == {"encoding": encoding, "sample_rate": rate}
    assert updated["session"]["target_streaming_delay_ms"] == 480
    assert same_words(EXPECTED[FIXTURE], segments(messages)), segments(messages)


def append(raw: bytes) -> dict[str, Any]:
    return {"type": "input_audio.append", "audio": base64.b64encode(raw).decode()}


REFUSALS = [
    (b"\x00\x01", "binary"),
    ("not json", "JSON"),
    ({"type": "input_audio.commit"}, "input_audio.commit"),
    ({"audio": "AAAA"}, "no type"),
    ({"type": "input_audio.append"}, "base64"),
    ({"type": "input_audio.append", "audio": "%%%"}, "not valid base64"),
    (append(b"\x00\x00\x00"), "dropped"),
    (append(bytes(mistral.MAX_APPEND_BYTES + 2)), str(mistral.MAX_APPEND_BYTES)),
    ({**append(b"\x00\x00"), "item": 1}, "item"),
    ({"type": "input_audio.flush", "now": True}, "now"),
    ({"type": "session.update"}, "session object"),
    ({"type": "session.update", "session": {"language": "fr"}}, "language"),
    ({"type": "session.update", "session": {"audio_format": {"encoding": "pcm_s16le", "sample_rate": 16000}}}, "once"),
    ({"type": "session.update", "session": {"target_streaming_delay_ms": 240}}, "once"),
]


@pytest.mark.parametrize(("message", "words"), REFUSALS)
async def test_a_refused_message_loses_nothing_else(message: Any, words: str) -> None:
    """A bad message after the first command: Mistral's error (400 and the daemon's sentence), and
    the stream goes on: all three commands come, in one done at the end."""
    data = audio()
    middle = 30 * PCM_FRAME_BYTES
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), *appends(data[:middle]), message, *appends(data[middle:]), END)
    [error] = of_type(messages, "error")
    assert error["error"]["code"] == 400 and words in error["error"]["message"], error
    assert same_words(EXPECTED[FIXTURE], segments(messages)), segments(messages)
    assert messages[-1]["type"] == "transcription.done" and code == 1000


@pytest.mark.parametrize("first", [append(b"\x00"), append(b""), {"type": "input_audio.append", "audio": "%%%"}])
async def test_an_append_that_feeds_no_audio_leaves_the_session_open_to_change(first: dict[str, Any]) -> None:
    """An update is refused once audio has started: an append refused (one odd byte, bad base64) or
    empty feeds no audio, so a `session.update` after it still sets the format."""
    data = encoded(fixture_16k(FIXTURE), "pcmu", 8000)
    update = {"type": "session.update", "session": {"audio_format": {"encoding": "pcm_mulaw", "sample_rate": 8000}}}
    async with running_daemon() as daemon:
        messages, _ = await stream(url(daemon), first, update, *appends(data, 800), END)
    [updated] = of_type(messages, "session.updated")
    assert updated["session"]["audio_format"] == {"encoding": "pcm_mulaw", "sample_rate": 8000}, messages
    assert same_words(EXPECTED[FIXTURE], segments(messages)), segments(messages)


@pytest.mark.parametrize(
    "update",
    [
        {"audio_format": {"encoding": "pcm_s32le", "sample_rate": 16000}},
        {"audio_format": {"encoding": "pcm_s16le", "sample_rate": 4000}},
        {"audio_format": {"encoding": "pcm_s16le"}},
        {"audio_format": "pcm_s16le"},
        {"target_streaming_delay_ms": -1},
        {"target_streaming_delay_ms": 2.5},
    ],
)
async def test_a_refused_update_keeps_the_session_as_it_was(update: dict[str, Any]) -> None:
    """A format or delay the daemon cannot take: 400 naming it; the default format still decodes."""
    async with running_daemon() as daemon:
        messages, _ = await stream(url(daemon), {"type": "session.update", "session": update}, *appends(audio()), END)
    [error] = of_type(messages, "error")
    named = next(iter(update)).split("_")[0]
    assert error["error"]["code"] == 400 and named in error["error"]["message"], error
    assert not of_type(messages, "session.updated") and len(segments(messages)) == 3


@pytest.mark.parametrize(
    ("query", "words"),
    [("", "model is required"), ("model=", "model is required"), (f"model={MODEL}&language=fr", "'language'")],
)
async def test_a_bad_query_is_an_error_event_then_1008(query: str, words: str) -> None:
    """Refused in the stream (the SDK raises the sentence from its handshake), before any session."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, query))
    assert [m["type"] for m in messages] == ["error"] and words in messages[0]["error"]["message"], messages
    assert messages[0]["error"]["code"] == 400 and code == 1008


async def test_an_engine_failure_is_an_error_and_the_stream_goes_on() -> None:
    """An engine that fails one command's decode: an error 500 (the clients report it), and the
    other commands' segments and the done still come."""
    async with running_daemon(FailsOnAWordEngineDouble("bedroom")) as daemon:
        messages, code = await stream(url(daemon))
    assert [e["error"]["code"] for e in of_type(messages, "error")] == [500], messages
    said = normalise(messages[-1]["text"])
    assert "what time is it" in said and "garage door" in said and code == 1000


async def test_next_commands_deltas_wait_for_the_segment_before_it() -> None:
    """With two decodes at once, the next command's words come after the segment before it."""
    engine = FirstFinalGatedEngineDouble()
    async with running_daemon(engine) as daemon, websockets.connect(url(daemon)) as ws:
        for message in appends(audio()):
            await ws.send(json.dumps(message))
            await asyncio.sleep(0.1)
        engine.gate.set()
        await ws.send(json.dumps(END))
        messages = await read_all(ws)
    first = next(at for at, m in enumerate(messages) if m["type"] == "transcription.segment")
    early = "".join(m["text"] for m in of_type(messages[:first], "transcription.text.delta"))
    assert not {"what", "time"} & set(normalise(early).split()), early
    assert same_words(EXPECTED[FIXTURE], segments(messages))


async def test_the_key_by_bearer_and_refusals_in_mistrals_shape() -> None:
    """`Authorization: Bearer` (the SDK's way) reaches the API; none or a wrong one: 401 at the
    upgrade with Mistral's error body; a plain GET: 426 in the same shape."""
    async with running_daemon(api_key=KEY) as daemon:
        messages, _ = await stream(url(daemon), END, headers={"Authorization": f"Bearer {KEY}"})
        assert messages[0]["type"] == "session.created"
        async with aiohttp.ClientSession() as http:
            for headers, status, code in [
                ({}, 401, "missing_api_key"),
                ({"Authorization": "Bearer wrong"}, 401, "invalid_api_key"),
                ({"Authorization": f"Bearer {KEY}"}, 426, "websocket_required"),
            ]:
                async with http.get(url(daemon).replace("ws", "http", 1), headers=headers) as response:
                    body = await response.json()
                    assert response.status == status and body["object"] == "error", body
                    assert body["code"] == status and body["type"] == code and body["message"], body


async def test_idle_timeout_sends_the_done_then_a_408() -> None:
    """Nobody speaks for idle_timeout_s after the commands: their done, then error 408, then 1001."""
    async with running_daemon(idle_timeout_s=2) as daemon, websockets.connect(url(daemon)) as ws:
        for message in appends(audio()):
            await ws.send(json.dumps(message))
        messages = await read_all(ws)
    assert kinds(messages)[-2:] == ["transcription.done", "error"], kinds(messages)
    assert messages[-1]["error"]["code"] == 408 and "idle_timeout_s" in messages[-1]["error"]["message"]
    assert same_words(EXPECTED[FIXTURE], segments(messages)) and ws.close_code == 1001


async def test_shutdown_sends_the_done_of_what_came_then_a_503() -> None:
    data = audio()
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        for message in appends(data[: len(data) // 4]):
            await ws.send(json.dumps(message))
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(daemon.stop())
        messages = await read_all(ws)
        await stopping
    assert kinds(messages)[-2:] == ["transcription.done", "error"], kinds(messages)
    assert messages[-2]["text"] and messages[-1]["error"]["code"] == 503 and ws.close_code == 1001


async def test_over_max_sessions_is_a_503_and_the_open_session_goes_on() -> None:
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(url(daemon)) as first,
    ):
        assert json.loads(await first.recv())["type"] == "session.created"
        refused, code = await stream(url(daemon))
        for message in (*appends(audio()), END):
            await first.send(json.dumps(message))
        messages = await read_all(first)
    assert [(m["type"], m["error"]["code"]) for m in refused] == [("error", 503)] and code == 1013, refused
    assert same_words(EXPECTED[FIXTURE], segments(messages)) and messages[-1]["type"] == "transcription.done"
