"""Meta's real-time speech recognition API (`/v1/asr/realtime`) end to end: real daemon, real
Silero, real tiny.en, a raw WebSocket client for every message and for input no client would send."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import aiohttp
import pytest
import websockets

from satellite_asr.protocols import meta
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble, FailsOnAWordEngineDouble, FirstFinalGatedEngineDouble
from tests.helpers import (
    EXPECTED,
    PCM_FRAME_BYTES,
    eventually,
    fixture_16k,
    is_binary,
    normalise,
    of_type,
    pcm16,
    pcm_frames,
    read_all,
    running_daemon,
    same_words,
    send_all,
)
from tests.test_docs import ROOT
from tests.test_limits import keep_sending
from tests.test_mistral import Messages

pytestmark = pytest.mark.timeout(180)

FIXTURE = "three_commands.wav"
KEY = "meta-key"
HANDSHAKE = {
    "authorization": {"accessToken": f"Bearer {KEY}"},
    "audioEncoding": "PCM_16KHZ",
    "model": "muse-voice-transcribe-1.0",
    "mode": "ENDPOINTING",
    "partialMode": "CUMULATIVE",
    "emitAudioProgress": False,
}
END = {"type": "endStream"}


def url(daemon: Daemon, query: str = "") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{meta.PATH}{'?' + query if query else ''}"


def audio(rate: int = 16000) -> bytes:
    return pcm16(fixture_16k(FIXTURE), rate)


async def stream(
    target: str, *sent: dict[str, Any] | str | bytes, headers: dict[str, str] | None = None, paced: bool = False
) -> tuple[Messages, int | None]:
    """The `sent` messages (by default the handshake, the fixture, `endStream`); every message until
    the Close, and its code."""
    return await send_all(target, sent or (HANDSHAKE, *pcm_frames(audio()), END), headers, paced, is_binary)


def kinds(messages: Messages) -> list[str]:
    """The message types, partials and progress left out; the acknowledgement as `ack`."""
    named = [message.get("type", "ack") for message in messages]
    return [kind for kind in named if kind not in ("transcript", "audioProgress")]


def events(messages: Messages) -> Messages:
    """The messages but the acknowledgement, which has no `type`."""
    return [message for message in messages if "type" in message]


def completed(messages: Messages) -> list[str]:
    return [m["transcript"] for m in of_type(events(messages), "speechComplete") if m["transcript"]]


async def test_three_commands_every_message() -> None:
    """The acknowledgement with a session id; for each command a turn: `speechStart`, cumulative
    partials of its words, `speechEnd`, `speechComplete` with the final text; then the Close 1000."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), HANDSHAKE, *pcm_frames(audio()), END, paced=True)
    assert code == 1000
    assert set(messages[0]) == {"sessionId"} and messages[0]["sessionId"], messages[0]
    assert kinds(messages) == ["ack", *["speechStart", "speechEnd", "speechComplete"] * 3], kinds(messages)
    assert same_words(EXPECTED[FIXTURE], completed(messages)), completed(messages)
    turns = [m["turnId"] for m in of_type(events(messages), "speechStart")]
    assert len(set(turns)) == 3
    for turn in turns:
        mine = [m for m in messages if m.get("turnId") == turn]
        assert [m["type"] for m in mine if m["type"] != "transcript"] == ["speechStart", "speechEnd", "speechComplete"]
        partials = of_type(events(mine), "transcript")
        assert partials and all(m["final"] is False and m["transcript"] for m in partials), mine
        assert messages.index(partials[-1]) < messages.index(of_type(events(mine), "speechEnd")[0])


async def test_the_urls_session_id_is_echoed_and_audio_progress_counts_the_audio() -> None:
    """Pipecat's `?sessionId=` comes back in the acknowledgement; with `emitAudioProgress` each
    audio message is answered by the ms of audio received so far; 24 kHz is heard at its rate."""
    handshake = {**HANDSHAKE, "emitAudioProgress": True, "audioEncoding": "PCM_24KHZ"}
    frames = pcm_frames(audio(24000), 4800)
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, "sessionId=stream-42"), handshake, *frames, END)
    assert messages[0] == {"sessionId": "stream-42"} and code == 1000
    progress = [m["audioProcessedMs"] for m in of_type(events(messages), "audioProgress")]
    assert progress == [100 * n for n in range(1, len(frames))] + [round(len(audio(24000)) / 48)], progress
    assert same_words(EXPECTED[FIXTURE], completed(messages)), completed(messages)


async def test_language_bias_and_keywords_reach_the_engine() -> None:
    """`languageBias` by Meta's name (any case) or by code is the decode language; `keywords` bias it."""
    engine = ContextRecordingEngineDouble()
    handshake = {**HANDSHAKE, "languageBias": ["english", "en-US"], "keywords": ["Aoife", " Zoë "], "zdrOverride": True}
    async with running_daemon(engine) as daemon:
        messages, code = await stream(url(daemon), handshake, *pcm_frames(audio()), END)
    assert code == 1000 and completed(messages)
    assert engine.names and all(names[:2] == ("Aoife", "Zoë") for names in engine.names), engine.names
    assert set(engine.languages) == {"en"}


@pytest.mark.parametrize(
    ("handshake", "words"),
    [
        ("not json", "the handshake, a JSON object"),
        (b"\x00\x01", "the handshake, a JSON object"),
        ({**HANDSHAKE, "audioEncoding": "OPUS"}, "audioEncoding 'OPUS'"),
        ({k: v for k, v in HANDSHAKE.items() if k != "audioEncoding"}, "audioEncoding is missing"),
        ({**HANDSHAKE, "voice": "x"}, "no field 'voice'"),
        ({**HANDSHAKE, "model": ""}, "model"),
        ({**HANDSHAKE, "mode": "DIARIZATION"}, "speaker diarization"),
        ({**HANDSHAKE, "mode": "PUSH_TO_TALK"}, "turns the client delimits"),
        ({**HANDSHAKE, "mode": "x"}, "mode must be ENDPOINTING"),
        ({**HANDSHAKE, "partialMode": "DELTA"}, "CUMULATIVE partials only"),
        ({**HANDSHAKE, "emitAudioProgress": "yes"}, "emitAudioProgress must be true or false"),
        ({**HANDSHAKE, "zdrOverride": 1}, "zdrOverride must be true or false"),
        ({**HANDSHAKE, "languageBias": ["French"]}, "'fr' is not one of the languages of this engine"),
        ({**HANDSHAKE, "languageBias": ["Klingon"]}, "'Klingon' is not one of the languages"),
        ({**HANDSHAKE, "languageBias": "English"}, "languageBias must be a list"),
        ({**HANDSHAKE, "keywords": [1]}, "keywords must be a list of texts"),
        ({**HANDSHAKE, "keywords": ["x" * 5000]}, "max_context_chars"),
    ],
)
async def test_a_bad_handshake_is_an_error_then_1008(handshake: Any, words: str) -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), handshake)
    assert [m["type"] for m in messages] == ["error"] and words in messages[0]["message"], messages
    assert messages[0]["code"] == "invalid_handshake" and code == 1008


@pytest.mark.parametrize(
    ("query", "words"), [("model=x", "unknown query parameter 'model'"), ("sessionId=", "sessionId")]
)
async def test_a_bad_query_is_refused_in_band(query: str, words: str) -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, query), HANDSHAKE)
    assert [m["type"] for m in messages] == ["error"] and words in messages[0]["message"] and code == 1008, messages
    assert messages[0]["code"] == "invalid_query_parameter"


@pytest.mark.parametrize(
    ("message", "words"),
    [
        ("not json", "not JSON"),
        (b"\x00", "whole"),
        ({"type": "endStream", "x": 1}, "no field 'x'"),
        ({"type": "finalize"}, "unknown type 'finalize'; expected endStream"),
        (HANDSHAKE, "the message has no type"),
    ],
)
async def test_a_refused_message_loses_nothing_else(message: Any, words: str) -> None:
    """A bad message midway: Meta's error with the sentence; the stream goes on and every command
    is still heard."""
    data = audio()
    middle = 12 * PCM_FRAME_BYTES
    async with running_daemon() as daemon:
        messages, code = await stream(
            url(daemon), HANDSHAKE, *pcm_frames(data[:middle]), message, *pcm_frames(data[middle:]), END
        )
    errors = of_type(events(messages), "error")
    assert len(errors) == 1 and words in errors[0]["message"], errors
    assert same_words(EXPECTED[FIXTURE], completed(messages)) and code == 1000


async def test_an_engine_failure_is_an_error_its_turn_completes_and_the_stream_goes_on() -> None:
    async with running_daemon(FailsOnAWordEngineDouble("bedroom")) as daemon:
        messages, code = await stream(url(daemon))
    assert [e["code"] for e in of_type(events(messages), "error")] == ["engine_error"], messages
    said = normalise(" ".join(completed(messages)))
    assert "what time is it" in said and "garage door" in said and code == 1000
    assert len(of_type(events(messages), "speechStart")) == len(of_type(events(messages), "speechComplete")) == 3


async def test_the_key_in_the_handshake_or_the_header_and_refusals_in_metas_shape() -> None:
    """The handshake's `Bearer KEY` (both clients' way), the key alone there, or `Authorization:
    Bearer`: accepted. None or a wrong one: the 401's error, then 1008, before anything else in the
    handshake is read. A plain GET: 426 in Meta's shape."""
    no_key = {k: v for k, v in HANDSHAKE.items() if k != "authorization"}
    async with running_daemon(api_key=KEY) as daemon:
        for handshake, headers in [
            (HANDSHAKE, None),
            ({**no_key, "authorization": {"accessToken": KEY}}, None),
            (no_key, {"Authorization": f"Bearer {KEY}"}),
        ]:
            messages, code = await stream(url(daemon), handshake, END, headers=headers)
            assert kinds(messages) == ["ack"] and code == 1000, messages
        for handshake, code_name in [
            (no_key, "missing_api_key"),
            ({**HANDSHAKE, "authorization": {"accessToken": "Bearer wrong"}}, "invalid_api_key"),
            ({**no_key, "voice": "x", "authorization": {"accessToken": "wrong"}}, "invalid_api_key"),
        ]:
            messages, code = await stream(url(daemon), handshake)
            assert [(m["type"], m["code"]) for m in messages] == [("error", code_name)] and code == 1008, messages
        async with (
            aiohttp.ClientSession() as http,
            http.get(url(daemon).replace("ws", "http", 1)) as response,
        ):
            body = await response.json()
    assert response.status == 426 and body["type"] == "error" and body["code"] == "websocket_required", body


async def test_no_handshake_within_the_first_message_timeout_is_an_error() -> None:
    async with running_daemon(first_message_timeout_s=1) as daemon, websockets.connect(url(daemon)) as ws:
        messages = await read_all(ws)
    assert [(m["type"], m["code"]) for m in messages] == [("error", "timeout")] and ws.close_code == 1008


async def test_idle_timeout_completes_the_turns_then_an_error_1001() -> None:
    async with running_daemon(idle_timeout_s=2) as daemon, websockets.connect(url(daemon)) as ws:
        for message in (HANDSHAKE, *pcm_frames(audio())):
            await ws.send(json.dumps(message) if isinstance(message, dict) else message)
        messages = await read_all(ws)
    assert kinds(messages)[-1] == "error" and messages[-1]["code"] == "idle_timeout", kinds(messages)
    assert "idle_timeout_s" in messages[-1]["message"] and ws.close_code == 1001
    assert same_words(EXPECTED[FIXTURE], completed(messages))


async def test_idle_timeout_closes_a_stream_whose_audio_trickles() -> None:
    """A client (a double) sending 100 ms of silence each second: Meta's idle clock measures audio
    missing, not silence, and this one falls 0.9 s behind real time each second, so it is still
    closed at idle_timeout_s, with the idle error naming the setting (no slot held for ever)."""
    async with running_daemon(idle_timeout_s=2) as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(json.dumps(HANDSHAKE))
        trickling = keep_sending(ws.send, itertools.repeat(bytes(PCM_FRAME_BYTES)), 1.0)
        messages = await asyncio.wait_for(read_all(ws), 30)
        trickling.cancel()
    assert kinds(messages)[-1] == "error" and messages[-1]["code"] == "idle_timeout", kinds(messages)
    assert "behind real time" in messages[-1]["message"] and ws.close_code == 1001, messages[-1]


async def test_shutdown_completes_the_turn_in_progress_then_an_error_1001() -> None:
    data = audio()
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        for message in (HANDSHAKE, *pcm_frames(data[: len(data) // 4])):
            await ws.send(json.dumps(message) if isinstance(message, dict) else message)
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(daemon.stop())
        messages = await read_all(ws)
        await stopping
    assert kinds(messages)[-2:] == ["speechComplete", "error"], kinds(messages)
    assert messages[-1]["code"] == "shutdown" and ws.close_code == 1001


async def test_shutdown_closes_a_connection_awaiting_its_handshake() -> None:
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        await asyncio.sleep(0.3)
        stopping = asyncio.create_task(daemon.stop())
        messages = await read_all(ws)
        await stopping
    assert [(m["type"], m["code"]) for m in messages] == [("error", "shutdown")] and ws.close_code == 1001


async def test_over_max_sessions_is_the_close_1013_alone_and_the_open_session_goes_on() -> None:
    """No error event: both clients would take it for a refusal to give up on (test_meta_clients)."""
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(url(daemon)) as first,
    ):
        await first.send(json.dumps(HANDSHAKE))
        assert "sessionId" in json.loads(await first.recv())
        refused, code = await stream(url(daemon), HANDSHAKE)
        for message in (*pcm_frames(audio()), END):
            await first.send(json.dumps(message) if isinstance(message, dict) else message)
        messages = await read_all(first)
    assert refused == [] and code == 1013, refused
    assert daemon.core.metrics.errors.labels("server_busy")._value.get() == 1
    assert same_words(EXPECTED[FIXTURE], completed(messages))


async def test_a_message_over_1_mib_closes_1009_as_the_docs_say() -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), HANDSHAKE, bytes(1 << 20 | 2))
    assert kinds(messages) in ([], ["ack"]) and code == 1009, (messages, code)
    assert "closes the connection with 1009" in (ROOT / "docs" / "meta.md").read_text()


@pytest.mark.parametrize("first", [b"\x00\x01" * 160, "not json", "[1, 2]"])
async def test_a_client_without_the_key_gets_the_keys_refusal_whatever_its_first_message(first: str | bytes) -> None:
    """As docs/meta.md says: the key is checked before anything else in the handshake, so a client
    without it learns nothing from the refusal of its first message (audio, not JSON), only the 401's error."""
    async with running_daemon(api_key=KEY) as daemon:
        messages, code = await stream(url(daemon), first)
    assert [(m["type"], m["code"]) for m in messages] == [("error", "missing_api_key")] and code == 1008, messages
    assert "or in the first message's authorization.accessToken" in messages[0]["message"], messages
    assert "whatever its handshake" in (ROOT / "docs" / "meta.md").read_text()


async def test_with_two_decodes_at_once_each_turns_messages_come_in_order() -> None:
    """The first final held while the next commands are heard (two decodes at once): a later turn's
    `speechStart` may come early, but its partials, `speechEnd` and `speechComplete` wait for the
    turn before it to complete, and every turn completes with its words, in order (LiveKit emits a
    turn's events only once the turns before it completed)."""
    engine = FirstFinalGatedEngineDouble()
    async with running_daemon(engine) as daemon:
        streaming = asyncio.ensure_future(stream(url(daemon), HANDSHAKE, *pcm_frames(audio()), END, paced=True))
        # the third command heard while the first's final is still held
        await eventually(lambda: any(session.utterances >= 3 for session in daemon.core.sessions.open_sessions()))
        engine.gate.set()
        messages, code = await streaming
    assert code == 1000
    turns = [m["turnId"] for m in of_type(events(messages), "speechStart")]
    assert len(turns) == 3 and turns == sorted(turns), turns
    order = [(m["type"], m["turnId"]) for m in events(messages) if m["type"] != "transcript"]
    assert order.index(("speechStart", turns[1])) < order.index(("speechComplete", turns[0])), order
    done: set[int] = set()
    for m in events(messages):
        if m["type"] in ("transcript", "speechEnd", "speechComplete"):
            assert all(earlier in done for earlier in turns if earlier < m["turnId"]), (m, kinds(messages))
        if m["type"] == "speechComplete":
            done.add(m["turnId"])
    for turn in turns:
        mine = [m["type"] for m in events(messages) if m.get("turnId") == turn and m["type"] != "transcript"]
        assert mine == ["speechStart", "speechEnd", "speechComplete"], (turn, mine)
    assert [m["turnId"] for m in of_type(events(messages), "speechComplete")] == turns
    assert same_words(EXPECTED[FIXTURE], completed(messages)), completed(messages)


async def test_end_stream_while_finals_are_decoding_still_completes_every_turn() -> None:
    """`endStream` comes while the first turn's final is still held: the Close 1000 waits for every
    turn's `speechComplete` (LiveKit fails a stream that ends with a turn begun and not completed)."""
    engine = FirstFinalGatedEngineDouble()
    async with running_daemon(engine) as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(json.dumps(HANDSHAKE))
        for frame in pcm_frames(audio()):
            await ws.send(frame)
        await ws.send(json.dumps(END))
        reading = asyncio.ensure_future(read_all(ws))
        await eventually(lambda: bool(engine.finals))
        assert not reading.done()
        engine.gate.set()
        messages = await reading
    assert ws.close_code == 1000
    assert len(of_type(events(messages), "speechStart")) == len(of_type(events(messages), "speechComplete")) == 3
    assert same_words(EXPECTED[FIXTURE], completed(messages)), completed(messages)
