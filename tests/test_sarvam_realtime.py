"""Sarvam AI's realtime speech-to-text API (`/speech-to-text-realtime/ws`) end to end: real daemon,
real Silero, real tiny.en, a raw client for every message, both endpointing modes, and input no
client library would send."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
import websockets

from satellite_asr.protocols import sarvam_realtime
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble
from tests.helpers import EXPECTED, PCM_FRAME_BYTES, fixture_16k, pcm16, read_all, running_daemon, same_words
from tests.helpers import send_all as send_all_messages

pytestmark = pytest.mark.timeout(180)

Messages = list[dict[str, Any]]
FIXTURE = "three_commands.wav"
END = {"event": "end"}


def url(daemon: Daemon, query: str = "language_code=en-IN") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{sarvam_realtime.PATH}{'?' + query if query else ''}"


def chunks(data: bytes, frame: int = PCM_FRAME_BYTES) -> list[dict[str, Any]]:
    """The audio as `audio_input` messages, base64 PCM, 100 ms each."""
    return [
        {"event": "audio_input", "audio": base64.b64encode(data[at : at + frame]).decode()}
        for at in range(0, len(data), frame)
    ]


def audio() -> bytes:
    return pcm16(fixture_16k(FIXTURE), 16000)


def is_audio(message: dict[str, Any] | str | bytes) -> bool:
    return isinstance(message, dict) and message.get("event") == "audio_input"


async def stream(target: str, *sent: dict[str, Any] | str | bytes, paced: bool = True) -> tuple[Messages, int | None]:
    return await send_all_messages(target, sent or (*chunks(audio()), END), None, paced, is_audio)


def events(messages: Messages) -> list[str]:
    return [m["event"] for m in messages]


def finals(messages: Messages) -> list[str]:
    return [m["text"] for m in of_type_event(messages, "transcript.final") if m["text"]]


def of_type_event(messages: Messages, event: str) -> Messages:
    return [m for m in messages if m.get("event") == event]


async def test_vad_endpointing_every_message_in_order() -> None:
    """`session.begin` echoing the settings; per command `vad.speech_start`, partials, `vad.speech_end`,
    one `transcript.final` (its `utterance_idx` from 0, with timestamps asked); `end`: `session.end`, 1000."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, "language_code=en-IN&return_timestamps=true&threshold=0.5"))
    assert code == 1000 and same_words(EXPECTED[FIXTURE], finals(messages)), messages
    begin = messages[0]
    assert begin["event"] == "session.begin" and begin["request_id"], begin
    assert begin["config"]["turn_detection"] == "vad" and begin["config"]["threshold"] == 0.5, begin
    assert messages[-1]["event"] == "session.end" and messages[-1]["total_utterances"] >= 3, messages[-1]
    assert messages[-1]["audio_duration_s"] > 5, messages[-1]
    order = [e for e in events(messages) if e != "transcript.partial"]
    finals_seen = of_type_event(messages, "transcript.final")
    assert order[1:-1] == ["vad.speech_start", "vad.speech_end", "transcript.final"] * len(finals_seen), order
    assert of_type_event(messages, "transcript.partial"), "balanced streams partials"
    assert [m["utterance_idx"] for m in finals_seen] == list(range(len(finals_seen)))
    for final in finals_seen:
        assert 0 <= final["start_s"] < final["end_s"] and "language" not in final, final


async def test_manual_endpointing_turns_are_the_clients() -> None:
    """`endpointing=manual`: no `vad.*` events; the client's `speech_start` / `speech_end` around the
    whole recording make one final holding all three commands, however long the pauses between them."""
    async with running_daemon() as daemon:
        sent = ({"event": "speech_start"}, *chunks(audio()), {"event": "speech_end"}, END)
        messages, code = await stream(url(daemon, "language_code=en-IN&endpointing=manual"), *sent)
    assert code == 1000 and not [e for e in events(messages) if e.startswith("vad.")], messages
    texts = finals(messages)
    assert len(texts) == 1 and same_words([" ".join(EXPECTED[FIXTURE])], texts), messages


async def test_auto_detects_and_simulated_sends_no_partials() -> None:
    """`language_code=auto`: each final carries the detected language (`en-IN`); `simulated`: no partials."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, "language_code=auto&stream_type=simulated"))
    assert code == 1000 and same_words(EXPECTED[FIXTURE], finals(messages)), messages
    assert not of_type_event(messages, "transcript.partial")
    assert {m["language"] for m in of_type_event(messages, "transcript.final")} == {"en-IN"}


async def test_ping_flush_and_config_update() -> None:
    """`ping`: `pong`; `flush` mid-command: its final at once; a `config.update` of what an utterance
    is decoded with (mode, stream type, language, prompt): `config.updated` naming them; one of the
    endpointing or VAD tuning: `invalid_config` naming it, the stream going on."""
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(json.dumps({"event": "ping"}))
        for message in chunks(audio()[: 12 * PCM_FRAME_BYTES]):
            await ws.send(json.dumps(message))
        await ws.send(json.dumps({"event": "flush"}))
        same = {"event": "config.update", "mode": "verbatim", "stream_type": "fast", "language_code": "en-IN"}
        await ws.send(json.dumps(same))
        await ws.send(json.dumps({"event": "config.update", "prompt": "kitchen lights", "stream_type": "simulated"}))
        await ws.send(json.dumps({"event": "config.update", "endpointing": "manual", "prompt": "lights"}))
        await ws.send(json.dumps({"event": "config.update", "threshold": 0.7}))
        await ws.send(json.dumps(END))
        messages = await read_all(ws)
    assert "pong" in events(messages) and finals(messages), messages
    applied = [m["applied"] for m in of_type_event(messages, "config.updated")]
    assert applied == [["language_code", "mode", "stream_type"], ["prompt", "stream_type"]], messages
    errors = of_type_event(messages, "error")
    assert [e["code"] for e in errors] == ["invalid_config"] * 2 and not any(e["is_fatal"] for e in errors), errors
    assert [e["message"].split(":")[0] for e in errors] == ["endpointing", "threshold"], errors
    assert "fixed when it opens" in errors[0]["message"] and messages[-1]["event"] == "session.end"


async def test_config_update_changes_language_prompt_and_partials_from_the_next_utterance() -> None:
    """Sarvam applies a new language, prompt and stream type at the next utterance: the command after
    the update is decoded with the prompt and no language (`auto`: detected), streams no partials, and
    its final carries the language detected; the command before it keeps what it began with. Another
    update during that command's speech applies only to what follows it."""
    engine = ContextRecordingEngineDouble()
    data = pcm16(fixture_16k("lights_on.wav"), 16000)
    update = {"event": "config.update", "language_code": "auto", "prompt": "Marigold room", "stream_type": "simulated"}
    async with running_daemon(engine) as daemon, websockets.connect(url(daemon)) as ws:
        before = await send_until_final(ws, data)
        await ws.send(json.dumps(update))
        head, tail = chunks(data)[:10], chunks(data)[10:]
        for message in head:  # the command has begun: the next update is for the one after it
            await ws.send(json.dumps(message))
        await ws.send(json.dumps({"event": "config.update", "language_code": "en-IN", "prompt": ""}))
        after = await send_until_final(ws, b"", tail)
        await ws.send(json.dumps(END))
        rest = await read_all(ws)
    assert engine.contexts[:2] == ["", "Marigold room"] and engine.languages[0] == "en", engine.contexts
    assert engine.languages[1] is None, engine.languages
    first, second = of_type_event(before, "transcript.final"), of_type_event(after, "transcript.final")
    assert same_words(EXPECTED["lights_on.wav"], [first[0]["text"]]) and "language" not in first[0], before
    assert same_words(EXPECTED["lights_on.wav"], [second[0]["text"]]) and second[0]["language"] == "en-IN", after
    assert of_type_event(before, "transcript.partial") and not of_type_event(after, "transcript.partial"), after
    assert [m["applied"] for m in of_type_event(after + rest, "config.updated")] == [
        ["language_code", "prompt", "stream_type"],
        ["language_code", "prompt"],
    ]


async def send_until_final(
    ws: websockets.ClientConnection, data: bytes, sent: list[dict[str, Any]] | None = None
) -> Messages:
    """`data` (or the messages `sent`) at microphone pace, then silence, until a `transcript.final`
    with words: every message read by then."""
    messages: Messages = []

    async def read() -> None:
        async for raw in ws:
            messages.append(json.loads(raw))
            if messages[-1]["event"] == "transcript.final" and messages[-1]["text"]:
                return

    reading = asyncio.create_task(read())
    silence = chunks(bytes(2 * 16000 * 3))
    for message in [*(sent if sent is not None else chunks(data)), *silence]:
        if reading.done():
            break
        await ws.send(json.dumps(message))
        await asyncio.sleep(0.1)
    await asyncio.wait_for(reading, 60)
    return messages


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("mode=translate", "translation into English"),
        ("language_code=xx-IN", "language_code must be auto or one of"),
        ("model=saaras:v3", "model must be one of saaras:v3-realtime"),
        ("sample_rate=44100", "sample_rate must be 8000 or 16000"),
        ("encoding=linear32", "encoding must be one of linear16"),
        ("endpointing=server", "endpointing must be one of vad, manual"),
        ("silence_duration_ms=-1", "silence_duration_ms"),
        ("keyterms=Sarvam", "keyterms must be a JSON array"),
        ("diarize=true", "unknown query parameter 'diarize'"),
    ],
)
async def test_a_bad_query_is_a_fatal_error_then_4000(query: str, words: str) -> None:
    """Sarvam's refusal of a setting: the fatal error (`status_code` 400), then the Close 4000 whose
    reason is the sentence, capped at 123 bytes."""
    async with running_daemon() as daemon, websockets.connect(url(daemon, query)) as ws:
        messages = await read_all(ws)
    assert [m["event"] for m in messages] == ["error"], messages
    error = messages[0]
    assert error["is_fatal"] and error["status_code"] == 400 and words in error["message"], error
    assert ws.close_code == 4000 and ws.close_reason and len(ws.close_reason.encode()) <= 123, ws.close_reason


REFUSALS = [
    ("not json", "invalid_message"),
    (json.dumps({"event": "audio_input", "audio": "***"}), "invalid_audio"),
    (json.dumps({"event": "audio_input", "audio": "", "rate": 1}), "invalid_message"),
    (json.dumps({"event": "speech_start"}), "invalid_message"),
    (json.dumps({"event": "config.update", "diarize": True}), "invalid_config"),
    (json.dumps({"event": "config.update", "threshold": "high"}), "invalid_config"),
    (json.dumps({"event": "transcribe"}), "invalid_message"),
    (b"\x00\x01", "invalid_message"),
]


@pytest.mark.parametrize(("message", "code"), REFUSALS)
async def test_a_refused_message_loses_nothing_else(message: str | bytes, code: str) -> None:
    """A bad message mid-stream (with `endpointing=vad`, `speech_start` is one): its non-fatal error,
    and the commands around it are all transcribed."""
    async with running_daemon() as daemon:
        sent = chunks(audio())
        messages, code_ = await stream(url(daemon), *sent[:5], message, *sent[5:], END)
    errors = of_type_event(messages, "error")
    assert [e["code"] for e in errors] == [code] and not errors[0]["is_fatal"] and errors[0]["message"], errors
    assert code_ == 1000 and same_words(EXPECTED[FIXTURE], finals(messages)), messages


async def test_the_key_by_api_subscription_key_and_refusals_in_sarvams_shape() -> None:
    """With `api_key` set: Sarvam's header is taken; a wrong key is a 403 in Sarvam's HTTP shape."""
    async with running_daemon(api_key="sarvam-key") as daemon:
        headers = {"API-SUBSCRIPTION-KEY": "sarvam-key"}
        async with websockets.connect(url(daemon), additional_headers=headers) as ws:
            begin = json.loads(await ws.recv())
        assert begin["event"] == "session.begin"
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url(daemon), additional_headers={"API-SUBSCRIPTION-KEY": "wrong"})
    response = refused.value.response
    assert response.status_code in {401, 403} and json.loads(response.body)["error"]["code"], response.body


async def test_idle_timeout_is_a_fatal_error_session_end_then_1008() -> None:
    """Nobody speaks for idle_timeout_s: Sarvam's inactivity ending: the fatal error, `session.end`, 1008."""
    async with running_daemon(idle_timeout_s=2) as daemon, websockets.connect(url(daemon)) as ws:
        messages = await asyncio.wait_for(read_all(ws), 60)
    assert events(messages) == ["session.begin", "error", "session.end"], messages
    error = messages[1]
    assert error["code"] == "idle_timeout" and error["is_fatal"] and "idle_timeout_s" in error["message"], error
    assert error["status_code"] == 408, error
    assert ws.close_code == 1008


async def test_over_max_sessions_is_a_fatal_error() -> None:
    """A second stream over max_sessions: a fatal error in Sarvam's shape; the first goes on."""
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(url(daemon)) as first,
    ):
        assert json.loads(await first.recv())["event"] == "session.begin"
        async with websockets.connect(url(daemon)) as second:
            refused = await read_all(second)
        assert [(m["event"], m["code"], m["is_fatal"]) for m in refused] == [("error", "server_busy", True)]
        assert refused[0]["status_code"] == 503, refused  # Sarvam's fatal rejections carry their HTTP status
        assert second.close_code == 1013
        await first.send(json.dumps({"event": "ping"}))
        assert json.loads(await first.recv())["event"] == "pong"


async def test_manual_endpointing_takes_vad_tuning_updates_as_unused() -> None:
    """With `endpointing=manual` Sarvam's VAD knobs are unused (Sarvam ignores them there, the URL's
    too): a `config.update` of them changes nothing, so it gets `config.updated`, not `invalid_config`."""
    query = "language_code=en-IN&endpointing=manual&threshold=0.5"
    async with running_daemon() as daemon, websockets.connect(url(daemon, query)) as ws:
        update = {"event": "config.update", "threshold": 0.3, "silence_duration_ms": 300, "min_speech_duration_ms": 90}
        await ws.send(json.dumps(update))
        await ws.send(json.dumps(END))
        messages = await read_all(ws)
    assert not of_type_event(messages, "error"), messages
    assert of_type_event(messages, "config.updated")[0]["applied"] == sorted(set(update) - {"event"}), messages


async def test_shutdown_sends_the_final_of_what_came_then_a_fatal_error_session_end_and_1001() -> None:
    """The daemon stopping mid-command: the final of the audio that came, then the fatal `shutdown`
    error, `session.end`, and 1001 (the pong says the audio before it was taken)."""
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        for message in chunks(audio())[:12]:
            await ws.send(json.dumps(message))
        await ws.send(json.dumps({"event": "ping"}))
        while json.loads(await ws.recv())["event"] != "pong":
            pass
        stopping = asyncio.create_task(daemon.stop())
        messages = await read_all(ws)
        await stopping
    assert finals(messages) and events(messages)[-2:] == ["error", "session.end"], messages
    error = messages[-2]
    assert error["code"] == "shutdown" and error["is_fatal"] and error["message"] and ws.close_code == 1001, error


@pytest.mark.parametrize(
    ("query", "turns", "settings"),
    [
        ("threshold=0.6", "adaptive", {"threshold": 0.6}),
        ("prefix_padding_ms=250", "adaptive", {"speech_pad_ms": 250}),
        ("min_speech_duration_ms=90", "adaptive", {"min_speech_ms": 90}),
        ("silence_duration_ms=500", "fixed", {"silence_ms": 500}),
    ],
)
async def test_vad_tuning_changes_its_own_setting_alone(query: str, turns: str, settings: dict[str, object]) -> None:
    """Sarvam's VAD knobs each set their daemon setting; only `silence_duration_ms` (the silence that
    ends a turn) takes the daemon's turn detection to fixed silence: a `threshold` or Pipecat's
    `prefix_padding_ms` alone must not make every command wait the whole `silence_ms`."""
    async with running_daemon() as daemon, websockets.connect(url(daemon, f"language_code=en-IN&{query}")) as ws:
        assert json.loads(await ws.recv())["event"] == "session.begin"
        (session,) = daemon.core.sessions.open_sessions()
        endpointing = session.options.endpointing
        assert daemon.core.settings.turn_detection == "adaptive"
        assert endpointing.turn_detection == turns, endpointing
        assert {name: getattr(endpointing, name) for name in settings} == settings, endpointing
