"""xAI's real-time speech-to-text API (`/v1/stt`) end to end: real daemon, real Silero, real
tiny.en, a raw WebSocket client for every message and for input no client library would send."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
import websockets
from multidict import MultiDict

from satellite_asr.audio import PcmDecoder
from satellite_asr.core import Core
from satellite_asr.protocols import xai
from satellite_asr.protocols.streaming_apis import ParameterError
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble, FailsOnAWordEngineDouble
from tests.helpers import (
    EXPECTED,
    FIXTURES,
    PCM_FRAME_BYTES,
    daemon_settings,
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
from tests.test_speechmatics import encoded

pytestmark = pytest.mark.timeout(180)

Messages = list[dict[str, Any]]
FIXTURE = "three_commands.wav"
DONE = {"type": "audio.done"}
KEY = "xai-key"
XAI_KEYTERMS = 100
"""xAI's limit of `keyterm`s (its reference), on its upload and its stream."""


def url(daemon: Daemon, query: str = "") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{xai.PATH}{'?' + query if query else ''}"


def audio() -> bytes:
    return pcm16(fixture_16k(FIXTURE), 16000)


async def stream(
    target: str, *sent: dict[str, Any] | str | bytes, headers: dict[str, str] | None = None, paced: bool = False
) -> tuple[Messages, int | None]:
    """The `sent` messages (by default the fixture then `audio.done`); every message until the
    Close, and its code."""
    return await send_all(target, sent or (*pcm_frames(audio()), DONE), headers, paced, is_binary)


def finals(messages: Messages) -> list[str]:
    """The utterances' finals, then `transcript.done`'s text when it has any."""
    said = [m["text"] for m in of_type(messages, "transcript.partial") if m["is_final"] and m["speech_final"]]
    return said + [m["text"] for m in of_type(messages, "transcript.done") if m["text"]]


async def test_three_commands_every_message_in_order() -> None:
    """`transcript.created` first; with interim_results, partials (neither flag) while each command
    is heard, then its final (both flags) restating it, with words spanning it and its language;
    `audio.done`: `transcript.done` with the stream's length, last, then a normal Close."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, "interim_results=true"), *pcm_frames(audio()), DONE, paced=True)
    assert code == 1000 and messages[0] == {"type": "transcript.created"}, messages[:2]
    assert messages[-1]["type"] == "transcript.done" and messages[-1]["text"] == "" and messages[-1]["words"] == []
    assert messages[-1]["duration"] == round(len(audio()) / 32000, 2)
    said = finals(messages)
    assert same_words(EXPECTED[FIXTURE], said), said
    partials = [m for m in of_type(messages, "transcript.partial") if not m["is_final"]]
    assert len(partials) >= 3 and not any(m["speech_final"] for m in partials)
    kinds = ["final" if m.get("is_final") else m["type"] for m in messages[1:-1]]
    assert kinds[-1] == "final" and kinds.count("final") == 3, kinds
    for final in of_type(messages, "transcript.partial"):
        if final["is_final"]:
            assert final["language"] == "en" and final["duration"] > 0, final
            assert [w["text"] for w in final["words"]] == final["text"].split()
            ends = {(w["start"], w["end"]) for w in final["words"]}
            assert ends == {(final["start"], round(final["start"] + final["duration"], 3))}, final


async def test_no_partials_unless_asked_for() -> None:
    """xAI's default is `interim_results=false`: the finals alone."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon))
    assert all(m["is_final"] for m in of_type(messages, "transcript.partial")) and code == 1000
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)


async def test_audio_done_mid_command_puts_its_words_in_transcript_done() -> None:
    """`audio.done` in the middle of the first command: its words so far are the remainder that
    `transcript.done` carries (xAI's way), not a `speech_final` transcript."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), *pcm_frames(audio()[: 12 * PCM_FRAME_BYTES]), DONE)
    assert not [m for m in of_type(messages, "transcript.partial") if m["is_final"]], messages
    [done] = of_type(messages, "transcript.done")
    assert normalise(done["text"]).split()[0] == normalise(EXPECTED[FIXTURE][0]).split()[0], done
    assert [w["text"] for w in done["words"]] == done["text"].split() and code == 1000


@pytest.mark.parametrize(
    ("encoding", "rate", "ours"), [("mulaw", 8000, "pcmu"), ("alaw", 16000, "pcma"), ("pcm", 48000, "s16le")]
)
async def test_each_encoding_at_its_rate(encoding: str, rate: int, ours: str) -> None:
    audioop = pytest.importorskip("audioop")  # A-law's encoder: Python's own G.711 tables (<= 3.12)
    if ours == "pcma":
        data = audioop.lin2alaw(pcm16(fixture_16k(FIXTURE), rate), 2)
    else:
        data = encoded(fixture_16k(FIXTURE), ours, rate)
    frame = PcmDecoder(ours, rate).frame_bytes * rate // 10
    async with running_daemon() as daemon:
        messages, _ = await stream(
            url(daemon, f"encoding={encoding}&sample_rate={rate}"), *pcm_frames(data, frame), DONE
        )
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)


async def test_keyterms_reach_the_engine_and_unapplied_settings_are_taken() -> None:
    """Every `keyterm` (repeatable) is the engine's biasing; what LiveKit's plugin sends besides
    (endpointing, vad_threshold, smart_turn, smart_turn_timeout, diarize=false, model) is taken."""
    engine = ContextRecordingEngineDouble()
    query = (
        "keyterm=Grok&keyterm=Colossus&endpointing=100&vad_threshold=0.08&smart_turn=0.5"
        "&smart_turn_timeout=800&diarize=false&multichannel=false&language=en&model=grok-voice-transcribe-2.0"
    )
    async with running_daemon(engine) as daemon:
        messages, code = await stream(url(daemon, query))
    assert code == 1000 and not of_type(messages, "error"), messages
    assert engine.names and all(names[:2] == ("Grok", "Colossus") for names in engine.names), engine.names


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("encoding=opus", "encoding must be one of pcm, mulaw, alaw"),
        ("sample_rate=11025", "sample_rate must be one of"),
        ("diarize=true", "speaker labels"),
        ("multichannel=true&channels=2", "a transcript per channel"),
        ("interim_results=yes", "true or false"),
        ("endpointing=9000", "endpointing must be a whole number from 0 to 5000"),
        ("vad_threshold=2", "vad_threshold"),
        ("smart_turn_timeout=0", "smart_turn_timeout"),
        ("channels=9", "channels"),
        ("language=xx", "language"),
        ("punctuate=true", "unknown query parameter 'punctuate'"),
        ("encoding=pcm&encoding=mulaw", "give it once"),
        ("model=", "model is empty"),
        ("keyterm=" + "x" * 5000, "keyterm"),
    ],
)
async def test_a_bad_query_is_an_error_event_then_1008(query: str, words: str) -> None:
    """Refused in the stream, before any session: the sentence both clients report, then 1008."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, query))
    assert [m["type"] for m in messages] == ["error"] and words in messages[0]["message"], messages
    assert messages[0]["code"] == "invalid_query_parameter" and code == 1008


REFUSALS = [
    ("not json", "JSON"),
    ({"type": "audio.append"}, "unknown type 'audio.append'; expected audio.done"),
    ({"text": "hi"}, "no type"),
    (b"\x00\x00\x00", "dropped"),
]


@pytest.mark.parametrize(("message", "words"), REFUSALS)
async def test_a_refused_message_loses_nothing_else(message: Any, words: str) -> None:
    """A bad message after the first command: xAI's error with the daemon's sentence, and the
    stream goes on: all three commands' finals, `transcript.done`, a normal Close."""
    data = audio()
    middle = 30 * PCM_FRAME_BYTES
    async with running_daemon() as daemon:
        messages, code = await stream(
            url(daemon), *pcm_frames(data[:middle]), message, *pcm_frames(data[middle:]), DONE
        )
    [error] = of_type(messages, "error")
    assert words in error["message"], error
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)
    assert messages[-1]["type"] == "transcript.done" and code == 1000


async def test_audio_done_with_a_field_is_refused_and_the_stream_goes_on() -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), *pcm_frames(audio()), {"type": "audio.done", "now": 1}, DONE)
    assert "audio.done has no field 'now'" in of_type(messages, "error")[0]["message"]
    assert same_words(EXPECTED[FIXTURE], finals(messages)) and code == 1000


async def test_an_engine_failure_is_an_error_and_the_stream_goes_on() -> None:
    async with running_daemon(FailsOnAWordEngineDouble("bedroom")) as daemon:
        messages, code = await stream(url(daemon))
    assert [e["code"] for e in of_type(messages, "error")] == ["engine_error"], messages
    said = normalise(" ".join(finals(messages)))
    assert "what time is it" in said and "garage door" in said and code == 1000


async def test_the_key_by_bearer_and_refusals_in_xais_shape() -> None:
    """`Authorization: Bearer` (both clients' way) reaches the API; none or a wrong one: 401 at the
    upgrade with xAI's `{"code", "error"}` body; a plain GET: 426 in the same shape."""
    async with running_daemon(api_key=KEY) as daemon:
        messages, _ = await stream(url(daemon), DONE, headers={"Authorization": f"Bearer {KEY}"})
        assert messages[0] == {"type": "transcript.created"} and messages[-1]["type"] == "transcript.done"
        async with aiohttp.ClientSession() as http:
            for headers, status, code in [
                ({}, 401, "missing_api_key"),
                ({"Authorization": "Bearer wrong"}, 401, "invalid_api_key"),
                ({"Authorization": f"Bearer {KEY}"}, 426, "websocket_required"),
            ]:
                async with http.get(url(daemon).replace("ws", "http", 1), headers=headers) as response:
                    body = await response.json()
                    assert response.status == status and body["code"] == code and body["error"], body


async def test_idle_timeout_is_an_error_then_1001() -> None:
    """Nobody speaks for idle_timeout_s after the commands: their finals, then xAI's error naming
    the setting, then 1001."""
    async with running_daemon(idle_timeout_s=2) as daemon, websockets.connect(url(daemon)) as ws:
        for frame in pcm_frames(audio()):
            await ws.send(frame)
        messages = await read_all(ws)
    assert messages[-1]["type"] == "error" and messages[-1]["code"] == "idle_timeout", messages[-1]
    assert "idle_timeout_s" in messages[-1]["message"] and ws.close_code == 1001
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)


async def test_shutdown_sends_the_final_of_what_came_then_an_error() -> None:
    data = audio()
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        for frame in pcm_frames(data[: len(data) // 4]):
            await ws.send(frame)
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(daemon.stop())
        messages = await read_all(ws)
        await stopping
    assert [m["type"] for m in messages[-2:]] == ["transcript.partial", "error"], messages
    assert messages[-2]["text"] and messages[-1]["code"] == "shutdown" and ws.close_code == 1001


async def test_over_max_sessions_is_an_error_and_the_open_session_goes_on() -> None:
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(url(daemon)) as first,
    ):
        assert json.loads(await first.recv()) == {"type": "transcript.created"}
        refused, code = await stream(url(daemon))
        for message in (*pcm_frames(audio()), json.dumps(DONE)):
            await first.send(message)
        messages = await read_all(first)
    assert [(m["type"], m["code"]) for m in refused] == [("error", "server_busy")] and code == 1013, refused
    assert same_words(EXPECTED[FIXTURE], finals(messages)) and messages[-1]["type"] == "transcript.done"


async def post(daemon: Daemon, fields: list[tuple[str, str]], file: bytes | None, key: str | None = None) -> Any:
    """`POST /v1/stt` with the form's `fields`, then its `file` (last, as xAI requires); the status and body."""
    form = aiohttp.FormData()
    for name, value in fields:
        form.add_field(name, value)
    if file is not None:
        form.add_field("file", file, filename="audio.wav", content_type="audio/wav")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as http:
        address = f"http://127.0.0.1:{daemon.http_port}{xai.PATH}"
        async with http.post(address, data=form, headers=headers) as response:
            return response.status, await response.json()


async def test_rest_upload_is_transcribed_with_words_and_keyterms() -> None:
    """A WAV with LiveKit's fields (`language`, `format`) and two `keyterm`s: xAI's
    `{text, language, duration, words}`, each word spanning its command; the keyterms reach the
    engine; headerless µ-law at 8 kHz (`audio_format`, `sample_rate`) reads the same."""
    engine = ContextRecordingEngineDouble()
    fields = [("language", "en"), ("format", "true"), ("keyterm", "Grok"), ("keyterm", "Colossus")]
    raw = [("audio_format", "mulaw"), ("sample_rate", "8000")]
    async with running_daemon(engine) as daemon:
        status, body = await post(daemon, fields, (FIXTURES / FIXTURE).read_bytes())
        names = list(engine.names)
        raw_status, raw_body = await post(daemon, raw, encoded(fixture_16k(FIXTURE), "pcmu", 8000))
    assert status == 200 and same_words([" ".join(EXPECTED[FIXTURE])], [body["text"]]), body
    assert body["language"] == "en" and body["duration"] == round(len(audio()) / 32000, 2), body
    assert [w["text"] for w in body["words"]] == body["text"].split()
    assert all(0 <= w["start"] < w["end"] <= body["duration"] for w in body["words"]), body["words"]
    assert names and all(n[:2] == ("Grok", "Colossus") for n in names), names
    assert raw_status == 200 and same_words([" ".join(EXPECTED[FIXTURE])], [raw_body["text"]]), raw_body


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ([("diarize", "true")], "diarize: this server does not do speaker labels"),
        ([("url", "https://example.com/a.mp3")], "url: this server does not fetch audio"),
        ([("audio_format", "opus8")], "audio_format must be one of pcm, mulaw, alaw"),
        ([("audio_format", "pcm")], "pcm audio needs a sample_rate of 8000, 16000"),
        ([("audio_format", "pcm"), ("sample_rate", "16000"), ("channels", "2")], "headerless audio is read as one"),
        ([("format", "yes")], "format must be true or false"),
        ([("language", "xx")], "language: 'xx' is not one of the languages"),
        ([("prompt", "hi")], "unknown field 'prompt'"),
    ],
)
async def test_rest_upload_refusals_in_xais_shape(fields: list[tuple[str, str]], words: str) -> None:
    async with running_daemon() as daemon:
        status, body = await post(daemon, fields, (FIXTURES / "lights_on.wav").read_bytes())
    assert status == 400 and words in body["error"] and body["code"], body


async def test_rest_upload_takes_the_key_by_bearer() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        refused = await post(daemon, [], (FIXTURES / "lights_on.wav").read_bytes(), key="wrong")
        status, body = await post(daemon, [], (FIXTURES / "lights_on.wav").read_bytes(), key=KEY)
    assert refused[0] == 401 and refused[1]["code"] == "invalid_api_key" and refused[1]["error"], refused
    assert status == 200 and same_words(EXPECTED["lights_on.wav"], [body["text"]]), body


def test_more_keyterms_than_xais_limit_are_refused_as_the_upload_refuses_them() -> None:
    """xAI takes at most 100 `keyterm`s, on its upload and its stream alike: the daemon's upload
    refuses the 101st, so its stream does too, naming the parameter and the limit."""
    query = MultiDict(("keyterm", f"term {n}") for n in range(XAI_KEYTERMS + 1))
    with pytest.raises(ParameterError) as refused:
        xai.parse_query(query, Core(daemon_settings()))
    assert refused.value.parameter == "keyterm" and f"limit of {XAI_KEYTERMS}" in str(refused.value)
    accepted = xai.parse_query(MultiDict(list(query.items())[:-1]), Core(daemon_settings()))
    assert isinstance(accepted, xai.XaiParams) and len(accepted.terms) == XAI_KEYTERMS


async def test_finals_decoding_when_audio_done_comes_are_speech_finals_as_before_it() -> None:
    """The fixture ends in silence: no utterance is in progress when `audio.done` comes, so
    `transcript.done` is empty, and every utterance's final, even one cut at `max_utterance_s` still
    decoding then, is its `speech_final` transcript, in order, as it would have been a moment
    earlier (xAI's `transcript.done` holds only what `audio.done` itself ended)."""
    async with running_daemon(max_utterance_s=1) as daemon:
        messages, code = await stream(url(daemon))
    [done] = of_type(messages, "transcript.done")
    said = [m for m in of_type(messages, "transcript.partial") if m["speech_final"]]
    assert code == 1000 and done["text"] == "" and done["words"] == [], done
    text = normalise(" ".join(m["text"] for m in said))  # 1 s cuts split words: the commands' unsplit ones
    assert len(said) > 3 and [m["start"] for m in said] == sorted(m["start"] for m in said), said
    assert "turn off the" in text and "what time is it" in text and "open the garage" in text, text
