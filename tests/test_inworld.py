"""Inworld's streaming speech-to-text API (`/stt/v1/transcribe:streamBidirectional`) end to end: real
daemon, real Silero, real tiny.en, a raw WebSocket client for every message and for input no client
would send."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest
import websockets

from satellite_asr.events import FinalTranscript, PartialTranscript, SpeechStarted, SpeechStopped
from satellite_asr.protocols import inworld
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble, FailsOnAWordEngineDouble, FirstFinalGatedEngineDouble
from tests.helpers import (
    EXPECTED,
    PCM_FRAME_BYTES,
    eventually,
    fixture_16k,
    normalise,
    pcm16,
    pcm_frames,
    read_all,
    running_daemon,
    same_words,
    send_all,
)
from tests.test_docs import ROOT
from tests.test_mistral import Messages

pytestmark = pytest.mark.timeout(180)

FIXTURE = "three_commands.wav"
KEY = "inworld-key"
CONFIG = {
    "transcribeConfig": {
        "modelId": "inworld/inworld-stt-1",
        "audioEncoding": "LINEAR16",
        "sampleRateHertz": 16000,
        "numberOfChannels": 1,
        "language": "en-US",
        "voiceProfileConfig": {"enableVoiceProfile": True, "topN": 1},
        "endOfTurnConfidenceThreshold": 0.3,
        "inworldSttV1Config": {"minEndOfTurnSilenceWhenConfident": 200},
    }
}
END = {"closeStream": {}}


def url(daemon: Daemon, query: str = "") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{inworld.PATH}{'?' + query if query else ''}"


def audio(rate: int = 16000) -> bytes:
    return pcm16(fixture_16k(FIXTURE), rate)


def chunk(data: bytes) -> dict[str, Any]:
    return {"audioChunk": {"content": base64.b64encode(data).decode()}}


def chunks(data: bytes, frame: int = PCM_FRAME_BYTES) -> list[dict[str, Any]]:
    return [chunk(part) for part in pcm_frames(data, frame)]


def is_audio(message: dict[str, Any] | str | bytes) -> bool:
    return isinstance(message, dict) and "audioChunk" in message


async def stream(
    target: str, *sent: dict[str, Any] | str | bytes, headers: dict[str, str] | None = None, paced: bool = False
) -> tuple[Messages, int | None]:
    """The `sent` messages (by default the config, the fixture, `closeStream`); every message until
    the Close, and its code."""
    return await send_all(target, sent or (CONFIG, *chunks(audio()), END), headers, paced, is_audio)


def kinds(messages: Messages) -> list[str]:
    """Each message's kind (a result's), partials left out; a final transcription as `final`."""
    named = []
    for message in messages:
        if "error" in message:
            named.append("error")
            continue
        (kind, body), *_ = message["result"].items()
        if kind == "transcription":
            kind = "final" if body["isFinal"] else "partial"
        named.append(kind)
    return [kind for kind in named if kind != "partial"]


def finals(messages: Messages) -> list[str]:
    transcriptions = [m["result"]["transcription"] for m in messages if "transcription" in m.get("result", {})]
    return [t["transcript"] for t in transcriptions if t["isFinal"] and t["transcript"]]


def errors(messages: Messages) -> list[dict[str, Any]]:
    return [m["error"] for m in messages if "error" in m]


def reason(error: dict[str, Any]) -> str:
    return str(error["details"][0]["reason"])


async def test_three_commands_every_message() -> None:
    """Nothing answers the config; for each command `speechStarted`, partials of its words,
    `speechStopped`, the final; then the Close 1000 after `closeStream`."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), CONFIG, *chunks(audio()), END, paced=True)
    assert code == 1000
    assert kinds(messages) == ["speechStarted", "speechStopped", "final"] * 3, kinds(messages)
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)
    partials = [
        m["result"]["transcription"] for m in messages if not m["result"].get("transcription", {}).get("isFinal", True)
    ]
    assert partials and all(p["transcript"] and p["wordTimestamps"] == [] for p in partials), partials
    starts = [m["result"]["speechStarted"]["startTimeMs"] for m in messages if "speechStarted" in m["result"]]
    assert starts == sorted(starts) and starts[0] >= 0, starts
    stops = [m["result"]["speechStopped"]["silenceDurationMs"] for m in messages if "speechStopped" in m["result"]]
    assert all(isinstance(ms, int) and ms >= 0 for ms in stops), stops


async def test_snake_case_names_a_24_khz_stereo_stream_prompts_and_the_language() -> None:
    """Protobuf's own names (`transcribe_config`, `audio_chunk`, `close_stream`) are taken; 24 kHz
    stereo is heard at its rate, downmixed; `prompts` bias the engine and `language` is the decode's."""
    engine = ContextRecordingEngineDouble()
    config = {
        "transcribe_config": {
            "audio_encoding": "LINEAR16",
            "sample_rate_hertz": 24000,
            "number_of_channels": 2,
            "language": "en",
            "prompts": ["Aoife", " Zoë "],
        }
    }
    mono = audio(24000)
    stereo = b"".join(mono[at : at + 2] * 2 for at in range(0, len(mono), 2))
    sent = [{"audio_chunk": body["audioChunk"]} for body in chunks(stereo, 9600)]
    async with running_daemon(engine) as daemon:
        messages, code = await stream(url(daemon), config, *sent, {"close_stream": {}})
    assert code == 1000 and finals(messages), messages
    assert engine.names and all(names[:2] == ("Aoife", "Zoë") for names in engine.names), engine.names
    assert set(engine.languages) == {"en"}


async def test_the_fixture_is_heard_through_snake_case_as_well() -> None:
    async with running_daemon() as daemon:
        sent = [{"audio_chunk": c["audioChunk"]} for c in chunks(audio())]
        messages, code = await stream(url(daemon), CONFIG, *sent, {"close_stream": {}})
    assert code == 1000 and same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ("not json", "not JSON"),
        (b"\x00\x01", "this one is binary"),
        ({"audioChunk": {"content": ""}}, "must be transcribeConfig, not audioChunk"),
        ({"transcribeConfig": {}, "x": {}}, "one field"),
        ({"hello": {}}, "unknown message 'hello'"),
        ({"transcribeConfig": 1}, "transcribeConfig must be an object"),
        ({"transcribeConfig": {"voice": "x"}}, "no field 'voice'"),
        ({"transcribeConfig": {"audioEncoding": "MP3"}}, "LINEAR16 (16-bit PCM) only"),
        ({"transcribeConfig": {"audioEncoding": []}}, "LINEAR16 (16-bit PCM) only"),  # found by test_fuzz: a crash
        ({"transcribeConfig": {"sampleRateHertz": 4000}}, "sampleRateHertz must be a whole number"),
        ({"transcribeConfig": {"sampleRateHertz": "16000"}}, "sampleRateHertz must be a whole number"),
        ({"transcribeConfig": {"numberOfChannels": 0}}, "numberOfChannels must be"),
        ({"transcribeConfig": {"modelId": " "}}, "modelId must be"),
        ({"transcribeConfig": {"includeWordTimestamps": True}}, "no word timings"),
        ({"transcribeConfig": {"includeWordTimestamps": "no"}}, "includeWordTimestamps must be true or false"),
        ({"transcribeConfig": {"includeWordTimestamps": 0}}, "includeWordTimestamps must be true or false"),
        ({"transcribeConfig": {"endOfTurnConfidenceThreshold": 2}}, "endOfTurnConfidenceThreshold must be"),
        ({"transcribeConfig": {"voiceProfileConfig": {"enableVoiceProfile": 1}}}, "enableVoiceProfile must be"),
        ({"transcribeConfig": {"voiceProfileConfig": {"age": 1}}}, "voiceProfileConfig has no field 'age'"),
        ({"transcribeConfig": {"voiceProfileConfig": {"topN": -1}}}, "topN must be"),
        ({"transcribeConfig": {"inworldSttV1Config": []}}, "inworldSttV1Config must be an object"),
        ({"transcribeConfig": {"inworldSttV1Config": {"vadThreshold": 1.5}}}, "vadThreshold must be"),
        ({"transcribeConfig": {"inworldSttV1Config": {"minEndOfTurnSilenceWhenConfident": 0.5}}}, "whole number"),
        ({"transcribeConfig": {"language": "fr-FR"}}, "'fr-FR' is not one of the languages of this engine"),
        ({"transcribeConfig": {"language": 7}}, "language must be a language code"),
        ({"transcribeConfig": {"prompts": [1]}}, "prompts must be a list of texts"),
        ({"transcribeConfig": {"prompts": ["x" * 5000]}}, "max_context_chars"),
        ({"transcribeConfig": {"modelId": "a", "model_id": "b"}}, "'modelId' is given twice"),
    ],
)
async def test_a_bad_config_is_an_error_then_1008(config: Any, words: str) -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), config)
    assert kinds(messages) == ["error"] and words in messages[0]["error"]["message"], messages
    error = messages[0]["error"]
    assert error["code"] == 3 and error["status"] == "INVALID_ARGUMENT" and code == 1008, messages
    assert reason(error) in ("invalid_argument", "unsupported_language", "context_too_long"), error


async def test_a_bad_query_is_refused_in_band() -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, "model=x"), CONFIG)
    assert kinds(messages) == ["error"] and code == 1008, messages
    assert "unknown query parameter 'model'" in messages[0]["error"]["message"]
    assert reason(messages[0]["error"]) == "invalid_query_parameter"


@pytest.mark.parametrize(
    ("message", "words", "code"),
    [
        ("not json", "not JSON", "invalid_argument"),
        (b"\x00\x01", "a binary frame is not one", "invalid_argument"),
        ({"audioChunk": {"content": "%%%"}}, "not valid base64", "invalid_audio"),
        ({"audioChunk": {"content": 5}}, "audioChunk's content must be base64", "invalid_audio"),
        ({"audioChunk": {}}, "audioChunk's content must be base64", "invalid_audio"),
        ({"audioChunk": {"content": "AA==", "x": 1}}, "audioChunk has no field 'x'", "invalid_argument"),
        ({"audioChunk": {"content": "AA=="}}, "whole", None),
        ({"audioChunk": {"content": base64.b64encode(bytes(262146)).decode()}}, "at most 262144", "invalid_audio"),
        ({"endTurn": {"x": 1}}, "endTurn has no field 'x'", "invalid_argument"),
        ({"closeStream": {"x": 1}}, "closeStream has no field 'x'", "invalid_argument"),
        ({"finalize": {}}, "unknown message 'finalize'", "invalid_argument"),
        ({"endTurn": []}, "endTurn must be an object", "invalid_argument"),
        (CONFIG, "transcribeConfig comes once", "invalid_argument"),
    ],
)
async def test_a_refused_message_loses_nothing_else(message: Any, words: str, code: str | None) -> None:
    """A bad message midway (a binary frame, too: this API's audio is JSON): the error with the
    sentence; the stream goes on and every command is still heard."""
    data = audio()
    middle = 12 * PCM_FRAME_BYTES
    async with running_daemon() as daemon:
        messages, close = await stream(
            url(daemon), CONFIG, *chunks(data[:middle]), message, *chunks(data[middle:]), END
        )
    refused = errors(messages)
    assert len(refused) == 1 and words in refused[0]["message"], refused
    assert refused[0]["code"] == 3 and (code is None or reason(refused[0]) == code), refused
    assert same_words(EXPECTED[FIXTURE], finals(messages)) and close == 1000


async def test_end_turn_ends_the_turn_in_progress_now() -> None:
    """`endTurn` midway through the first command (1.5 s in; it ends at 2.1 s): its final, with the
    words heard so far, comes without any more audio or `closeStream`; an `endTurn` with no speech
    in progress is answered by nothing."""
    data = audio()
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(json.dumps(CONFIG))
        await ws.send(json.dumps({"endTurn": {}}))
        for message in chunks(data[: 3 * 16000]):
            await ws.send(json.dumps(message))
        await ws.send(json.dumps({"endTurn": {}}))
        messages = []
        while not kinds(messages) or kinds(messages)[-1] != "final":
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
        await ws.send(json.dumps(END))
        messages += await read_all(ws)
    assert ws.close_code == 1000
    assert kinds(messages) == ["speechStarted", "speechStopped", "final"], kinds(messages)
    assert normalise(finals(messages)[0]).startswith("turn off the bedroom"), finals(messages)


async def test_an_engine_failure_is_an_error_its_turn_ends_and_the_stream_goes_on() -> None:
    async with running_daemon(FailsOnAWordEngineDouble("bedroom")) as daemon:
        messages, code = await stream(url(daemon))
    assert [reason(e) for e in errors(messages)] == ["engine_error"], messages
    assert errors(messages)[0]["code"] == 13 and errors(messages)[0]["status"] == "INTERNAL"
    said = normalise(" ".join(finals(messages)))
    assert "what time is it" in said and "garage door" in said and code == 1000
    assert kinds(messages).count("speechStarted") == kinds(messages).count("final") == 3, kinds(messages)


async def test_the_key_as_basic_or_bearer_and_refusals_in_a_grpc_status_shape() -> None:
    """`Authorization: Basic KEY` (the plugin's way: Inworld's key is its Base64 credentials, taken
    whole) or `Bearer KEY`: accepted. None or a wrong one: 401 with a gRPC status body (16,
    UNAUTHENTICATED), a missing one's sentence naming `Basic` first. `Basic` is Inworld's path's
    alone. A plain GET: 426 in the same shape."""
    async with running_daemon(api_key=KEY) as daemon:
        for headers in ({"Authorization": f"Basic {KEY}"}, {"Authorization": f"Bearer {KEY}"}):
            messages, code = await stream(url(daemon), CONFIG, END, headers=headers)
            assert messages == [] and code == 1000, messages
        for headers, code_name in [(None, "missing_api_key"), ({"Authorization": "Basic d3Jvbmc="}, "invalid_api_key")]:
            with pytest.raises(websockets.InvalidStatus) as refused:
                await stream(url(daemon), CONFIG, headers=headers)
            response = refused.value.response
            body = json.loads(response.body)
            assert response.status_code == 401 and body["code"] == 16, body
            assert body["details"][0]["reason"] == code_name and body["message"], body
            if code_name == "missing_api_key":  # the plugin's way first: a user of it knows no Bearer
                assert body["message"].startswith("this daemon requires an API key: send Authorization: Basic KEY")
        async with aiohttp.ClientSession(headers={"Authorization": f"Basic {KEY}"}) as http:
            async with http.get(url(daemon).replace("ws", "http", 1)) as response:
                body = await response.json()
            assert response.status == 426 and body["code"] == 3, body
            assert body["details"][0]["reason"] == "websocket_required"
            async with http.get(f"http://127.0.0.1:{daemon.http_port}/v1/models") as other:
                assert other.status == 401  # Basic is not taken on another path


async def test_no_config_within_the_first_message_timeout_is_an_error() -> None:
    async with running_daemon(first_message_timeout_s=1) as daemon, websockets.connect(url(daemon)) as ws:
        messages = await read_all(ws)
    assert [(reason(e), e["status"]) for e in errors(messages)] == [("timeout", "DEADLINE_EXCEEDED")]
    assert len(messages) == 1 and ws.close_code == 1008


async def test_idle_timeout_ends_the_turns_then_an_error_1001() -> None:
    async with running_daemon(idle_timeout_s=2) as daemon, websockets.connect(url(daemon)) as ws:
        for message in (CONFIG, *chunks(audio())):
            await ws.send(json.dumps(message))
        messages = await read_all(ws)
    assert kinds(messages)[-1] == "error" and reason(messages[-1]["error"]) == "idle_timeout", kinds(messages)
    assert "idle_timeout_s" in messages[-1]["error"]["message"] and ws.close_code == 1001
    assert same_words(EXPECTED[FIXTURE], finals(messages))


async def test_shutdown_ends_the_turn_in_progress_then_an_error_1001() -> None:
    data = audio()
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        for message in (CONFIG, *chunks(data[: len(data) // 4])):
            await ws.send(json.dumps(message))
        heard = len(data) // 4 / 32000 - 0.1  # the first command's audio fed to the session, however slow
        await eventually(lambda: any(s.seconds_received >= heard for s in daemon.core.sessions.open_sessions()))
        stopping = asyncio.create_task(daemon.stop())
        messages = await read_all(ws)
        await stopping
    assert kinds(messages)[-2:] == ["final", "error"], kinds(messages)
    assert messages[-1]["error"]["status"] == "UNAVAILABLE" and ws.close_code == 1001


async def test_shutdown_closes_a_connection_awaiting_its_config() -> None:
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        await eventually(lambda: len(daemon.inworld.serving) == 1)
        stopping = asyncio.create_task(daemon.stop())
        messages = await read_all(ws)
        await stopping
    assert [reason(e) for e in errors(messages)] == ["shutdown"] and ws.close_code == 1001


async def test_over_max_sessions_is_an_error_then_1013_and_the_open_session_goes_on() -> None:
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(url(daemon)) as first,
    ):
        await first.send(json.dumps(CONFIG))
        await eventually(lambda: bool(daemon.core.sessions.open_sessions()))
        refused, code = await stream(url(daemon), CONFIG)
        for message in (*chunks(audio()), END):
            await first.send(json.dumps(message))
        messages = await read_all(first)
    assert [(reason(e), e["code"]) for e in errors(refused)] == [("server_busy", 8)] and code == 1013, refused
    assert same_words(EXPECTED[FIXTURE], finals(messages))


async def test_a_message_over_1_mib_closes_1009_as_the_docs_say() -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), CONFIG, "x" * (1 << 20 | 2))
    assert messages == [] and code == 1009, (messages, code)
    assert "closes the connection with 1009" in (ROOT / "docs" / "inworld.md").read_text()


async def test_with_two_decodes_at_once_each_turns_messages_come_in_order() -> None:
    """The first final held while the next commands are heard (two decodes at once): a later turn's
    `speechStarted`, partials and `speechStopped` wait for the final before it (the plugin takes a
    `speechStarted` before the last turn's final for that turn's), and every turn ends in order."""
    engine = FirstFinalGatedEngineDouble()
    async with running_daemon(engine) as daemon:
        streaming = asyncio.ensure_future(stream(url(daemon), CONFIG, *chunks(audio()), END, paced=True))
        await eventually(lambda: any(session.utterances >= 3 for session in daemon.core.sessions.open_sessions()))
        engine.gate.set()
        messages, code = await streaming
    assert code == 1000
    assert kinds(messages) == ["speechStarted", "speechStopped", "final"] * 3, kinds(messages)
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)


async def test_a_later_turns_messages_sent_in_the_moment_of_the_final_before_it_follow_their_start() -> None:
    """The session's tasks emit at once (a final from its decode, the next turn's partial from the
    partial decoder, its `speechStopped` from the audio's reader): the next turn's `speechStarted`,
    held behind the final, goes out before that turn's partial and `speechStopped` that come while
    the final is being written. The session's events are given to the daemon's real connection
    directly, in that order: no engine's timing can place them in that moment every time."""
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(json.dumps(CONFIG))
        await eventually(lambda: any(c.input is not None for c in daemon.inworld.serving))
        (connection,) = daemon.inworld.serving
        await connection.emit(SpeechStarted(1, 0.0))
        await connection.emit(SpeechStopped(1, 1.0))
        await connection.emit(SpeechStarted(2, 1.5))  # held: turn 1's final is still to come
        final = FinalTranscript(1, "turn one", True, 0.0, 1.0, "en", "silence")
        await asyncio.gather(
            connection.emit(final),
            connection.emit(PartialTranscript(2, "turn", "")),
            connection.emit(SpeechStopped(2, 2)),
        )
        await ws.send(json.dumps(END))
        messages = await read_all(ws)
    order = [next(iter(m["result"])) for m in messages]
    assert order == [
        "speechStarted",
        "speechStopped",
        "transcription",
        "speechStarted",
        "transcription",
        "speechStopped",
    ], messages
