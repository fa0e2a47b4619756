"""AssemblyAI's Universal-Streaming API (`/v3/ws`) end to end: real daemon, real Silero, real
tiny.en, a raw WebSocket client for every message and for input no SDK would send."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qsl, quote

import aiohttp
import pytest
import websockets
from multidict import MultiDict

from satellite_asr.biasing.context import MAX_CLIENT_TERMS
from satellite_asr.core import Core
from satellite_asr.protocols import assemblyai
from satellite_asr.server import Daemon
from tests.doubles import (
    ContextRecordingEngineDouble,
    CrashingEngineDouble,
    FirstFinalGatedEngineDouble,
    FirstUtteranceIsNoiseEngineDouble,
)
from tests.helpers import (
    EXPECTED,
    changed_mid_utterance,
    daemon_settings,
    exchange,
    fixture_16k,
    of_type,
    pcm16,
    running_daemon,
    same_words,
    websocket_upgrade,
)

pytestmark = pytest.mark.timeout(180)

Messages = list[dict[str, Any]]
RATE = "sample_rate=16000"
TERMINATE = json.dumps({"type": "Terminate"})
EN = "language_codes=%5B%22en%22%5D"


def v3_url(daemon: Daemon, query: str = RATE) -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{assemblyai.PATH}?{query}"


def audio(name: str = "three_commands.wav") -> bytes:
    return pcm16(fixture_16k(name), 16000)


async def stream(
    url: str, data: bytes, *after: str | bytes, headers: dict[str, str] | None = None, paced: bool = False
) -> tuple[Messages, int | None]:
    """`exchange` ended by `after`, by default `Terminate`."""
    return await exchange(url, data, *(after or (TERMINATE,)), headers=headers, paced=paced)


def final_turns(messages: Messages) -> Messages:
    return [m for m in of_type(messages, "Turn") if m["end_of_turn"]]


async def test_three_commands_as_a_livekit_agent_asks_for_them() -> None:
    """LiveKit's query (universal-3-6-pro's defaults); each command a turn: `SpeechStarted`, partial
    `Turn`s, then one final `Turn`, numbered in order; `Begin` first and `Termination` last."""
    query = (
        f"{RATE}&encoding=pcm_s16le&speech_model=universal-3-6-pro&min_turn_silence=100&max_turn_silence=100"
        "&language_detection=true&format_turns=true&end_of_turn_confidence_threshold=0.4&vad_threshold=0.3"
        f"&keyterms_prompt={quote(json.dumps(['Calloway']))}&prompt=Transcribe%20a%20voice%20command"
    )
    async with running_daemon() as daemon:
        messages, code = await stream(v3_url(daemon, query), audio(), paced=True)
    assert code == 1000
    assert messages[0]["type"] == "Begin" and messages[-1]["type"] == "Termination"
    assert messages[-1]["audio_duration_seconds"] == round(fixture_16k("three_commands.wav").size / 16000)
    finals = final_turns(messages)
    assert same_words(EXPECTED["three_commands.wav"], [turn["transcript"] for turn in finals])
    assert [turn["turn_order"] for turn in finals] == [0, 1, 2]
    assert all(turn["turn_is_formatted"] and turn["end_of_turn_confidence"] == 1.0 for turn in finals)
    assert all(turn["language_code"] == "en" for turn in finals), "language_detection names the language"
    for turn in finals:
        assert [word["text"] for word in turn["words"]] == turn["transcript"].split()
        assert all(word["word_is_final"] for word in turn["words"])
    assert len(of_type(messages, "SpeechStarted")) == 3
    kinds = [(m["type"], m.get("turn_order"), m.get("end_of_turn")) for m in messages]
    for order in range(3):
        partial, final = kinds.index(("Turn", order, False)), kinds.index(("Turn", order, True))
        assert kinds[partial - 1][0] == "SpeechStarted" and partial < final, "the turn's partials come first"


async def next_final(ws: websockets.ClientConnection) -> dict[str, Any]:
    """The next final `Turn` the server sends (what comes before it is skipped)."""
    while True:
        message = json.loads(await ws.recv())
        if message["type"] == "Turn" and message["end_of_turn"]:
            return message


async def test_a_turn_begins_after_the_one_before_ends_while_its_final_decodes() -> None:
    """With two decodes at once, the next utterance is heard while the turn before has not ended
    (its final decodes): its `SpeechStarted` and partial `Turn`s do not come before that final, so
    the turns do not overlap and `turn_order` only grows, each final the last of its turn."""
    engine = FirstFinalGatedEngineDouble()
    data = audio()
    async with running_daemon(engine) as daemon:
        # the gate opens once the second command's partials are out
        received, _ = await exchange(v3_url(daemon), data, TERMINATE, paced=True, release=(engine.gate, 4.8))
    finals = final_turns(received)
    assert same_words(EXPECTED["three_commands.wav"], [turn["transcript"] for turn in finals])
    assert [turn["turn_order"] for turn in finals] == [0, 1, 2]
    kinds = [(m["type"], m.get("turn_order"), m.get("end_of_turn")) for m in received]
    orders = [order for kind, order, _ in kinds if kind == "Turn"]
    assert orders == sorted(orders), f"turns overlap: {orders}"
    for order, final in enumerate(finals):
        at = received.index(final)
        started = [i for i, (kind, _, _) in enumerate(kinds) if kind == "SpeechStarted"]
        assert all(m.get("turn_order") != order for m in received[at + 1 :]), "a final ends its turn"
        assert len([i for i in started if i < at]) == order + 1, "the next turn starts after this one ended"


async def test_update_configuration_format_turns_marks_the_finals_after_it() -> None:
    data = audio("lights_on.wav")
    update = json.dumps({"type": "UpdateConfiguration", "format_turns": True, "max_turn_silence": 1200})
    async with running_daemon() as daemon, websockets.connect(v3_url(daemon)) as ws:
        await ws.send(data)
        before = await next_final(ws)
        await ws.send(update)
        await ws.send(data)
        await ws.send(TERMINATE)
        rest = [json.loads(message) async for message in ws]
    assert not before["turn_is_formatted"], "without format_turns, finals are not marked formatted"
    assert of_type(rest, "Warning") == []
    assert [turn["turn_is_formatted"] for turn in final_turns(rest)] == [True]


async def test_force_endpoint_ends_the_turn_in_progress_and_the_stream_goes_on() -> None:
    data = audio("lights_on.wav")
    async with running_daemon() as daemon, websockets.connect(v3_url(daemon)) as ws:
        await ws.send(data[: len(data) * 2 // 3])
        await ws.send(json.dumps({"type": "ForceEndpoint"}))
        forced = await next_final(ws)
        await ws.send(data)
        await ws.send(TERMINATE)
        rest = [json.loads(message) async for message in ws]
    assert forced["turn_order"] == 0 and forced["transcript"]
    [final] = final_turns(rest)
    assert final["turn_order"] == 1 and same_words(EXPECTED["lights_on.wav"], [final["transcript"]])


@pytest.mark.parametrize(
    ("query", "language"),
    [
        ("language_code=en&language_codes=%5B%22en%22%5D", "en"),
        ("language_codes=%5B%22en%22%2C%22en%22%5D", "en"),
        ("language_code=de&language_codes=%5B%22en%22%5D", "en"),
        ("language_codes=%5B%22en%22%2C%22en-US%22%5D", "en"),
        ("language_codes=%5B%22multi%22%5D", None),
        ("language_detection=true&language_code=en", "en"),
    ],
)
def test_the_stream_language(query: str, language: str | None) -> None:
    """`language_codes` binds over `language_code` (AssemblyAI's older name); one language named,
    even twice, is the stream's, `language_detection` beside it included (LiveKit sends both);
    several, or `multi`, let the engine detect."""
    params = assemblyai.parse_params(MultiDict(parse_qsl(f"{RATE}&{query}")), Core(daemon_settings()))
    assert isinstance(params, assemblyai.StreamingParams) and params.language == language


async def test_keyterms_reach_the_engine_and_update_configuration_replaces_them() -> None:
    """The next utterance after an `UpdateConfiguration` is decoded with its keyterms; one over the
    limit, or not a list of texts, is a `Warning` and applies nothing (its `format_turns` neither)."""
    engine = ContextRecordingEngineDouble()
    data = audio("lights_on.wav")
    query = f"{RATE}&keyterms_prompt={quote(json.dumps(['Calloway blinds', 'Aoife', ' ']))}"
    update = {"type": "UpdateConfiguration", "format_turns": True, "keyterms_prompt": ["Aoife"]}
    too_many = json.dumps({**update, "keyterms_prompt": [f"term {n}" for n in range(MAX_CLIENT_TERMS + 1)]})
    not_texts = json.dumps({**update, "keyterms_prompt": [1, 2]})
    replace = json.dumps({"type": "UpdateConfiguration", "keyterms_prompt": ["Marigold"]})
    async with running_daemon(engine) as daemon, websockets.connect(v3_url(daemon, query)) as ws:
        await ws.send(data)
        await next_final(ws)
        for message in (too_many, not_texts, replace):
            await ws.send(message)
        await ws.send(data)
        await ws.send(TERMINATE)
        rest = [json.loads(message) async for message in ws]
    assert [names[:2] for names in engine.names] == [("Calloway blinds", "Aoife"), ("Marigold",)]
    warnings = of_type(rest, "Warning")
    assert [w["warning_code"] for w in warnings] == [assemblyai.INPUT_INVALID] * 2
    assert "over the limit of 300" in warnings[0]["warning"] and "list of texts" in warnings[1]["warning"]
    assert [turn["turn_is_formatted"] for turn in final_turns(rest)] == [False]


async def test_the_utterance_in_progress_keeps_its_own_names_when_update_configuration_changes_them() -> None:
    """Keyterms sent while an utterance is heard apply from the next one on: the one in progress is
    decoded and its transcript corrected towards the names it began with (none here: tiny.en hears
    "camera wave lines"), the next one towards the new ("Calloway blinds")."""
    engine = ContextRecordingEngineDouble()
    data = audio("names/named_00.wav")
    silence = bytes(32000)
    update = json.dumps({"type": "UpdateConfiguration", "keyterms_prompt": ["Calloway blinds"]})
    async with running_daemon(engine) as daemon, websockets.connect(v3_url(daemon)) as ws:
        await ws.send(data[:32000])
        while json.loads(await ws.recv())["type"] != "SpeechStarted":
            pass
        await ws.send(update)
        await ws.send(data[32000:] + silence)
        first = await next_final(ws)
        await ws.send(data + silence)
        await ws.send(TERMINATE)
        rest = [json.loads(message) async for message in ws]
    [second] = final_turns(rest)
    assert [names[:1] for names in engine.names] == [(), ("Calloway blinds",)]
    assert "Calloway" not in first["transcript"], "corrected towards names its utterance did not begin with"
    assert "Calloway blinds" in second["transcript"]


async def test_update_configuration_language_codes_apply_from_the_next_utterance() -> None:
    """`language_codes` mid-stream (LiveKit's and Pipecat's language change): the utterance in progress
    is decoded in the language it began with, its final saying none (one declared, no detection); the
    next with `multi` (the engine detects), its final saying the language. Codes checked as the
    query's: an unknown one, or not a list (a text reading as one included: each setting of its JSON
    type), is a Warning and applies nothing (`format_turns` and `keyterms_prompt` beside them neither)."""
    engine = ContextRecordingEngineDouble()
    data = audio("lights_on.wav")
    update = {"type": "UpdateConfiguration", "format_turns": True, "keyterms_prompt": ["Aoife"]}
    bad = [json.dumps({**update, "language_codes": codes}) for codes in (["en", "xx"], "en", '["en"]')]
    multi = json.dumps({"type": "UpdateConfiguration", "language_codes": ["multi"]})
    async with running_daemon(engine) as daemon:
        url = v3_url(daemon, f"{RATE}&{EN}")
        messages = await changed_mid_utterance(url, data, [*bad, multi], ("type", "SpeechStarted"), TERMINATE)
    assert engine.languages == ["en", None] and [names[:1] for names in engine.names] == [(), ()]
    warnings = of_type(messages, "Warning")
    assert [w["warning"].split(":")[0] for w in warnings] == ["language_codes"] * 3, warnings
    first, second = final_turns(messages)
    assert "language_code" not in first and not first["turn_is_formatted"], first
    assert second["language_code"] == "en" and not second["turn_is_formatted"], second


@pytest.mark.parametrize(
    ("languages", "decoded_in", "reported"),
    [
        ('language_codes=["en"]&language_detection=true', "en", True),  # LiveKit's: the declared code steers
        ('language_codes=["en"]&language_code=de', "en", False),  # language_codes binds, language_code ignored
        ('language_codes=["en","en"]', "en", False),
        ('language_codes=["en","multi"]', None, True),
        ("language_detection=true", None, True),
        ('language_codes=["en"]&language_detection=false', "en", False),
    ],
)
async def test_declared_languages_steer_the_decode_and_detection_reports_the_language(
    languages: str, decoded_in: str | None, reported: bool
) -> None:
    """As AssemblyAI: `language_codes` is what the audio is declared to be in (`language_code`, its
    older alias, is ignored beside it; a code twice is one), `language_detection` reports each
    final's language and does not override a single declared one; several codes let the engine detect."""
    engine = ContextRecordingEngineDouble()
    query = f"{RATE}&{languages}".replace('"', "%22")
    async with running_daemon(engine) as daemon:
        messages, code = await stream(v3_url(daemon, query), audio("lights_on.wav"))
    assert code == 1000, messages
    assert engine.languages == [decoded_in]
    [final] = final_turns(messages)
    assert ("language_code" in final) is reported and final.get("language_code", "en") == "en"


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("encoding=pcm_s16le", "sample_rate"),
        (f"{RATE}&encoding=aac", "encoding"),
        ("sample_rate=%C2%B2", "sample_rate"),
        (f"{RATE}&speaker_labels=true", "speaker_labels"),
        (f"{RATE}&token=abc", "token"),
        (f"{RATE}&webhook_url=http://x", "webhook_url"),
        (f"{RATE}&no_such=1", "no_such"),
        (f"{RATE}&keyterms_prompt=Aoife", "keyterms_prompt"),
        (f"{RATE}&keyterms_prompt=[1]", "keyterms_prompt"),
        (f"{RATE}&keyterms_prompt=" + quote('["Aoife"], "list": ["Calloway"]'), "keyterms_prompt"),  # not one list
        (f"{RATE}&keyterms_prompt=" + quote('["Aoife"]}, {"x": 1'), "keyterms_prompt"),
        (f"{RATE}&language_codes=%5B%22xx%22%5D", "language_codes"),
        (f"{RATE}&language_codes=%5B%22xx%22,%22en%22%5D", "language_codes"),
        (f"{RATE}&min_turn_silence=soon", "min_turn_silence"),
        (f"{RATE}&vad_threshold=2", "vad_threshold"),
        (f"{RATE}&format_turns=maybe", "format_turns"),
        (f"{RATE}&sample_rate=8000", "sample_rate"),
    ],
)
async def test_a_bad_parameter_is_an_error_and_a_close_with_its_code(query: str, parameter: str) -> None:
    """As AssemblyAI answers one: after the upgrade, an `Error` 3006 naming the parameter, then the
    Close with that code (what its SDK reports)."""
    messages: Messages = []
    async with running_daemon() as daemon, websockets.connect(v3_url(daemon, query)) as ws:
        with pytest.raises(websockets.ConnectionClosedError):  # an error code ends the iteration so
            async for message in ws:
                messages.append(json.loads(message))
        refused = daemon.core.metrics.errors.labels("invalid_query_parameter")._value.get()
    assert ws.close_code == assemblyai.INPUT_INVALID and refused == 1
    [error] = messages
    assert error["type"] == "Error" and error["error_code"] == assemblyai.INPUT_INVALID
    assert error["error"].startswith(f"{parameter}: ")


async def test_a_refusal_of_a_bad_query_holds_a_connection_slot_while_it_is_answered() -> None:
    """The refusal is answered on the upgraded connection (an `Error`, then a Close that a client
    which reads nothing never answers): it counts under `max_websocket_connections` as any
    connection does, so such clients cannot open connections past the cap."""
    async with running_daemon(max_websocket_connections=1) as daemon:
        port = daemon.http_port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await websocket_upgrade(reader, writer, port, f"{assemblyai.PATH}?encoding=aac")
        assert answer.startswith(b"HTTP/1.1 101")
        with pytest.raises(websockets.InvalidStatus) as busy:
            await websockets.connect(v3_url(daemon))
        writer.close()
    assert busy.value.response.status_code == 503


async def test_bad_messages_get_warnings_and_the_stream_goes_on() -> None:
    data = audio("lights_on.wav")
    bad = [
        "not json",
        json.dumps({"type": "Pause"}),
        json.dumps({"type": "UpdateConfiguration", "language_detection": True}),
        json.dumps({"type": "UpdateConfiguration", "sample_rate": 8000}),
        json.dumps({"type": "UpdateConfiguration", "format_turns": True, "vad_threshold": 7}),
        json.dumps({"type": "KeepAlive"}),
    ]
    async with running_daemon() as daemon:
        messages, code = await stream(v3_url(daemon), data[:3200], *bad, data, TERMINATE)
    assert code == 1000
    warnings = of_type(messages, "Warning")
    assert [w["warning_code"] for w in warnings] == [assemblyai.INPUT_INVALID] * 5
    assert "language_detection" in warnings[2]["warning"] and "sample_rate" in warnings[3]["warning"]
    assert "vad_threshold" in warnings[4]["warning"]
    [final] = final_turns(messages)
    assert not final["turn_is_formatted"], "a refused UpdateConfiguration applies nothing"
    assert same_words(EXPECTED["lights_on.wav"], [final["transcript"]])


async def test_update_configuration_takes_each_setting_as_its_json_type() -> None:
    """A number, true or false, or text is that JSON type, not a text that reads as it (nor, as
    Python would have it, true for 1); null leaves a setting as it is, `language_codes` included."""
    data = audio("lights_on.wav")
    bad = [
        {"format_turns": "true"},
        {"min_turn_silence": "100"},
        {"vad_threshold": "0.5"},
        {"prompt": {"text": "Aoife"}},
        {"end_of_turn_confidence_threshold": True},
    ]
    fine = {"language_codes": None, "max_turn_silence": 500, "vad_threshold": 1, "prompt": "a voice command"}
    updates = [json.dumps({"type": "UpdateConfiguration", **fields}) for fields in (*bad, fine)]
    async with running_daemon() as daemon:
        messages, code = await stream(v3_url(daemon), data[:3200], *updates, data, TERMINATE)
    assert code == 1000
    warnings = of_type(messages, "Warning")
    assert [w["warning_code"] for w in warnings] == [assemblyai.INPUT_INVALID] * len(bad), warnings
    for warning, fields in zip(warnings, bad, strict=True):
        assert warning["warning"].startswith(f"{next(iter(fields))}: ")
    [final] = final_turns(messages)
    assert not final["turn_is_formatted"], "format_turns as text applies nothing"


async def test_the_key_alone_in_authorization_and_refusals_in_assemblyais_body() -> None:
    async with running_daemon(api_key="aai-key") as daemon:
        messages, code = await stream(v3_url(daemon), audio("lights_on.wav"), headers={"Authorization": "aai-key"})
        assert code == 1000 and len(final_turns(messages)) == 1
        http = f"http://127.0.0.1:{daemon.http_port}{assemblyai.PATH}?{RATE}"
        async with aiohttp.ClientSession() as session:
            async with session.get(http, headers={"Authorization": "wrong"}) as wrong:
                assert wrong.status == 401
                assert await wrong.json() == {"error": "the API key is not valid", "code": "invalid_api_key"}
            async with session.get(http, headers={"Authorization": "aai-key"}) as plain:
                assert plain.status == 426 and (await plain.json())["code"] == "websocket_required"


async def test_shutdown_sends_the_final_then_termination_then_going_away() -> None:
    data = audio("lights_on.wav")
    async with running_daemon() as daemon, websockets.connect(v3_url(daemon)) as ws:
        await ws.send(data[: len(data) * 2 // 3])
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(daemon.stop())
        messages = [json.loads(message) async for message in ws]
        await stopping
    assert [m["type"] for m in messages[-2:]] == ["Turn", "Termination"]
    assert messages[-2]["end_of_turn"] and messages[-2]["transcript"]
    assert ws.close_code == 1001


async def test_an_utterance_without_words_ends_its_speech_with_an_empty_final() -> None:
    """Every `SpeechStarted` is answered by a final `Turn`: LiveKit ends the speech it began at one
    only at a final, and a noise with no words would have left it speaking."""
    data = audio("lights_on.wav")
    async with running_daemon(FirstUtteranceIsNoiseEngineDouble()) as daemon:
        messages, code = await stream(v3_url(daemon), data + data)
    assert code == 1000 and messages[-1]["type"] == "Termination"
    ends = [(m["type"], m.get("turn_order")) for m in messages if m["type"] != "Turn" or m["end_of_turn"]]
    assert ends[:-1] == [("Begin", None), ("SpeechStarted", None), ("Turn", 0), ("SpeechStarted", None), ("Turn", 1)]
    noise, command = final_turns(messages)
    assert noise["transcript"] == "" and noise["words"] == []
    assert same_words(EXPECTED["lights_on.wav"], [command["transcript"]])


async def test_an_engine_failure_is_a_warning_counted_once() -> None:
    """The session counts the failures it reports (`Session._emit`); the `Warning` that passes one
    on does not count it again, and the stream goes on."""
    engine = CrashingEngineDouble()
    query = f"{RATE}&keyterms_prompt={quote(json.dumps(['crash']))}"
    async with running_daemon(engine) as daemon:
        errors = daemon.core.metrics.errors.labels("engine_error")
        before = errors._value.get()
        messages, code = await stream(v3_url(daemon, query), audio("lights_on.wav"))
        counted = errors._value.get() - before
    assert code == 1000 and counted == 1
    [warning] = of_type(messages, "Warning")
    assert warning["warning_code"] == assemblyai.SERVER_ERROR
    assert messages[-1]["type"] == "Termination"
