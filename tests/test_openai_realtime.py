"""OpenAI Realtime transcription end to end: real daemon, real Silero, real tiny.en, and real clients
(the official `openai` SDK, LiveKit's `openai.STT`, a raw WebSocket client for the beta shape and
for input no SDK would send)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import websockets
from openai import AsyncOpenAI
from websockets.exceptions import ConnectionClosed

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.protocols import openai_realtime
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble, CrashingEngineDouble
from tests.helpers import (
    CLOSE_OPCODE,
    EXPECTED,
    HELD_BACK_KEEPALIVE,
    TEXT_OPCODE,
    client_frame,
    close_code_after_oversized_frame,
    close_while_throttled,
    eventually,
    fixture_16k,
    leave_while_throttled,
    normalise,
    of_type,
    pcm16,
    read_server_frame,
    read_server_frames_until_close,
    running_daemon,
    same_words,
    traced_client,
    websocket_upgrade,
)
from tests.home_assistant_double import running_home_assistant

pytestmark = pytest.mark.timeout(180)

Events = list[dict[str, Any]]
CHUNK_S = 0.1


def chunks(data: bytes, bytes_per_second: int) -> list[str]:
    """Base64 appends of `CHUNK_S` of audio each."""
    step = int(bytes_per_second * CHUNK_S) // 2 * 2
    return [base64.b64encode(data[i : i + step]).decode() for i in range(0, len(data), step)]


def ga_update(**input_fields: Any) -> dict[str, Any]:
    return {"type": "transcription", "audio": {"input": input_fields}}


def sdk_client(daemon: Daemon) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"http://127.0.0.1:{daemon.http_port}/v1", api_key="not-checked")


def realtime_url(daemon: Daemon, query: str = "?intent=transcription") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}/v1/realtime{query}"


async def sdk_events(connection: Any, done: Callable[[Events], bool]) -> Events:
    """Server events (as dicts) from an SDK connection until `done` says so."""
    events: Events = []
    async for event in connection:
        events.append(event.to_dict())
        if done(events):
            return events
    raise AssertionError(f"connection ended early: {events}")


async def raw_events(ws: websockets.ClientConnection, done: Callable[[Events], bool]) -> Events:
    events: Events = []
    while not done(events):
        events.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
    return events


def completed(events: Events) -> Events:
    return of_type(events, "conversation.item.input_audio_transcription.completed")


def count(kind: str, n: int) -> Callable[[Events], bool]:
    return lambda events: len(of_type(events, kind)) >= n


def finals(n: int) -> Callable[[Events], bool]:
    return lambda events: len(completed(events)) + len(of_type(events, "error")) >= n


def transcripts(events: Events) -> list[str]:
    return [event["transcript"] for event in completed(events)]


def deltas_by_item(events: Events) -> dict[str, str]:
    joined: dict[str, str] = {}
    for event in of_type(events, "conversation.item.input_audio_transcription.delta"):
        joined[event["item_id"]] = joined.get(event["item_id"], "") + event["delta"]
    return joined


def delta_mismatches(daemon: Daemon) -> float:
    return float(daemon.core.metrics.realtime_delta_mismatches._value.get())


def assert_item_lifecycle(events: Events, *, vad: bool) -> None:
    """Each item: (speech_started, speech_stopped with VAD), committed, added, then completed once,
    in that order; items chained by previous_item_id."""
    committed = of_type(events, "input_audio_buffer.committed")
    assert [c["previous_item_id"] for c in committed] == [None, *[c["item_id"] for c in committed[:-1]]]
    for commit in committed:
        item_id = commit["item_id"]
        order = [e["type"] for e in events if e.get("item_id") == item_id or e.get("item", {}).get("id") == item_id]
        lifecycle = [t for t in order if not t.endswith(".delta")]
        expected = ["input_audio_buffer.committed", "conversation.item.added"]
        if vad:
            expected = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", *expected]
        assert lifecycle == [*expected, "conversation.item.input_audio_transcription.completed"], lifecycle
        assert order.index("conversation.item.input_audio_transcription.completed") == len(order) - 1


async def test_official_sdk_server_vad_streams_deltas_that_add_up_to_each_final() -> None:
    audio = pcm16(fixture_16k("three_commands.wav"))
    async with (
        running_daemon() as daemon,
        sdk_client(daemon).realtime.connect(extra_query={"intent": "transcription"}) as connection,
    ):
        created = await connection.recv()
        assert created.type == "session.created"
        turn = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}
        await connection.session.update(
            session=ga_update(
                format={"type": "audio/pcm", "rate": 24000},
                transcription={"model": "gpt-4o-transcribe", "language": "en"},
                turn_detection=turn,
            )
        )
        updated = await connection.recv()
        assert updated.type == "session.updated"
        assert updated.to_dict()["session"]["audio"]["input"]["turn_detection"] == turn
        for piece in chunks(audio, 48000):  # at microphone pace, so partials (deltas) come during speech
            await connection.input_audio_buffer.append(audio=piece)
            await asyncio.sleep(CHUNK_S)
        events = await sdk_events(connection, finals(3))
    assert of_type(events, "error") == []
    assert same_words(EXPECTED["three_commands.wav"], transcripts(events))
    assert_item_lifecycle(events, vad=True)
    joined = deltas_by_item(events)
    rewritten = [e for e in completed(events) if joined.get(e["item_id"]) != e["transcript"]]
    assert len(rewritten) == delta_mismatches(daemon), "an item whose deltas do not add up is counted"
    starts = [e["audio_start_ms"] for e in of_type(events, "input_audio_buffer.speech_started")]
    stops = [e["audio_end_ms"] for e in of_type(events, "input_audio_buffer.speech_stopped")]
    assert all(a < b for a, b in zip(starts, stops, strict=True)) and stops[0] < starts[1] and stops[1] < starts[2]


async def test_semantic_vad_low_eagerness_keeps_a_paused_command_in_one_item() -> None:
    audio = pcm16(fixture_16k("turns/dev_paused_01.wav"))  # "set a timer for ... ten minutes"
    async with (
        running_daemon() as daemon,
        sdk_client(daemon).realtime.connect(extra_query={"intent": "transcription"}) as connection,
    ):
        await connection.session.update(session=ga_update(turn_detection={"type": "semantic_vad", "eagerness": "low"}))
        for piece in chunks(audio, 48000):
            await connection.input_audio_buffer.append(audio=piece)
        events = await sdk_events(connection, finals(1))
        session = of_type(events, "session.updated")[0]["session"]
        assert session["audio"]["input"]["turn_detection"] == {"type": "semantic_vad", "eagerness": "low"}
        assert daemon.core.sessions  # the session lives on after its item
    assert same_words(["set a timer for ten minutes"], transcripts(events))
    assert_item_lifecycle(events, vad=True)


async def test_manual_commit_without_turn_detection() -> None:
    """turn_detection null: nothing ends an item but the client's commit; a commit of silence is an
    item with an empty transcript, a commit of nothing an error."""
    async with running_daemon() as daemon, sdk_client(daemon).realtime.connect() as connection:
        await connection.session.update(session=ga_update(turn_detection=None))
        for name in ("weather.wav", "timer.wav"):
            for piece in chunks(pcm16(fixture_16k(name)), 48000):
                await connection.input_audio_buffer.append(audio=piece)
            await connection.input_audio_buffer.commit()
        await connection.input_audio_buffer.commit(event_id="empty-commit")
        for piece in chunks(bytes(48000), 48000):  # half a second of digital silence
            await connection.input_audio_buffer.append(audio=piece)
        await connection.input_audio_buffer.commit()
        events = await sdk_events(connection, finals(4))
    session = of_type(events, "session.updated")[0]["session"]
    assert session["audio"]["input"]["turn_detection"] is None
    assert of_type(events, "input_audio_buffer.speech_started") == []
    assert of_type(events, "input_audio_buffer.speech_stopped") == []
    assert same_words(["what is the weather tomorrow", "set a timer for ten minutes"], transcripts(events)[:2])
    assert transcripts(events)[2] == ""
    [error] = of_type(events, "error")
    assert error["error"]["code"] == "input_audio_buffer_commit_empty" and error["error"]["event_id"] == "empty-commit"
    assert_item_lifecycle(events, vad=False)


async def test_a_commit_with_server_vad_ends_a_word_it_cut_short() -> None:
    """With server VAD on, a commit right after a word that had not yet lasted `min_speech_ms` makes
    an item of it (it had been an empty item, and the word reached into the next one)."""
    cut = pcm16(fixture_16k("lights_on.wav")[: int(0.85 * SAMPLE_RATE)])  # the voice starts at 0.5 s
    async with running_daemon() as daemon, sdk_client(daemon).realtime.connect() as connection:
        await connection.session.update(session=ga_update(turn_detection={"type": "server_vad"}))
        for piece in chunks(cut, 48000):
            await connection.input_audio_buffer.append(audio=piece)
        await connection.input_audio_buffer.commit()
        events = await sdk_events(connection, finals(1))
    assert "turn" in normalise(transcripts(events)[0]), transcripts(events)
    assert len(of_type(events, "input_audio_buffer.committed")) == 1


async def test_beta_transcription_session_with_g711_ulaw() -> None:
    audioop = pytest.importorskip("audioop")  # the reference G.711 encoder (Python <= 3.12)
    ulaw = audioop.lin2ulaw(pcm16(fixture_16k("lights_on.wav"), 8000), 2)
    async with (
        running_daemon() as daemon,
        websockets.connect(realtime_url(daemon), additional_headers={"OpenAI-Beta": "realtime=v1"}) as ws,
    ):
        update = {
            "input_audio_format": "g711_ulaw",
            "input_audio_transcription": {"model": "whisper-1", "language": "en", "prompt": "kitchen"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 600},
        }
        await ws.send(json.dumps({"type": "transcription_session.update", "session": update}))
        for piece in chunks(ulaw, 8000):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": piece}))
        events = await raw_events(ws, finals(1))
    assert [e["type"] for e in events[:2]] == ["transcription_session.created", "transcription_session.updated"]
    session = events[1]["session"]
    assert session["input_audio_format"] == "g711_ulaw"
    assert session["input_audio_transcription"]["prompt"] == "kitchen"
    assert session["turn_detection"]["silence_duration_ms"] == 600
    assert len(of_type(events, "conversation.item.created")) == 1
    assert of_type(events, "conversation.item.added") == []
    assert same_words(["turn on the kitchen lights"], transcripts(events))


async def test_ga_g711_alaw_input() -> None:
    audioop = pytest.importorskip("audioop")
    # "the weather" at 8 kHz comes out "my winner" with some of CTranslate2's CPU kernels and not others
    alaw = audioop.lin2alaw(pcm16(fixture_16k("lights_on.wav"), 8000), 2)
    async with running_daemon() as daemon, sdk_client(daemon).realtime.connect() as connection:
        await connection.session.update(session=ga_update(format={"type": "audio/pcma"}))
        for piece in chunks(alaw, 8000):
            await connection.input_audio_buffer.append(audio=piece)
        events = await sdk_events(connection, finals(1))
    assert of_type(events, "session.updated")[0]["session"]["audio"]["input"]["format"] == {"type": "audio/pcma"}
    assert same_words(["turn on the kitchen lights"], transcripts(events))


async def test_bad_input_gets_openai_errors_and_the_session_goes_on() -> None:
    """Audio before any session.update uses the defaults (24 kHz PCM); every refused event gets an
    error naming its field and echoing its event_id, and nothing else is lost."""
    bad_events: list[tuple[str, dict[str, Any], str, str | None]] = [
        ("e1", {"type": "input_audio_buffer.append", "audio": "not base64 at all!"}, "invalid_value", "audio"),
        ("e2", {"type": "input_audio_buffer.append", "audio": 12}, "invalid_type", "audio"),
        ("e2b", {"type": "input_audio_buffer.append", "audio": "AAAé"}, "invalid_value", "audio"),
        ("e2c", {"type": "input_audio_buffer.append", "audio": "é" * (1 << 16)}, "invalid_value", "audio"),
        ("e3", {"type": "response.create"}, "invalid_value", "type"),
        ("e4", {"type": "session.update", "session": {"type": "realtime"}}, "invalid_value", "session.type"),
        (
            "e5",
            {"type": "session.update", "session": ga_update(format={"type": "audio/pcm", "rate": 96000})},
            "invalid_value",
            "session.audio.input.format.rate",
        ),
        (
            "e6",
            {"type": "session.update", "session": ga_update(transcription={"language": "xx"})},
            "unsupported_language",
            "session.audio.input.transcription.language",
        ),
        (
            "e7",
            {"type": "session.update", "session": ga_update(turn_detection={"type": "server_vad", "threshold": "hi"})},
            "invalid_type",
            "session.audio.input.turn_detection.threshold",
        ),
        (
            "e8",
            {"type": "session.update", "session": ga_update(turn_detection={"silence_duration_ms": 20})},
            "invalid_value",
            "session.audio.input.turn_detection.silence_duration_ms",
        ),
        ("e9", {"type": "session.update", "session": ga_update(volume=3)}, "unknown_parameter", None),
        (
            "e10",
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()},
            "invalid_audio",
            None,
        ),
        (
            "e11",
            {"type": "session.update", "session": ga_update(format={"type": []})},
            "invalid_type",
            "session.audio.input.format.type",
        ),
        (
            "e12",
            {"type": "transcription_session.update", "session": {"input_audio_format": ["pcm16"]}},
            "invalid_type",
            "session.input_audio_format",
        ),
        (
            "e13",
            {"type": "session.update", "session": ga_update(turn_detection={"type": "semantic_vad", "eagerness": ""})},
            "invalid_value",
            "session.audio.input.turn_detection.eagerness",
        ),
        # Big appends, decoded in a worker thread a slice at a time, are refused alike, and whole
        ("e14", {"type": "input_audio_buffer.append", "audio": "A" * 200_000 + "!!!!"}, "invalid_value", "audio"),
        ("e15", {"type": "input_audio_buffer.append", "audio": "AA==" + "A" * 200_000}, "invalid_value", "audio"),
        ("e16", {"type": "input_audio_buffer.append", "audio": "A" * 200_001}, "invalid_value", "audio"),
        (
            "e17",
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(150_001)).decode()},
            "invalid_audio",
            None,
        ),
    ]
    audio = pcm16(fixture_16k("lights_on.wav"))
    async with running_daemon() as daemon, websockets.connect(realtime_url(daemon, "")) as ws:
        await ws.send("this is not JSON")
        await ws.send("[" * 200_000 + "]" * 200_000)  # deeper than the JSON parser recurses
        for event_id, event, _, _ in bad_events:
            await ws.send(json.dumps({**event, "event_id": event_id}))
        for piece in chunks(audio, 48000):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": piece}))
        events = await raw_events(ws, lambda events: len(completed(events)) == 1)
        assert len(daemon.core.sessions) == 1
    errors = [e["error"] for e in of_type(events, "error")]
    assert [(e["code"], e["event_id"]) for e in errors[:2]] == [("invalid_json", None)] * 2
    assert [(e["event_id"], e["code"]) for e in errors[2:]] == [(i, code) for i, _, code, _ in bad_events]
    for error, (_, _, _, param) in zip(errors[2:], bad_events, strict=True):
        assert error["type"] == "invalid_request_error" and error["message"]
        if param is not None:
            assert error["param"] == param
    assert of_type(events, "session.updated") == [], "a refused update changes nothing"
    assert same_words(["turn on the kitchen lights"], transcripts(events))


async def test_a_context_over_the_cap_refuses_the_update_and_the_session_goes_on() -> None:
    """The prompt and keywords together count against max_context_chars; the keywords are the
    client's terms (names), as Wyoming's `transcript_names` are: context after the prompt, and
    names to correct towards."""
    too_long = ga_update(transcription={"prompt": "p" * 60, "keywords": ["k" * 50]})
    engine = ContextRecordingEngineDouble()
    async with (
        running_daemon(engine, max_context_chars=100) as daemon,
        sdk_client(daemon).realtime.connect() as connection,
    ):
        await connection.session.update(session=too_long, event_id="long")
        fits = ga_update(transcription={"prompt": "kitchen", "keywords": ["Zigbee", " "]})
        await connection.session.update(session=fits)
        for piece in chunks(pcm16(fixture_16k("lights_on.wav")), 48000):
            await connection.input_audio_buffer.append(audio=piece)
        events = await sdk_events(connection, finals(2))
    [error] = [e["error"] for e in of_type(events, "error")]
    assert error["code"] == "context_too_long" and error["event_id"] == "long"
    assert error["param"] == "session.audio.input.transcription.prompt" and "max_context_chars" in error["message"]
    assert "keywords" in error["message"]
    [updated] = of_type(events, "session.updated")
    assert updated["session"]["audio"]["input"]["transcription"]["prompt"] == "kitchen"
    assert updated["session"]["audio"]["input"]["transcription"]["keywords"] == ["Zigbee"], "blank keywords dropped"
    assert engine.contexts[-1] == "kitchen. Zigbee" and engine.names[-1] == ("Zigbee",)
    assert same_words(["turn on the kitchen lights"], transcripts(events))


async def test_commit_includes_the_resamplers_tail() -> None:
    """24 kHz audio is resampled as it streams; soxr holds its last milliseconds until told the
    input ended. A commit feeds them, so the item ends where the client's audio ends."""
    audio = pcm16(fixture_16k("lights_on.wav"))
    async with running_daemon() as daemon, sdk_client(daemon).realtime.connect() as connection:
        await connection.session.update(session=ga_update(turn_detection=None))
        for piece in chunks(audio, 48000):
            await connection.input_audio_buffer.append(audio=piece)
        await connection.input_audio_buffer.commit()
        events = await sdk_events(connection, finals(1))
        received = daemon.core.metrics.registry.get_sample_value(
            "satellite_asr_audio_seconds_total", {"protocol": "openai-realtime"}
        )
        for piece in chunks(audio, 48000):  # the stream goes on after the commit, with a fresh resampler
            await connection.input_audio_buffer.append(audio=piece)
        await connection.input_audio_buffer.commit()
        events += await sdk_events(connection, finals(1))
    assert received is not None and abs(received * SAMPLE_RATE - len(audio) // 2 * SAMPLE_RATE / 24000) <= 1
    assert same_words(["turn on the kitchen lights"] * 2, transcripts(events))


async def test_an_endpointing_update_after_audio_finalizes_the_item_in_progress_and_goes_on() -> None:
    """A new turn detection cannot apply to the utterance being spoken (its endpointer began with the
    old): that item ends first, and a new session takes the audio that follows."""
    first, second = fixture_16k("lights_on.wav"), fixture_16k("weather.wav")
    cut = int(1.5 * SAMPLE_RATE)  # mid-command: the update arrives during speech
    async with running_daemon() as daemon, sdk_client(daemon).realtime.connect() as connection:
        for piece in chunks(pcm16(first[:cut]), 48000):
            await connection.input_audio_buffer.append(audio=piece)
        turn_detection = {"type": "server_vad", "silence_duration_ms": 600}
        await connection.session.update(session=ga_update(turn_detection=turn_detection))
        events = await sdk_events(connection, count("session.updated", 1))
        for piece in chunks(pcm16(np.concatenate([first[cut:], second])), 48000):
            await connection.input_audio_buffer.append(audio=piece)
        events += await sdk_events(connection, finals(2))
    kinds = [e["type"] for e in events]
    assert kinds.index("conversation.item.input_audio_transcription.completed") < kinds.index("session.updated")
    words = " ".join(transcripts(events)).lower()
    assert "turn" in words and "weather" in words
    committed = of_type(events, "input_audio_buffer.committed")
    assert committed[-1]["previous_item_id"] == committed[-2]["item_id"]
    stops = [e["audio_end_ms"] for e in of_type(events, "input_audio_buffer.speech_stopped")]
    starts = [e["audio_start_ms"] for e in of_type(events, "input_audio_buffer.speech_started")]
    assert starts[-1] > 1500, "times count the connection's audio across sessions"
    assert stops == sorted(stops)


def first_names(engine: ContextRecordingEngineDouble) -> list[tuple[str, ...]]:
    """Each stream's first name: the client's keyword, before the home's names."""
    return [names[:1] for names in engine.names]


@pytest.mark.parametrize(
    ("before", "after", "decoded_with", "expected"),
    [
        ({"keywords": ["Calloway"]}, {"keywords": ["Aoife"]}, first_names, [("Calloway",), ("Aoife",)]),
        ({"prompt": "Calloway"}, {"prompt": "Aoife"}, lambda e: e.contexts, ["Calloway", "Aoife"]),
        ({"language": "en"}, {"language": None}, lambda e: e.languages, ["en", None]),
    ],
    ids=["keywords", "prompt", "language"],
)
async def test_a_decoding_update_mid_utterance_keeps_the_item_and_applies_to_the_next(
    before: dict[str, Any],
    after: dict[str, Any],
    decoded_with: Callable[[ContextRecordingEngineDouble], list[Any]],
    expected: list[Any],
) -> None:
    """An update of what speech is decoded with (keywords, prompt, language) does not cut the command
    being spoken (one item, whole): the next utterance is decoded with it, as Deepgram's and
    AssemblyAI's keyterm updates and Sarvam's `config.update` are."""
    engine = ContextRecordingEngineDouble()
    first, second = fixture_16k("lights_on.wav"), fixture_16k("weather.wav")
    cut = int(1.5 * SAMPLE_RATE)  # mid-command: the update arrives during speech
    async with running_daemon(engine) as daemon, sdk_client(daemon).realtime.connect() as connection:
        await connection.session.update(session=ga_update(transcription=before))
        for piece in chunks(pcm16(first[:cut]), 48000):
            await connection.input_audio_buffer.append(audio=piece)
        await connection.session.update(session=ga_update(transcription=after))
        for piece in chunks(pcm16(np.concatenate([first[cut:], second])), 48000):
            await connection.input_audio_buffer.append(audio=piece)
        events = await sdk_events(connection, finals(2))
    assert decoded_with(engine) == expected
    first_final, second_final = transcripts(events)
    assert same_words(EXPECTED["lights_on.wav"], [first_final]), "the command spoken across the update is whole"
    assert same_words(EXPECTED["weather.wav"], [second_final])
    assert len(of_type(events, "session.updated")) == 2


async def test_a_format_change_mid_utterance_keeps_one_item_with_the_homes_names() -> None:
    """With Home Assistant's names in the session, an update that changes only the audio format
    swaps the decoder: the same session goes on and the command is one item, whole."""
    audio = fixture_16k("lights_on.wav")
    cut = int(1.0 * SAMPLE_RATE)  # after "turn on": the update arrives during speech
    async with (
        running_home_assistant("token") as home_assistant,
        running_daemon(ha_url=home_assistant.url, ha_token="token") as daemon,
    ):
        assert daemon.core.home_assistant is not None
        await daemon.core.home_assistant.wait_loaded()
        async with websockets.connect(realtime_url(daemon)) as ws:  # the SDK knows only 24 kHz PCM
            for piece in chunks(pcm16(audio[:cut]), 48000):
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": piece}))
            update = ga_update(format={"type": "audio/pcm", "rate": SAMPLE_RATE})
            await ws.send(json.dumps({"type": "session.update", "session": update}))
            rest = np.concatenate([audio[cut:], np.zeros(SAMPLE_RATE, dtype=np.float32)])
            for piece in chunks(pcm16(rest, SAMPLE_RATE), 2 * SAMPLE_RATE):
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": piece}))
            events = await raw_events(ws, lambda events: finals(1)(events) and count("session.updated", 1)(events))
    assert same_words(["turn on the kitchen lights"], transcripts(events)), transcripts(events)
    assert of_type(events, "error") == []
    [created] = of_type(events, "session.created")
    [updated] = of_type(events, "session.updated")
    assert updated["session"]["id"] == created["session"]["id"], "the session goes on"
    assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": SAMPLE_RATE}


async def test_an_engine_failure_fails_the_item() -> None:
    audio = pcm16(fixture_16k("lights_on.wav"))
    async with running_daemon(CrashingEngineDouble()) as daemon, sdk_client(daemon).realtime.connect() as connection:
        await connection.session.update(session=ga_update(transcription={"prompt": "crash"}))
        for piece in chunks(audio, 48000):
            await connection.input_audio_buffer.append(audio=piece)
        events = await sdk_events(connection, count("conversation.item.input_audio_transcription.failed", 1))
    [failed] = of_type(events, "conversation.item.input_audio_transcription.failed")
    [committed] = of_type(events, "input_audio_buffer.committed")
    assert failed["item_id"] == committed["item_id"]
    assert failed["error"]["code"] == "engine_error" and "injected failure" in failed["error"]["message"]
    assert completed(events) == [] and of_type(events, "error") == []


async def test_clear_drops_the_utterance_in_progress() -> None:
    audio = fixture_16k("three_commands.wav")
    async with running_daemon() as daemon, sdk_client(daemon).realtime.connect() as connection:
        await connection.session.update(session=ga_update(turn_detection=None))
        for piece in chunks(pcm16(audio[: int(2.5 * SAMPLE_RATE)]), 48000):  # the first command
            await connection.input_audio_buffer.append(audio=piece)
        await connection.input_audio_buffer.clear()
        for piece in chunks(pcm16(audio[int(2.5 * SAMPLE_RATE) : int(5.5 * SAMPLE_RATE)]), 48000):  # the second
            await connection.input_audio_buffer.append(audio=piece)
        await connection.input_audio_buffer.commit()
        events = await sdk_events(connection, finals(1))
    assert len(of_type(events, "input_audio_buffer.cleared")) == 1
    assert same_words(["what time is it"], transcripts(events))


async def test_the_server_closing_an_idle_session_ends_the_connection() -> None:
    async with running_daemon(idle_timeout_s=1.0) as daemon, websockets.connect(realtime_url(daemon)) as ws:
        created = json.loads(await ws.recv())
        assert created["type"] == "session.created"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        with pytest.raises(ConnectionClosed):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": ""}))
        assert len(daemon.core.sessions) == 0


async def test_an_event_arriving_at_the_idle_timeout_is_taken_and_the_close_follows_it() -> None:
    """A big event still arriving when `idle_timeout_s` ran out (a slow link) was cut: the server
    closed as the client sent, and the client lost the Close to a reset. It has not been idle: once
    the timeout is past (a connection opened after it and sending nothing has been closed), the rest
    of its event is still taken, and the Close (1001) comes after its answer."""
    update = {"type": "session.update", "session": ga_update(transcription={"prompt": "kitchen"})}
    frame = client_frame(json.dumps(update).encode())
    async with running_daemon(idle_timeout_s=2.0) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
        await websocket_upgrade(reader, writer, daemon.http_port, "/v1/realtime")
        _, created = await read_server_frame(reader)
        writer.write(frame[:20])
        async with websockets.connect(realtime_url(daemon)) as idle:
            async for _ in idle:  # session.created, then the idle timeout's Close
                pass
        writer.write(frame[20:])
        frames = await read_server_frames_until_close(reader)
        writer.close()
    assert json.loads(created)["type"] == "session.created" and idle.close_code == 1001
    assert [opcode for opcode, _ in frames] == [TEXT_OPCODE, CLOSE_OPCODE], frames
    updated = json.loads(frames[0][1])
    assert updated["type"] == "session.updated", frames
    assert updated["session"]["audio"]["input"]["transcription"]["prompt"] == "kitchen"
    assert frames[-1][1] == (1001).to_bytes(2, "big") + b"idle_timeout", frames


async def test_an_event_that_stops_arriving_does_not_keep_the_session_from_its_idle_timeout() -> None:
    """The wait for an event still arriving is bounded (twice `idle_timeout_s`): half an event and
    nothing more does not hold a session open."""
    frame = client_frame(json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA" * 1000}).encode())
    async with running_daemon(idle_timeout_s=1.0) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
        await websocket_upgrade(reader, writer, daemon.http_port, "/v1/realtime")
        frames = [await read_server_frame(reader)]  # session.created
        writer.write(frame[:1000])  # and nothing more
        while frames[-1][0] != CLOSE_OPCODE:
            frames.append(await read_server_frame(reader))
        writer.close()
    assert frames[-1][1] == (1001).to_bytes(2, "big") + b"idle_timeout", frames


async def test_plain_http_and_other_intents_are_refused_with_a_reason() -> None:
    import aiohttp

    async with running_daemon() as daemon, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{daemon.http_port}/v1/realtime"
        async with http.get(base) as response:
            assert response.status == 426
            assert (await response.json())["error"]["code"] == "websocket_required"
        async with http.get(base + "?intent=conversation") as response:
            assert response.status == 400
            assert (await response.json())["error"]["param"] == "intent"


async def test_livekit_openai_stt_realtime_transcribes_through_the_daemon() -> None:
    from livekit import rtc
    from livekit.agents import stt as lk_stt
    from livekit.agents.utils import http_context
    from livekit.plugins import openai as lk_openai

    audio = pcm16(fixture_16k("three_commands.wav"))
    async with running_daemon() as daemon, http_context.open():
        stt = lk_openai.STT(
            base_url=f"http://127.0.0.1:{daemon.http_port}/v1",
            api_key="x",
            model="gpt-4o-transcribe",
            use_realtime=True,
        )
        stream = stt.stream()
        finals_seen: list[str] = []
        interim: list[str] = []

        async def read() -> None:
            async for event in stream:
                if event.type == lk_stt.SpeechEventType.FINAL_TRANSCRIPT:
                    finals_seen.append(event.alternatives[0].text)
                    if len(finals_seen) == 3:
                        return
                elif event.type == lk_stt.SpeechEventType.INTERIM_TRANSCRIPT:
                    interim.append(event.alternatives[0].text)

        reader = asyncio.create_task(read())
        samples = 2400
        for offset in range(0, len(audio), samples * 2):
            data = audio[offset : offset + samples * 2]
            stream.push_frame(rtc.AudioFrame(data, 24000, 1, len(data) // 2))
            await asyncio.sleep(0.1)
        await asyncio.wait_for(reader, 60)
        await stream.aclose()
        await stt.aclose()
    assert same_words(EXPECTED["three_commands.wav"], finals_seen)


async def test_a_client_that_leaves_while_held_back_ends_its_session() -> None:
    """A client held back by back-pressure is not read, so its close waited behind its queued
    appends: their audio was decoded for nobody (131 s of it for 70 s in the abuse probe)."""
    second = base64.b64encode(pcm16(fixture_16k("three_commands.wav")[:16000])).decode()
    append = json.dumps({"type": "input_audio_buffer.append", "audio": second})
    async with running_daemon(max_feed_ahead_s=1.0) as daemon:
        ws = await websockets.connect(realtime_url(daemon), max_size=None, compression=None)
        await leave_while_throttled(daemon, ws.transport, lambda: ws.send(append))


async def test_a_client_that_sends_a_file_at_once_has_its_pings_answered_while_held_back() -> None:
    """The OpenAI SDK's client (the websockets library) pings every 20 s and drops a connection whose
    pong takes 20 s more; the daemon, holding back a fast client, read nothing, so the pong waited
    behind its appends. Here with a 0.5 s ping, a 5 s timeout and 9 s held back (`HELD_BACK_KEEPALIVE`)."""
    async with (
        running_daemon(max_feed_ahead_s=1.0) as daemon,
        sdk_client(daemon).realtime.connect(
            extra_query={"intent": "transcription"}, websocket_connection_options=HELD_BACK_KEEPALIVE
        ) as connection,
    ):
        for piece in chunks(pcm16(fixture_16k("three_commands.wav")), 48000):
            await connection.input_audio_buffer.append(audio=piece)
        await connection.input_audio_buffer.commit()
        events = await sdk_events(connection, finals(3))
    assert same_words(EXPECTED["three_commands.wav"], transcripts(events))


async def test_a_close_behind_held_back_appends_is_answered_at_once() -> None:
    """A client's Close wants nothing more here (its session ends without finals): it is answered at
    once. Taken in its turn, it waited behind the appends before it, fed at real-time pace: the SDK's
    `close()` gave up after its 10 s close timeout."""
    audio = base64.b64encode(pcm16(fixture_16k("three_commands.wav")[:16000])).decode()
    second = json.dumps({"type": "input_audio_buffer.append", "audio": audio})
    async with running_daemon(max_feed_ahead_s=1.0) as daemon:
        ws = await websockets.connect(realtime_url(daemon), compression=None)
        await close_while_throttled(daemon, ws, second)


async def test_empty_appends_do_not_keep_an_utterance_from_its_idle_timeout() -> None:
    """An append of no audio is no audio: fed as an empty piece, one every 0.25 s inside an utterance
    kept its session open past `idle_timeout_s` for as long as the client went on."""
    speech = pcm16(fixture_16k("three_commands.wav")[: int(1.6 * 16000)])  # the first command, cut short
    empty = json.dumps({"type": "input_audio_buffer.append", "audio": ""})
    async with running_daemon(idle_timeout_s=2.0) as daemon, websockets.connect(realtime_url(daemon)) as ws:
        for piece in chunks(speech, 48000):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": piece}))
        (session,) = daemon.core.sessions.open_sessions()
        await eventually(lambda: session.in_utterance)
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(30):  # the bound only turns a session kept open into a failure
                while True:
                    await ws.send(empty)
                    await asyncio.sleep(0.25)
    assert session.closed


async def test_format_changes_inside_an_utterance_do_not_keep_it_from_its_idle_timeout() -> None:
    """A change of audio format feeds what the old decoder still holds: at 16 kHz nothing, which is
    no audio either. Fed as an empty piece, every format change inside an utterance pushed back its
    idle timeout, as empty appends once did."""
    speech = pcm16(fixture_16k("three_commands.wav")[: int(1.6 * 16000)])  # the first command, cut short
    formats = [{"type": kind, "rate": 16000} for kind in ("audio/pcm", "audio/pcmu")]
    updates = [json.dumps({"type": "session.update", "session": ga_update(format=f)}) for f in formats]
    async with running_daemon(idle_timeout_s=2.0) as daemon, websockets.connect(realtime_url(daemon)) as ws:
        await ws.send(updates[0])
        for piece in chunks(speech, 2 * 16000):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": piece}))
        (session,) = daemon.core.sessions.open_sessions()
        await eventually(lambda: session.in_utterance)
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(30):  # the bound only turns a session kept open into a failure
                for turn in range(1000):
                    await ws.send(updates[(turn + 1) % 2])
                    await asyncio.sleep(0.25)
    assert session.closed


APPEND_ONCE = """
import asyncio, base64, json, sys, websockets
async def main():
    audio = base64.b64encode(bytes(int(sys.argv[2]))).decode()
    async with websockets.connect(sys.argv[1], max_size=None, compression=None) as ws:
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_a_big_append_held_back_holds_its_audio_once() -> None:
    """While a big append waits for room the daemon holds its audio as bytes and no more: its event
    text, its base64 and its decoded samples held 5 times that (76 MB for 15 MiB of audio) per
    connection."""
    audio_bytes = 4 << 20  # 87 s of pcm16 at 24 kHz, far past the 1 s ahead it may be
    async with (
        running_daemon(max_feed_ahead_s=1.0) as daemon,
        traced_client(APPEND_ONCE, realtime_url(daemon), str(audio_bytes)) as grown,
    ):
        await eventually(lambda: any(s.seconds_received >= 3 for s in daemon.core.sessions.open_sessions()))
        held = grown()
    assert held < 1.1 * audio_bytes, f"{held / audio_bytes:.2f} times the append's audio held"


def append_of_exactly(size: int) -> str:
    """An append event of exactly `size` bytes: 0.1 s of silence, an `event_id` filling the rest (a
    whole event of audio would take minutes to go through VAD)."""
    head, middle, tail = '{"type":"input_audio_buffer.append","event_id":"', '","audio":"', '"}'
    audio = base64.b64encode(bytes(4800)).decode()
    event = head + "e" * (size - len(head) - len(middle) - len(tail) - len(audio)) + middle + audio + tail
    assert len(event.encode()) == size
    return event


async def test_an_event_of_exactly_the_limit_is_taken_and_one_byte_more_closes_with_1009() -> None:
    """The docs allow events up to 24 MiB; aiohttp refuses a message as long as its limit unless told one more
    (uncompressed: a compressed one it measures inflated, where one byte over still passes)."""
    limit = openai_realtime.MAX_MESSAGE_BYTES
    async with running_daemon() as daemon:
        async with websockets.connect(realtime_url(daemon), max_size=None, compression=None) as ws:
            await raw_events(ws, count("session.created", 1))
            await ws.send(append_of_exactly(limit))
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            events = await raw_events(ws, count("input_audio_buffer.cleared", 1))
        async with websockets.connect(realtime_url(daemon), max_size=None, compression=None) as ws:
            await raw_events(ws, count("session.created", 1))
            with pytest.raises(ConnectionClosed) as closed:  # the daemon may close while the event is going out
                await ws.send(append_of_exactly(limit + 1))
                await asyncio.wait_for(ws.recv(), 60)
    assert not of_type(events, "error"), events
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_a_client_still_sending_after_its_oversized_event_reads_1009() -> None:
    """As on `/v1/stream` (test_websocket.py): before the daemon lingered after its Close, 5, 26 and
    30 of 30 of these clients in three runs saw the connection end without it."""
    path = "/v1/realtime?intent=transcription"
    size = openai_realtime.MAX_MESSAGE_BYTES + 4
    async with running_daemon() as daemon:
        codes = [
            await asyncio.to_thread(close_code_after_oversized_frame, daemon.http_port, path, size) for _ in range(50)
        ]
        await eventually(lambda: len(daemon.core.sessions) == 0, 10)
    assert codes == [1009] * 50, f"{codes.count(None)} of 50 closed without the Close"


async def test_a_client_that_never_answers_the_close_costs_no_one_else_their_final_at_shutdown() -> None:
    """Once the server's Close waited for the client's, one `/v1/stream` client that reads but never
    answers held shutdown for its whole `shutdown_timeout_s` (the Realtime sessions were closed only
    after the WebSocket ones), and a Realtime client mid-command was cut (1006) without its final.
    The wait for the client's Close is now short, and the protocols close side by side."""
    speech = pcm16(fixture_16k("lights_on.wav")[: int(1.5 * SAMPLE_RATE)])
    async with running_daemon() as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
        await websocket_upgrade(reader, writer, daemon.http_port)
        writer.write(client_frame(json.dumps({"type": "config"}).encode()))
        await read_server_frame(reader)  # session_created; then every frame is read, the Close never answered
        mute = asyncio.create_task(read_frames_for_ever(reader))
        async with websockets.connect(realtime_url(daemon)) as ws:
            for piece in chunks(speech, 48000):
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": piece}))
            events = [json.loads(await ws.recv())]
            while events[-1]["type"] != "input_audio_buffer.speech_started":
                events.append(json.loads(await ws.recv()))
            stopping = asyncio.create_task(daemon.stop())
            with contextlib.suppress(ConnectionClosed):
                async for raw in ws:
                    events.append(json.loads(raw))
            await stopping
        mute.cancel()
        writer.close()
    (completed,) = of_type(events, "conversation.item.input_audio_transcription.completed")
    assert normalise(completed["transcript"]).startswith("turn on"), "the command said so far"
    assert (ws.close_code, ws.close_reason) == (1001, "shutdown")


async def read_frames_for_ever(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            await read_server_frame(reader)
