"""Cartesia's turn-detecting API (`/stt/turns/websocket`) end to end: real daemon, real Silero, real
tiny.en, a raw WebSocket client for every message and command and for input no SDK would send."""

from __future__ import annotations

import json
from typing import Any

import pytest
import websockets

from satellite_asr.protocols import cartesia_turns
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble
from tests.helpers import EXPECTED, exchange, fixture_16k, pcm16, running_daemon, same_words
from tests.test_cartesia import refusal

pytestmark = pytest.mark.timeout(180)

Messages = list[dict[str, Any]]
QUERY = "model=ink-2&encoding=pcm_s16le&sample_rate=16000"
CLOSE = json.dumps({"type": "close"})


def turns_url(daemon: Daemon, query: str = QUERY) -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{cartesia_turns.PATH}?{query}"


def audio(name: str = "three_commands.wav") -> bytes:
    return pcm16(fixture_16k(name), 16000)


def ends(messages: Messages) -> list[str]:
    return [m["transcript"] for m in messages if m["type"] == "turn.end"]


async def test_each_command_is_a_turn_and_close_ends_the_stream() -> None:
    """`connected`, then per command `turn.start`, `turn.update`s of the turn so far and `turn.end`
    with its final; LiveKit's thresholds accepted; `close`: the last turn's end, then the Close."""
    query = (
        QUERY + "&turn_start_threshold=0.8&turn_eager_end_threshold=0.4&turn_end_threshold=0.2&turn_end_timeout_ms=5600"
    )
    async with running_daemon() as daemon:
        messages, code = await exchange(turns_url(daemon, query), audio(), CLOSE, paced=True)
    assert code == 1000 and messages[0]["type"] == "connected"
    kinds = "".join({"turn.start": "S", "turn.update": "u", "turn.end": "E"}[m["type"]] for m in messages[1:])
    assert kinds.count("S") == 3 and kinds.startswith("Su") and kinds.endswith("E"), kinds
    assert all(turn.startswith("S") and turn.count("S") == 1 for turn in kinds.split("E")[:-1]), kinds
    assert same_words(EXPECTED["three_commands.wav"], ends(messages))
    assert {m["request_id"] for m in messages} == {messages[0]["request_id"]}
    updates = [m["transcript"] for m in messages if m["type"] == "turn.update"]
    assert all(update == update.strip() and update for update in updates)


async def test_close_sends_the_turn_in_progress_first() -> None:
    data = audio("lights_on.wav")
    async with running_daemon() as daemon:
        messages, code = await exchange(turns_url(daemon), data[: len(data) * 2 // 3], CLOSE)
    assert code == 1000 and len(ends(messages)) == 1 and ends(messages)[0]
    assert messages[-1]["type"] == "turn.end"


async def test_config_is_checked_and_bad_messages_are_errors_and_the_stream_goes_on() -> None:
    """A `config` in range is taken (no answer: Cartesia has none), one out of range or of another
    field is an `error` with `done` false, as is a command of no known type; the turn still comes."""
    bad = [
        json.dumps({"type": "config", "turn": {"end_threshold": 0.9}}),
        json.dumps({"type": "config", "turn": {"eager": 0.5}}),
        json.dumps({"type": "config", "turn": {"end_timeout_ms": "soon"}}),
        json.dumps({"type": "config", "vad": {}}),
        json.dumps({"type": "config", "turn": []}),
        json.dumps({"type": "config", "turn": 0}),
        json.dumps({"type": "finalize"}),
        "close",
    ]
    good = json.dumps({"type": "config", "turn": {"start_threshold": 0.7, "end_timeout_ms": 1000}})
    async with running_daemon() as daemon:
        messages, code = await exchange(turns_url(daemon), audio("lights_on.wav"), good, *bad, CLOSE)
    errors = [m for m in messages if m["type"] == "error"]
    assert len(errors) == len(bad) and all(not e["done"] and e["status_code"] == 400 for e in errors)
    assert {e["error_code"] for e in errors} == {"invalid_message"}
    assert "turn.end_threshold" in errors[0]["message"] and "0.05 to 0.5" in errors[0]["message"]
    assert "eager" in errors[1]["message"] and "vad" in errors[3]["message"]
    assert all("turn must be an object" in e["message"] for e in errors[4:6]), errors
    assert code == 1000 and same_words(EXPECTED["lights_on.wav"], ends(messages))


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        (QUERY + "&turn_end_threshold=0.9", "turn_end_threshold"),
        (QUERY + "&turn_end_timeout_ms=100", "turn_end_timeout_ms"),
        (QUERY.replace("pcm_s16le", "pcm_f16le"), "encoding"),
        (QUERY + "&min_volume=0.1", "min_volume"),  # the streaming API's, not this one's
    ],
)
async def test_a_bad_parameter_is_refused_in_place_of_connected_then_the_close(query: str, parameter: str) -> None:
    """As Cartesia's turns API refuses a setting: after the upgrade, an error event naming it, then 1008."""
    async with running_daemon() as daemon:
        error, code = await refusal(turns_url(daemon, query))
    assert error["type"] == "error" and error["error_code"] == "invalid_query_parameter", error
    assert error["status_code"] == error["code"] == 400 and error["done"] and code == 1008
    assert error["message"].startswith(f"{parameter}: "), error


async def test_keyterms_reach_the_engine() -> None:
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine) as daemon:
        await exchange(turns_url(daemon, QUERY + "&keyterm=Aoife&keyterm=Calloway"), audio("lights_on.wav"), CLOSE)
    assert [names[:2] for names in engine.names] == [("Aoife", "Calloway")]


async def test_the_idle_timeout_is_an_error_and_going_away() -> None:
    async with running_daemon(idle_timeout_s=1) as daemon, websockets.connect(turns_url(daemon)) as ws:
        await ws.send(bytes(3200))
        messages = [json.loads(message) async for message in ws]
    assert [m["type"] for m in messages] == ["connected", "error"]
    assert messages[1]["error_code"] == "idle_timeout" and messages[1]["done"] and ws.close_code == 1001
