"""Gradium's real-time speech-to-text API (`/api/speech/asr`) end to end: real daemon, real Silero,
real tiny.en, a raw WebSocket client for every message and for input no SDK would send."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest
import websockets

from satellite_asr.protocols import gradium
from satellite_asr.server import Daemon
from tests.doubles import FailsOnAWordEngineDouble
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
from tests.test_docs import ROOT
from tests.test_mistral import Messages

pytestmark = pytest.mark.timeout(180)

FIXTURE = "three_commands.wav"
SETUP = {"type": "setup", "model_name": "default", "input_format": "pcm_16000", "json_config": {"language": "en"}}
END = {"type": "end_of_stream"}
KEY = "gradium-key"


def url(daemon: Daemon, query: str = "") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{gradium.PATH}{'?' + query if query else ''}"


def audio(rate: int = 16000) -> bytes:
    return pcm16(fixture_16k(FIXTURE), rate)


def appends(data: bytes, frame: int = PCM_FRAME_BYTES) -> list[dict[str, Any]]:
    """`data` as `audio` messages of `frame` bytes (100 ms of 16 kHz PCM16 by default)."""
    return [
        {"type": "audio", "audio": base64.b64encode(data[at : at + frame]).decode()}
        for at in range(0, len(data), frame)
    ]


async def stream(
    target: str, *sent: dict[str, Any] | str | bytes, headers: dict[str, str] | None = None, paced: bool = False
) -> tuple[Messages, int | None]:
    """The `sent` messages (by default the setup, the fixture, `end_of_stream`); every message until
    the Close, and its code."""
    return await send_all(target, sent or (SETUP, *appends(audio()), END), headers, paced, is_audio_message)


def is_audio_message(message: dict[str, Any] | str | bytes) -> bool:
    return isinstance(message, dict) and message["type"] == "audio"


def kinds(messages: Messages) -> list[str]:
    """The message types, steps and words left out."""
    return [message["type"] for message in messages if message["type"] not in ("step", "text")]


def utterances(messages: Messages) -> list[str]:
    """Each utterance's words joined, as the clients join them, up to its `end_text`."""
    said, words = [], []
    for message in messages:
        if message["type"] == "text":
            words.append(message["text"])
        elif message["type"] == "end_text":
            said.append(" ".join(words))
            words = []
    return said


async def test_three_commands_every_message() -> None:
    """`ready` answers the setup; words while each command is heard, an `end_text` after each
    command's last; a step per 80 ms of audio, inactive (1) outside a command and active (0) from
    its start to its last word; `end_of_stream`, then a normal Close."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), SETUP, *appends(audio()), END, paced=True)
    assert code == 1000
    ready = messages[0]
    assert ready["type"] == "ready" and ready["request_id"] and ready["model_name"] == "default"
    assert ready["sample_rate"] == 16000 and ready["frame_size"] == 1280 and ready["delay_in_tokens"] == 1
    assert kinds(messages) == ["ready", *["end_text"] * 3, "end_of_stream"], kinds(messages)
    said = utterances(messages)
    assert same_words(EXPECTED[FIXTURE], said), said
    steps = of_type(messages, "step")
    assert len(steps) == int(len(audio()) / 32000 / 0.08 + 1e-6)
    assert [step["step_idx"] for step in steps] == list(range(1, len(steps) + 1))
    assert all([entry["horizon_s"] for entry in step["vad"]] == [0.5, 1.0, 2.0, 3.0] for step in steps)
    assert steps[0]["vad"][2]["inactivity_prob"] == 1.0
    # from the first word to its end_text, every step says speech is in progress
    first_word = next(at for at, m in enumerate(messages) if m["type"] == "text")
    first_end = next(at for at, m in enumerate(messages) if m["type"] == "end_text")
    assert all(m["vad"][2]["inactivity_prob"] == 0.0 for m in of_type(messages[first_word:first_end], "step"))
    # the next command starts 2 s later: the step after the end_text says the turn is over, however
    # long the final took to decode (a busy machine's; not the next command's start)
    after = of_type(messages[first_end:], "step")
    assert after and after[0]["vad"][2]["inactivity_prob"] == 1.0, "the turn is over at its end_text"
    texts = of_type(messages, "text")
    assert len(texts) > 6 and all(" " not in m["text"] and m["start_s"] >= 0 for m in texts)
    assert all(m["stop_s"] > 0 for m in of_type(messages, "end_text"))


async def test_the_setups_client_req_id_is_taken_and_names_each_word_and_end_text() -> None:
    """Gradium's SDK may send `client_req_id` in the setup (an id for multiplexing its requests): it
    is taken, not refused, and each `text` and `end_text` carries it; a non-text id is refused."""
    setup = {**SETUP, "client_req_id": "kitchen-7"}
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), setup, *appends(audio()), END)
        refused, refused_code = await stream(url(daemon), {**SETUP, "client_req_id": 7})
    assert code == 1000 and same_words(EXPECTED[FIXTURE], utterances(messages)), messages
    worded = of_type(messages, "text") + of_type(messages, "end_text")
    assert worded and all(m["client_req_id"] == "kitchen-7" for m in worded), worded
    assert [m["type"] for m in refused] == ["error"] and "client_req_id" in refused[0]["message"]
    assert refused_code == 1008


async def test_a_flush_is_answered_with_flushed_after_the_words_it_ends() -> None:
    """A flush midway through the first command: its words so far and their `end_text`, then
    `flushed` with the client's id; the rest goes on."""
    data = audio()
    middle = 12 * PCM_FRAME_BYTES
    flush = {"type": "flush", "flush_id": "7"}
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), SETUP, *appends(data[:middle]), flush, *appends(data[middle:]), END)
    assert code == 1000
    flushed = next(at for at, m in enumerate(messages) if m["type"] == "flushed")
    assert messages[flushed] == {"type": "flushed", "flush_id": "7"}
    before = utterances(messages[:flushed])
    assert len(before) == 1 and normalise(before[0]).split()[0] == "turn", before
    rest = normalise(" ".join(utterances(messages[flushed:])))
    assert "what time is it" in rest and "garage door" in rest


@pytest.mark.parametrize(("input_format", "rate"), [("pcm", 24000), ("pcm_8000", 8000), ("pcm_24000", 24000)])
async def test_each_pcm_format_is_heard_at_its_rate(input_format: str, rate: int) -> None:
    """`pcm` is 24 kHz (LiveKit's plugin sends it so), the others at the rate they name; the SDK's
    `json_config` as a JSON text is read as the object."""
    setup = {"type": "setup", "input_format": input_format, "json_config": json.dumps({"language": "en"})}
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), setup, *appends(audio(rate), rate // 10 * 2), END)
    assert messages[0]["sample_rate"] == rate and code == 1000
    assert same_words(EXPECTED[FIXTURE], utterances(messages)), utterances(messages)


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        ("not json", "setup, a JSON object"),
        ({"type": "audio", "audio": ""}, "must be the setup"),
        ({**SETUP, "input_format": "opus"}, "raw PCM"),
        ({**SETUP, "input_format": "pcm_44100"}, "raw PCM"),
        ({**SETUP, "voice": "x"}, "no field 'voice'"),
        ({**SETUP, "model_name": ""}, "model_name"),
        ({**SETUP, "json_config": {"language": "ja"}}, "json_config.language"),
        ({**SETUP, "json_config": {"delay_in_frames": 9}}, "delay_in_frames"),
        ({**SETUP, "json_config": {"temp": -1}}, "json_config.temp"),
        ({**SETUP, "json_config": {"x": 1}}, "no field 'x'"),
        ({**SETUP, "json_config": "[1]"}, "json_config must be a JSON object"),
    ],
)
async def test_a_bad_setup_is_an_error_then_1008(setup: Any, words: str) -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), setup)
    assert [m["type"] for m in messages] == ["error"] and words in messages[0]["message"], messages
    assert messages[0]["code"] == 1008 and code == 1008


async def test_a_query_parameter_is_refused_in_band() -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, "model=x"), SETUP)
    assert [m["type"] for m in messages] == ["error"] and "model" in messages[0]["message"] and code == 1008


@pytest.mark.parametrize(
    ("message", "words"),
    [
        ("not json", "not JSON"),
        (b"\x00\x01", "base64 PCM"),
        ({"type": "audio", "audio": "!!"}, "not valid base64"),
        ({"type": "audio"}, "base64 PCM"),
        ({"type": "audio", "audio": "", "x": 1}, "no field 'x'"),
        ({"type": "flush", "flush_id": True}, "flush_id"),
        ({"type": "setup"}, "unknown type 'setup'"),
    ],
)
async def test_a_refused_message_loses_nothing_else(message: Any, words: str) -> None:
    """A bad message midway: Gradium's error (1008) with the sentence; the stream goes on and
    every command is still heard."""
    data = audio()
    middle = 12 * PCM_FRAME_BYTES
    async with running_daemon() as daemon:
        messages, code = await stream(
            url(daemon), SETUP, *appends(data[:middle]), message, *appends(data[middle:]), END
        )
    errors = of_type(messages, "error")
    assert len(errors) == 1 and words in errors[0]["message"] and errors[0]["code"] == 1008, errors
    assert same_words(EXPECTED[FIXTURE], utterances(messages)) and code == 1000


async def test_an_engine_failure_is_an_error_and_the_stream_goes_on() -> None:
    async with running_daemon(FailsOnAWordEngineDouble("bedroom")) as daemon:
        messages, code = await stream(url(daemon))
    assert [e["code"] for e in of_type(messages, "error")] == [1011], messages
    said = normalise(" ".join(utterances(messages)))
    assert "what time is it" in said and "garage door" in said and code == 1000


async def test_the_key_by_x_api_key_and_refusals_in_gradiums_shape() -> None:
    """`x-api-key` (every client's way) reaches the API; none or a wrong one: 401 at the upgrade
    with Gradium's error body; a plain GET: 426 in the same shape."""
    async with running_daemon(api_key=KEY) as daemon:
        messages, _ = await stream(url(daemon), SETUP, END, headers={"x-api-key": KEY})
        assert [m["type"] for m in messages] == ["ready", "end_of_stream"]
        async with aiohttp.ClientSession() as http:
            for headers, status in [({}, 401), ({"x-api-key": "wrong"}, 401), ({"x-api-key": KEY}, 426)]:
                async with http.get(url(daemon).replace("ws", "http", 1), headers=headers) as response:
                    body = await response.json()
                    assert response.status == status and body["type"] == "error" and body["message"], body
                    assert body["code"] == 1008


async def test_no_setup_within_the_first_message_timeout_is_an_error() -> None:
    async with running_daemon(first_message_timeout_s=1) as daemon, websockets.connect(url(daemon)) as ws:
        messages = await read_all(ws)
    assert [m["type"] for m in messages] == ["error"] and messages[0]["code"] == 1008 and ws.close_code == 1008


async def test_idle_timeout_sends_the_words_then_an_error_1001() -> None:
    async with running_daemon(idle_timeout_s=2) as daemon, websockets.connect(url(daemon)) as ws:
        for message in (SETUP, *appends(audio())):
            await ws.send(json.dumps(message))
        messages = await read_all(ws)
    assert kinds(messages)[-1] == "error" and messages[-1]["code"] == 1001, kinds(messages)
    assert "idle_timeout_s" in messages[-1]["message"] and ws.close_code == 1001
    assert same_words(EXPECTED[FIXTURE], utterances(messages))


async def test_shutdown_sends_the_words_of_what_came_then_an_error_1001() -> None:
    data = audio()
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        for message in (SETUP, *appends(data[: len(data) // 4])):
            await ws.send(json.dumps(message))
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(daemon.stop())
        messages = await read_all(ws)
        await stopping
    assert kinds(messages)[-2:] == ["end_text", "error"], kinds(messages)
    assert messages[-1]["code"] == 1001 and ws.close_code == 1001


async def test_shutdown_closes_a_connection_awaiting_its_setup() -> None:
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        await asyncio.sleep(0.3)
        stopping = asyncio.create_task(daemon.stop())
        messages = await read_all(ws)
        await stopping
    assert [(m["type"], m["code"]) for m in messages] == [("error", 1001)] and ws.close_code == 1001


async def test_over_max_sessions_is_an_error_1013_and_the_open_session_goes_on() -> None:
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(url(daemon)) as first,
    ):
        await first.send(json.dumps(SETUP))
        assert json.loads(await first.recv())["type"] == "ready"
        refused, code = await stream(url(daemon), SETUP)
        for message in (*appends(audio()), END):
            await first.send(json.dumps(message))
        messages = await read_all(first)
    assert [(m["type"], m["code"]) for m in refused] == [("error", 1013)] and code == 1013, refused
    assert same_words(EXPECTED[FIXTURE], utterances(messages)) and messages[-1]["type"] == "end_of_stream"


@pytest.mark.parametrize("flush_id", [1.5, 7, "turn-2", None, pytest.param(10**400, id="400-digits")])
async def test_a_flush_id_of_any_number_or_text_is_echoed(flush_id: Any) -> None:
    """The refusal's sentence says a number or a text: a fraction is a number too, so it is echoed."""
    flush = {"type": "flush"} if flush_id is None else {"type": "flush", "flush_id": flush_id}
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), SETUP, flush, END)
    assert kinds(messages) == ["ready", "flushed", "end_of_stream"], messages
    assert messages[1] == {"type": "flushed", "flush_id": flush_id} and code == 1000


async def test_an_infinite_flush_id_is_refused_as_json_has_none() -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), SETUP, '{"type": "flush", "flush_id": Infinity}', END)
    assert (
        kinds(messages) == ["ready", "error", "end_of_stream"] and "flush_id" in messages[1]["message"] and code == 1000
    ), messages


@pytest.mark.parametrize(("input_format", "rate"), [("pcm", 24000), ("pcm_8000", 8000), ("pcm_16000", 16000)])
async def test_each_80_ms_of_audio_received_is_a_step_at_once(input_format: str, rate: int) -> None:
    """A step for each `frame_size` of samples the client sent, as they come: not when the resampler
    lets them out (at 24 kHz a frame behind, at 8 kHz two frames at a time), which would keep
    LiveKit's turn waiting a frame for the step of its own silence."""
    frame = b"\x00\x00" * (rate * 8 // 100)
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(json.dumps({"type": "setup", "input_format": input_format}))
        assert json.loads(await ws.recv())["frame_size"] * 2 == len(frame)
        for index in range(1, 4):
            await ws.send(json.dumps({"type": "audio", "audio": base64.b64encode(frame).decode()}))
            async with asyncio.timeout(5):
                step = json.loads(await ws.recv())
            assert step["type"] == "step" and step["step_idx"] == index, step
            assert step["total_duration_s"] == round(index * 0.08, 3)


async def test_a_message_over_1_mib_closes_1009_as_the_docs_say() -> None:
    """The read-ahead's message limit closes the connection before any error message can be sent:
    the one close code of the stream that is not Gradium's error's, so the docs must name it."""
    too_big = json.dumps({"type": "audio", "audio": "A" * (1 << 20)})
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), SETUP, too_big)
    assert kinds(messages) in ([], ["ready"]) and code == 1009, (messages, code)  # read ahead, ready or not
    assert "closes the connection with 1009" in (ROOT / "docs" / "gradium.md").read_text()
