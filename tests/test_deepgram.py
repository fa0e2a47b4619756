"""Deepgram's live API (`/v1/listen`) end to end: real daemon, real Silero, real tiny.en, a raw
WebSocket client for every message and for input no SDK would send."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from typing import Any

import aiohttp
import numpy as np
import pydantic_core
import pytest
import websockets
from aiohttp import web
from multidict import MultiDict

from satellite_asr.biasing.context import MAX_CLIENT_TERMS
from satellite_asr.protocols import ReadAhead, deepgram, deepgram_flux
from satellite_asr.server import Daemon
from tests.doubles import (
    ContextRecordingEngineDouble,
    CrashingEngineDouble,
    FirstFinalGatedEngineDouble,
    GatedEngineDouble,
)
from tests.helpers import (
    EXPECTED,
    changed_mid_utterance,
    eventually,
    exchange,
    fixture_16k,
    normalise,
    of_type,
    pcm16,
    running_daemon,
    same_words,
    serving,
)

pytestmark = pytest.mark.timeout(180)

Messages = list[dict[str, Any]]
LINEAR16 = "encoding=linear16&sample_rate=16000"
CLOSE_STREAM = json.dumps({"type": "CloseStream"})


def listen_url(daemon: Daemon, query: str) -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{deepgram.PATH}?{query}"


def audio(name: str = "three_commands.wav") -> bytes:
    return pcm16(fixture_16k(name), 16000)


async def stream(
    url: str, data: bytes, *after: str | bytes, headers: dict[str, str] | None = None, paced: bool = False
) -> tuple[Messages, int | None]:
    """`exchange` ended by `after`, by default `CloseStream`."""
    return await exchange(url, data, *(after or (CLOSE_STREAM,)), headers=headers, paced=paced)


def finals(messages: Messages) -> Messages:
    return [m for m in of_type(messages, "Results") if m["is_final"]]


def transcript(result: dict[str, Any]) -> str:
    text: str = result["channel"]["alternatives"][0]["transcript"]
    return text


async def test_three_commands_as_deepgram_sends_them() -> None:
    data = audio()
    query = (
        f"{LINEAR16}&interim_results=true&vad_events=true&utterance_end_ms=1000&model=nova-3&smart_format=true"
        "&alternatives=1&diarize=false&multichannel=false&channels=1&no_delay=true&language=en-US&endpointing=25"
    )
    async with running_daemon() as daemon:
        messages, code = await stream(listen_url(daemon, query), data, paced=True)
    assert code == 1000
    kinds = [m["type"] for m in messages]
    assert kinds.count("SpeechStarted") == 3 and kinds[-1] == "Metadata"
    spoken = finals(messages)
    assert same_words(EXPECTED["three_commands.wav"], [transcript(m) for m in spoken])
    # the daemon's endpointing ended each command, and each final is followed by its UtteranceEnd
    assert all(m["speech_final"] and not m["from_finalize"] for m in spoken)
    for result in spoken:
        following = messages[messages.index(result) + 1]
        assert following == {
            "type": "UtteranceEnd",
            "channel": [0, 1],
            "last_word_end": pytest.approx(result["start"] + result["duration"], abs=0.002),
        }
    interims = [m for m in of_type(messages, "Results") if not m["is_final"]]
    assert interims and not any(m["speech_final"] for m in interims)
    for started, result in zip(of_type(messages, "SpeechStarted"), spoken, strict=True):
        assert started["timestamp"] == result["start"]
    # how sure the engine was; 0 where it did not say (a decode that wrote the command twice over)
    confidences = [m["channel"]["alternatives"][0]["confidence"] for m in spoken]
    assert all(0 <= c <= 1 for c in confidences) and any(c > 0.5 for c in confidences)
    metadata = messages[-1]
    assert metadata["sha256"] == hashlib.sha256(data).hexdigest()
    assert metadata["duration"] == pytest.approx(len(data) / 32000, abs=0.01)
    assert metadata["channels"] == 1 and metadata["models"] == [spoken[0]["metadata"]["model_uuid"]]
    assert metadata["model_info"][metadata["models"][0]]["name"] == daemon.core.engine_info.model
    assert {m["metadata"]["request_id"] for m in of_type(messages, "Results")} == {metadata["request_id"]}


async def test_defaults_send_finals_and_metadata_only() -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(listen_url(daemon, LINEAR16), audio("lights_on.wav"))
    assert code == 1000
    assert [m["type"] for m in messages] == ["Results", "Metadata"]
    assert messages[0]["is_final"] and same_words(EXPECTED["lights_on.wav"], [transcript(messages[0])])


async def test_endpointing_false_keeps_speech_final_false() -> None:
    async with running_daemon() as daemon:
        messages, _ = await stream(listen_url(daemon, f"{LINEAR16}&endpointing=false"), audio())
    spoken = finals(messages)
    assert len(spoken) == 3 and not any(m["speech_final"] for m in spoken)


async def test_finalize_ends_the_utterance_in_progress() -> None:
    data = audio("lights_on.wav")
    voice = data[: len(data) * 2 // 3]  # the command cut before its silence: only Finalize ends it
    finalize, close = json.dumps({"type": "Finalize"}), json.dumps({"type": "CloseStream"})
    async with running_daemon() as daemon:
        messages, _ = await stream(listen_url(daemon, LINEAR16), voice, finalize, finalize, close)
    first, second = finals(messages)
    assert first["from_finalize"] and not first["speech_final"] and transcript(first)
    # nothing was in progress at the second Finalize: an empty final answers it
    assert second["from_finalize"] and transcript(second) == "" and second["duration"] == 0


async def test_interim_results_held_back_behind_a_pending_final_are_sent_once_it_is() -> None:
    """The second command spoken whole while the first still decodes (its final gated until all the
    audio is sent): its `SpeechStarted` and interim results wait for that final and its
    `UtteranceEnd`, as Deepgram sends in audio order and clients take an interim for the utterance
    whose final comes next; the interim is sent then, not dropped."""
    engine = FirstFinalGatedEngineDouble()
    query = f"{LINEAR16}&interim_results=true&vad_events=true&utterance_end_ms=1000"
    async with running_daemon(engine) as daemon:
        messages, _ = await exchange(
            listen_url(daemon, query), audio(), CLOSE_STREAM, paced=True, release=(engine.gate, 1000.0)
        )
    kinds = {"SpeechStarted": "S", "UtteranceEnd": "E", "Metadata": "M"}
    shape = "".join(kinds.get(m["type"], "F" if m.get("is_final") else "i") for m in messages)
    assert re.fullmatch(r"(Si*FE?)+M", shape), shape
    spoken = finals(messages)
    assert same_words(EXPECTED["three_commands.wav"], [transcript(m) for m in spoken])
    between = messages[messages.index(spoken[0]) + 1 : messages.index(spoken[1])]
    interims = [transcript(m) for m in of_type(between, "Results")]
    assert interims and {"what", "time"} & set(normalise(interims[-1]).split()), interims


async def test_empty_binary_message_ends_the_stream() -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(listen_url(daemon, LINEAR16), audio("lights_on.wav"), b"")
    assert code == 1000 and [m["type"] for m in messages] == ["Results", "Metadata"]


async def test_two_channels_are_mixed_to_one() -> None:
    mono = np.frombuffer(audio("lights_on.wav"), dtype="<i2")
    stereo = np.stack([mono, np.zeros_like(mono)], axis=1).tobytes()  # the voice on the left only
    async with running_daemon() as daemon:
        messages, _ = await stream(listen_url(daemon, f"{LINEAR16}&channels=2"), stereo)
    assert same_words(EXPECTED["lights_on.wav"], [transcript(m) for m in finals(messages)])
    assert messages[-1]["channels"] == 2


async def test_keyterms_and_keywords_reach_the_engine() -> None:
    engine = ContextRecordingEngineDouble()
    query = f"{LINEAR16}&keyterm=Calloway%20blinds&keyterm=Aoife&keywords=Marigold:2.5&keywords=snake:case"
    async with running_daemon(engine) as daemon:
        await stream(listen_url(daemon, query), audio("lights_on.wav"))
    assert engine.names[-1][:4] == ("Calloway blinds", "Aoife", "Marigold", "snake:case")


async def test_configure_replaces_the_keyterms_from_the_next_utterance_on() -> None:
    """Deepgram's mid-stream keyterm update: the next utterance is decoded with the new list; a
    `Configure` over the limit, or with features not true or false, applies nothing."""
    engine = ContextRecordingEngineDouble()
    data = audio("lights_on.wav")
    replace = json.dumps({"type": "Configure", "keyterms": ["Marigold", " "], "features": {"numerals": True}})
    too_many = json.dumps({"type": "Configure", "keyterms": [f"term {n}" for n in range(MAX_CLIENT_TERMS + 1)]})
    bad_features = json.dumps({"type": "Configure", "keyterms": ["Zed"], "features": {"numerals": "yes"}})
    keep = json.dumps({"type": "Configure", "keyterms": None})
    query = f"{LINEAR16}&keyterm=Aoife"
    async with running_daemon(engine) as daemon, websockets.connect(listen_url(daemon, query)) as ws:
        await ws.send(data)
        for message in (replace, too_many, bad_features, keep):
            await ws.send(message)
        await ws.send(data)
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = [json.loads(message) async for message in ws]
    assert [names[:1] for names in engine.names] == [("Aoife",), ("Marigold",)]
    answers = [m for m in messages if m["type"].startswith("Configure")]
    assert [(m["type"], m.get("keyterms"), m.get("code")) for m in answers] == [
        ("ConfigureSuccess", ["Marigold"], None),
        ("ConfigureFailure", None, "CONFIGURE_KEYTERM_LIMIT_EXCEEDED"),
        ("ConfigureFailure", None, "CONFIGURE_INVALID"),
        ("ConfigureSuccess", None, None),
    ]
    assert len(finals(messages)) == 2


@pytest.mark.parametrize("flux", [False, True])
async def test_configure_success_names_keyterms_in_json_a_strict_parser_reads(flux: bool) -> None:
    """A keyterm with a lone surrogate (a `\\ud800` escape in the client's JSON) is decoded as
    U+FFFD, and `ConfigureSuccess` lists it written out (`echoable`): Deepgram's SDKs parse messages
    with pydantic, which refuses a whole message holding a lone surrogate."""
    configure = json.dumps({"type": "Configure", "keyterms": ["Aoife\ud800"]})
    async with running_daemon() as daemon:
        url = flux_url(daemon) if flux else listen_url(daemon, LINEAR16)
        async with websockets.connect(url) as ws:
            await ws.send(configure)
            await ws.send(json.dumps({"type": "CloseStream"}))
            raw = [message async for message in ws]
    messages = [pydantic_core.from_json(message) for message in raw]
    [success] = of_type(messages, "ConfigureSuccess")
    assert success["keyterms"] == ["Aoife\\ud800"]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("sample_rate=16000", "encoding"),
        ("encoding=opus&sample_rate=16000", "encoding"),
        ("encoding=linear16", "sample_rate"),
        ("encoding=linear16&sample_rate=96000", "sample_rate"),
        ("encoding=linear16&sample_rate=16k", "sample_rate"),
        (f"{LINEAR16}&sample_rate=8000", "sample_rate"),
        (f"{LINEAR16}&channels=0", "channels"),
        (f"{LINEAR16}&interim_results=yes", "interim_results"),
        (f"{LINEAR16}&utterance_end_ms=500", "utterance_end_ms"),
        (f"{LINEAR16}&endpointing=soon", "endpointing"),
        (f"{LINEAR16}&language=xx", "language"),
        (f"{LINEAR16}&diarize=true", "diarize"),
        (f"{LINEAR16}&multichannel=true", "multichannel"),
        (f"{LINEAR16}&redact=pci", "redact"),
        (f"{LINEAR16}&alternatives=2", "alternatives"),
        (f"{LINEAR16}&callback=http://example.com/", "callback"),
        (f"{LINEAR16}&colour=blue", "colour"),
    ],
)
async def test_a_bad_parameter_is_refused_before_the_upgrade(query: str, parameter: str) -> None:
    async with running_daemon() as daemon, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{daemon.http_port}{deepgram.PATH}?{query}"
        upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
        upgrade["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ=="
        async with http.get(url, headers=upgrade) as response:
            body = await response.json()
    assert response.status == 400
    assert body["err_code"] == "invalid_query_parameter" and body["err_msg"].startswith(f"{parameter}: ")
    assert body["request_id"]


async def test_too_many_keyterms_are_refused() -> None:
    query = LINEAR16 + "".join(f"&keyterm=name{i}" for i in range(MAX_CLIENT_TERMS + 1))
    async with running_daemon() as daemon:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(listen_url(daemon, query))
    assert refused.value.response.status_code == 400
    assert b"keyterm" in refused.value.response.body


async def test_bad_messages_get_errors_and_the_stream_goes_on() -> None:
    data = audio("lights_on.wav")
    bad = ["not json", json.dumps({"type": "Flush"}), json.dumps({"type": "Configure", "language": "de"})]
    async with running_daemon() as daemon, websockets.connect(listen_url(daemon, LINEAR16)) as ws:
        for message in bad:
            await ws.send(message)
        await ws.send(b"\x00")  # half a sample
        await ws.send(data)
        await ws.send(json.dumps({"type": "KeepAlive"}))
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = [json.loads(message) async for message in ws]
    errors = of_type(messages, "Error")
    assert [e["variant"] for e in errors] == ["SchemaError", "SchemaError", "invalid_audio"]
    assert "not JSON" in errors[0]["description"] and "'Flush'" in errors[1]["description"]
    [refused] = of_type(messages, "ConfigureFailure")
    assert refused["code"] == "CONFIGURE_INVALID" and "not language" in refused["description"]
    assert same_words(EXPECTED["lights_on.wav"], [transcript(m) for m in finals(messages)])
    assert messages[-1]["type"] == "Metadata"


async def test_deepgram_token_authorization() -> None:
    data = audio("lights_on.wav")
    async with running_daemon(api_key="listen-key") as daemon:
        url = listen_url(daemon, LINEAR16)
        messages, _ = await stream(url, data, headers={"Authorization": "Token listen-key"})
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url, additional_headers={"Authorization": "Token wrong"})
    assert same_words(EXPECTED["lights_on.wav"], [transcript(m) for m in finals(messages)])
    assert refused.value.response.status_code == 401
    body = json.loads(refused.value.response.body)
    assert (body["err_code"], body["err_msg"]) == ("invalid_api_key", "the API key is not valid")


async def test_a_client_that_leaves_frees_its_session() -> None:
    async with running_daemon() as daemon:
        async with websockets.connect(listen_url(daemon, LINEAR16)) as ws:
            await ws.send(audio("lights_on.wav")[:16000])
            await eventually(lambda: len(daemon.core.sessions) == 1)  # not a fixed 0.2 s: a loaded loop lags
        await eventually(lambda: len(daemon.core.sessions) == 0)


async def test_shutdown_sends_the_final_then_metadata_then_going_away() -> None:
    data = audio("lights_on.wav")
    async with running_daemon() as daemon, websockets.connect(listen_url(daemon, LINEAR16)) as ws:
        await ws.send(data[: len(data) * 2 // 3])
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(daemon.stop())
        messages = [json.loads(message) async for message in ws]
        await stopping
    assert [m["type"] for m in messages] == ["Results", "Metadata"] and transcript(messages[0])
    assert ws.close_code == 1001


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        (f"{LINEAR16}&channels=%C2%B2", "channels"),  # '²': str.isdigit says yes, int() says no
        ("encoding=linear16&sample_rate=%D9%A1%D9%A6%D9%A0%D9%A0%D9%A0", "sample_rate"),  # Arabic-Indic 16000
        ("encoding=linear16&sample_rate=" + "1" * 5000, "sample_rate"),  # past int()'s 4300 digits
        (f"{LINEAR16}&utterance_end_ms=%C2%B9%C2%B9%C2%B9%C2%B9", "utterance_end_ms"),
        (f"{LINEAR16}&endpointing=%C2%B2", "endpointing"),
    ],
)
async def test_a_number_not_in_ascii_digits_is_refused_not_a_crash(query: str, parameter: str) -> None:
    async with running_daemon() as daemon:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(listen_url(daemon, query))
    assert refused.value.response.status_code == 400
    assert json.loads(refused.value.response.body)["err_msg"].startswith(f"{parameter}: ")


@pytest.mark.parametrize("end", [json.dumps({"type": "CloseStream"}), b""])
async def test_the_end_then_a_close_at_once_still_gets_the_final(end: str | bytes) -> None:
    """A client that ends the stream (`CloseStream`, or the empty binary message that does the same)
    and sends its Close right after, before the server has answered: the final and `Metadata` come
    before the server's Close, not dropped with what was read ahead."""
    data = audio("lights_on.wav")
    async with (
        running_daemon() as daemon,
        aiohttp.ClientSession() as http,
        http.ws_connect(listen_url(daemon, LINEAR16), autoclose=False) as ws,
    ):
        await ws.send_bytes(data[: len(data) * 2 // 3])
        await (ws.send_bytes(end) if isinstance(end, bytes) else ws.send_str(end))
        await ws._writer.send_frame(b"\x03\xe8", aiohttp.WSMsgType.CLOSE)  # 1000, not waiting for the answer
        messages = [json.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
    assert [m["type"] for m in messages] == ["Results", "Metadata"]
    assert same_words(EXPECTED["lights_on.wav"], [transcript(messages[0])])


async def test_shutdown_while_close_stream_waits_for_its_final_still_sends_it() -> None:
    """The daemon stops while the final that `CloseStream` asked for is decoding: the shutdown's close
    of the session waits for that final, then `Metadata` and the Close, rather than closing at once."""
    engine = GatedEngineDouble()
    data = audio("lights_on.wav")
    async with running_daemon(engine) as daemon, websockets.connect(listen_url(daemon, LINEAR16)) as ws:
        await ws.send(data[: len(data) * 2 // 3])
        await ws.send(json.dumps({"type": "CloseStream"}))
        await eventually(lambda: bool(engine.finals))  # the final decode waits at the gate
        stopping = asyncio.create_task(daemon.stop())
        await asyncio.sleep(0.3)
        engine.gate.set()
        messages = [json.loads(message) async for message in ws]
        await stopping
    assert [m["type"] for m in messages] == ["Results", "Metadata"]
    assert same_words(EXPECTED["lights_on.wav"], [transcript(messages[0])])


async def test_a_refused_language_is_named_once() -> None:
    async with running_daemon() as daemon:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(listen_url(daemon, f"{LINEAR16}&language=xx"))
    message = json.loads(refused.value.response.body)["err_msg"]
    assert message.startswith("language: 'xx' is not one of the languages of this engine"), message


# Flux, Deepgram's turn-taking API (v2) at /v2/listen

FLUX_QUERY = "model=flux-general-en&encoding=linear16&sample_rate=16000"


def flux_url(daemon: Daemon, query: str = FLUX_QUERY) -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{deepgram_flux.PATH}?{query}"


def turn_events(messages: Messages, event: str) -> Messages:
    return [m for m in of_type(messages, "TurnInfo") if m["event"] == event]


async def test_flux_reports_each_command_as_a_turn() -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(flux_url(daemon, FLUX_QUERY + "&eot_threshold=0.8"), audio(), paced=True)
    assert code == 1000
    assert messages[0]["type"] == "Connected"
    assert [m["sequence_id"] for m in messages] == list(range(len(messages)))
    assert {m["request_id"] for m in messages} == {messages[0]["request_id"]}
    ends = turn_events(messages, "EndOfTurn")
    assert same_words(EXPECTED["three_commands.wav"], [m["transcript"] for m in ends])
    assert [m["turn_index"] for m in ends] == [0, 1, 2] and {m["trigger"] for m in ends} == {"model"}
    # each turn: StartOfTurn, its Updates, then EndOfTurn, and the words are the transcript's
    turns = [[m["event"] for m in of_type(messages, "TurnInfo") if m["turn_index"] == i] for i in range(3)]
    for events in turns:
        assert events[0] == "StartOfTurn" and events[-1] == "EndOfTurn" and set(events[1:-1]) <= {"Update"}
    for info in of_type(messages, "TurnInfo"):
        assert [w["word"] for w in info["words"]] == info["transcript"].split()
        assert info["end_of_turn_confidence"] == (1.0 if info["event"] == "EndOfTurn" else 0.0)
        assert info["audio_window_start"] <= info["audio_window_end"]


async def test_flux_force_end_turn_and_configure() -> None:
    data = audio("lights_on.wav")
    force = json.dumps({"type": "ForceEndTurn"})
    configure = json.dumps({"type": "Configure", "thresholds": {"eot_threshold": 0.85, "eot_timeout_ms": 3000}})
    bad = json.dumps({"type": "Configure", "thresholds": {"eager_eot_threshold": 2}})
    not_object = json.dumps({"type": "Configure", "thresholds": []})
    keyterms = json.dumps({"type": "Configure", "keyterms": ["Aoife"]})
    close = json.dumps({"type": "CloseStream"})
    async with running_daemon() as daemon:
        url = flux_url(daemon, FLUX_QUERY + "&eot_threshold=0.7")
        hints = json.dumps({"type": "Configure", "language_hints": ["de"]})
        sent = (force, configure, bad, not_object, keyterms, hints, "{", close)
        messages, code = await stream(url, data[: len(data) * 2 // 3], *sent)
    assert code == 1000
    [end] = turn_events(messages, "EndOfTurn")
    assert end["trigger"] == "manual" and end["transcript"]
    success, replaced = of_type(messages, "ConfigureSuccess")
    assert success["thresholds"] == {"eot_threshold": 0.85, "eot_timeout_ms": 3000} and success["keyterms"] == []
    assert replaced["keyterms"] == ["Aoife"] and replaced["thresholds"] == success["thresholds"]
    failures = of_type(messages, "ConfigureFailure")
    assert [f["description"] for f in failures] == [
        "thresholds.eager_eot_threshold: eager_eot_threshold must be a number from 0.3 to 0.9, got '2'",
        "thresholds must be an object",
        "language_hints: 'de' is not one of the languages of this engine (en)",
    ]
    [warning] = of_type(messages, "Warning")
    assert warning["code"] == "UNPARSABLE_CLIENT_MESSAGE" and "not JSON" in warning["description"]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("model=flux-general-en&sample_rate=16000", "encoding"),
        (f"{FLUX_QUERY}&redact=numbers", "redact"),
        (f"{FLUX_QUERY}&eot_threshold=1.05", "eot_threshold"),
        (f"{FLUX_QUERY}&eager_eot_threshold=nan", "eager_eot_threshold"),
        (f"{FLUX_QUERY}&eot_timeout_ms=100", "eot_timeout_ms"),
        (f"{FLUX_QUERY}&eot_timeout_ms=60001", "eot_timeout_ms"),
        (f"{FLUX_QUERY}&interim_results=true", "interim_results"),
        (f"{FLUX_QUERY}&language_hint=en&language_hint=xx", "language_hint"),
    ],
)
async def test_flux_refuses_a_bad_parameter_before_the_upgrade(query: str, parameter: str) -> None:
    async with running_daemon() as daemon:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(flux_url(daemon, query))
    body = json.loads(refused.value.response.body)
    assert refused.value.response.status_code == 400
    assert body["err_code"] == "invalid_query_parameter" and body["err_msg"].startswith(f"{parameter}: ")


async def test_flux_keyterms_reach_the_engine_and_shutdown_ends_the_turn() -> None:
    engine = ContextRecordingEngineDouble()
    data = audio("lights_on.wav")
    query = FLUX_QUERY + "&keyterm=Aoife&keyterm=Marigold"
    async with running_daemon(engine) as daemon, websockets.connect(flux_url(daemon, query)) as ws:
        await ws.send(data[: len(data) * 2 // 3])
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(daemon.stop())
        messages = [json.loads(message) async for message in ws]
        await stopping
    assert engine.names[-1][:2] == ("Aoife", "Marigold")
    assert messages[-1]["type"] == "TurnInfo" and messages[-1]["event"] == "EndOfTurn"
    assert messages[-1]["transcript"] and ws.close_code == 1001


async def test_flux_a_turn_holds_only_its_own_utterance_while_the_one_before_decodes() -> None:
    """The next utterance's interim transcripts, heard while the previous turn's final decodes, are
    not reported as `Update`s of the previous turn, and its turn starts after that turn's end."""
    engine = FirstFinalGatedEngineDouble()
    data = audio()
    async with running_daemon(engine) as daemon:
        # the gate opens once the second command's interim transcripts are out
        messages, _ = await exchange(flux_url(daemon), data, CLOSE_STREAM, paced=True, release=(engine.gate, 4.8))
    assert [m["sequence_id"] for m in messages] == list(range(len(messages)))
    ends = turn_events(messages, "EndOfTurn")
    assert same_words(EXPECTED["three_commands.wav"], [m["transcript"] for m in ends])
    for index, end in enumerate(ends):
        turn = [m for m in of_type(messages, "TurnInfo") if m["turn_index"] == index]
        assert turn[0]["event"] == "StartOfTurn" and turn[-1] is end
        assert all(m["audio_window_end"] <= end["audio_window_end"] + 1.2 for m in turn)
        assert all(m["audio_window_start"] >= ends[index - 1]["audio_window_end"] for m in turn if index)


async def test_flux_a_configure_failure_quotes_at_most_a_thousand_characters() -> None:
    """A `ConfigureFailure` names what the client sent, but not without end: a `Configure` of many
    unknown thresholds (or fields) is answered in a bounded sentence, and the stream goes on."""
    many = {f"threshold_{i:05d}": 0.5 for i in range(20_000)}
    configures = (
        json.dumps({"type": "Configure", "thresholds": many}),
        json.dumps({"type": "Configure", **many}),
    )
    async with running_daemon() as daemon:
        messages, code = await stream(flux_url(daemon), audio("lights_on.wav"), *configures, "{", b"")
    assert code == 1000
    failures = of_type(messages, "ConfigureFailure")
    assert len(failures) == 2 and all(len(f["description"]) < 1100 for f in failures)
    assert failures[0]["description"].startswith("unknown thresholds: threshold_00000, threshold_00001")
    assert len(turn_events(messages, "EndOfTurn")) == 1 and len(of_type(messages, "Warning")) == 1


async def test_flux_takes_the_thresholds_deepgram_takes_for_manual_turns() -> None:
    """Deepgram's ranges: `eot_threshold` up to 1.0 (which turns its own end-of-turn detection off,
    for clients that end turns with `ForceEndTurn`) and `eot_timeout_ms` up to 60000."""
    configure = json.dumps({"type": "Configure", "thresholds": {"eot_threshold": 1.0, "eot_timeout_ms": 60000}})
    async with running_daemon() as daemon:
        url = flux_url(daemon, FLUX_QUERY + "&eot_threshold=1.0&eot_timeout_ms=60000")
        messages, code = await stream(url, audio("lights_on.wav"), configure, b"")
    assert code == 1000
    [success] = of_type(messages, "ConfigureSuccess")
    assert success["thresholds"] == {"eot_threshold": 1.0, "eot_timeout_ms": 60000}


@pytest.mark.parametrize("url", [flux_url, lambda daemon: listen_url(daemon, LINEAR16)])
async def test_a_failed_final_counts_once_in_the_error_metric(url: Any) -> None:
    """The session counts the failures it reports (`Session._emit`); the adapter that passes one
    on (Flux's `Warning`, the live API's `Error`) does not count it again."""
    engine = CrashingEngineDouble()
    async with running_daemon(engine) as daemon:
        errors = daemon.core.metrics.errors.labels("engine_error")
        before = errors._value.get()
        messages, code = await stream(f"{url(daemon)}&keyterm=crash", audio("lights_on.wav"))
        counted = errors._value.get() - before
    kinds = [m["type"] for m in messages]
    assert code == 1000 and (kinds.count("Warning") + kinds.count("Error")) == 1
    assert counted == 1


async def test_flux_messages_sent_side_by_side_go_out_in_sequence_id_order() -> None:
    """A long turn's `EndOfTurn` (over 16 KB, which aiohttp compresses in its executor) and a small
    message sent meanwhile by another task (a `Warning`, a `ConfigureSuccess`) reach a client that
    took compression (the SDK's `websockets` does) in the order of their `sequence_id`."""
    received: Messages = []
    async with running_daemon() as daemon:
        core = daemon.core

        async def handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            params = deepgram_flux.parse_flux_params(MultiDict(encoding="linear16", sample_rate="16000"), core)
            reading = ReadAhead(ws, core.settings, request.transport)
            connection = deepgram_flux.FluxConnection(ws, core, request, reading, params)
            long_turn = connection.turn_info("EndOfTurn", " ".join(["word"] * 1000), 60.0, 0.9, 1.0)
            warning = {"type": "Warning", "code": "UNPARSABLE_CLIENT_MESSAGE", "description": "meanwhile"}
            await asyncio.gather(connection.send(long_turn), connection.send(warning))
            await ws.close()
            return ws

        app = web.Application()
        app.router.add_get("/", handler)
        async with serving(app) as port, websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
            received.extend([json.loads(message) async for message in ws])
    assert [(m["type"], m["sequence_id"]) for m in received] == [("TurnInfo", 0), ("Warning", 1)]


async def test_flux_multi_model_end_of_turn_names_the_detected_language() -> None:
    """On `flux-general-multi` the engine detects the language and `EndOfTurn` says which in
    `languages`, as Flux does (LiveKit's STTv2 and Pipecat's Flux service read the turn's language
    there); on another model the language is the daemon's setting, and `languages` is left out."""
    multi = "model=flux-general-multi&encoding=linear16&sample_rate=16000"
    async with running_daemon() as daemon:
        detected, _ = await stream(flux_url(daemon, multi), audio("lights_on.wav"))
        fixed, _ = await stream(flux_url(daemon), audio("lights_on.wav"))
    [end] = turn_events(detected, "EndOfTurn")
    assert end["languages"] == ["en"] and same_words(EXPECTED["lights_on.wav"], [end["transcript"]])
    assert all("languages" not in m for m in fixed) and turn_events(fixed, "EndOfTurn")


async def test_flux_configure_language_hints_apply_from_the_next_turn() -> None:
    """On `flux-general-multi` one `language_hint` steers the decode; `Configure`'s `language_hints`
    (LiveKit's and Pipecat's language change) replace them from the next turn on, the turn in
    progress keeping its own: `[]` lets the engine detect. `ConfigureSuccess` echoes the hints now
    in effect; an unknown code, or hints not a list, is `ConfigureFailure` and applies nothing."""
    engine = ContextRecordingEngineDouble()
    data = audio("lights_on.wav")
    query = "model=flux-general-multi&encoding=linear16&sample_rate=16000&language_hint=en"
    bad = [json.dumps({"type": "Configure", "keyterms": ["Aoife"], "language_hints": h}) for h in (["xx"], "en")]
    clear = json.dumps({"type": "Configure", "language_hints": []})
    async with running_daemon(engine) as daemon:
        url = flux_url(daemon, query)
        messages = await changed_mid_utterance(url, data, [*bad, clear], ("event", "StartOfTurn"), CLOSE_STREAM)
    assert engine.languages == ["en", None] and [names[:1] for names in engine.names] == [(), ()]
    failures = of_type(messages, "ConfigureFailure")
    assert [f["description"].split(":")[0] for f in failures] == ["language_hints"] * 2, failures
    [success] = of_type(messages, "ConfigureSuccess")
    assert success["language_hints"] == [] and success["keyterms"] == []
    ends = turn_events(messages, "EndOfTurn")
    assert [end["languages"] for end in ends] == [["en"], ["en"]]
    assert same_words(EXPECTED["lights_on.wav"] * 2, [end["transcript"] for end in ends])


async def test_a_finalize_with_nothing_in_progress_is_answered_empty_though_a_capped_final_is_pending() -> None:
    """docs/deepgram.md: a `Finalize` with nothing in progress is answered by an empty
    `from_finalize` final. An utterance the length cap ended before the Finalize (its endpoint
    `forced`, as a Finalize's is), whose final is still decoding, is not the Finalize's: it must
    not say `from_finalize`, and the Finalize still gets its empty answer."""
    data = audio("lights_on.wav") + bytes(2 * 16000 * 2)  # the command, then 2 s of silence
    engine = GatedEngineDouble()
    messages: Messages = []
    async with (
        running_daemon(engine, max_utterance_s=1.0) as daemon,
        websockets.connect(listen_url(daemon, LINEAR16)) as ws,
    ):
        for offset in range(0, len(data), 3200):
            await ws.send(data[offset : offset + 3200])
        await ws.send(json.dumps({"type": "Finalize"}))
        await asyncio.sleep(1.0)
        assert engine.finals, "the length cap ended an utterance, whose final waits for the gate"
        engine.gate.set()
        await ws.send(CLOSE_STREAM)
        messages = [json.loads(message) async for message in ws]
    said = [(transcript(m), m["from_finalize"]) for m in finals(messages)]
    assert said[-1] == ("", True), said
    assert not any(from_finalize for text, from_finalize in said if text), said
