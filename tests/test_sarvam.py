"""Sarvam AI's streaming speech-to-text API (`/speech-to-text/ws`) and its upload (`POST
/speech-to-text`) end to end: real daemon, real Silero, real tiny.en, a raw client for every
message and for input no client library would send."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import websockets

from satellite_asr.protocols import sarvam
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble, FailsOnAWordEngineDouble, FirstFinalGatedEngineDouble
from tests.helpers import (
    EXPECTED,
    FIXTURES,
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

pytestmark = pytest.mark.timeout(180)

Messages = list[dict[str, Any]]
FIXTURE = "three_commands.wav"
END = {"type": "end_of_stream", "audio": {"data": "", "encoding": "audio/wav", "sample_rate": 16000}}
KEY = "sarvam-key"


def url(daemon: Daemon, query: str = "") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{sarvam.PATH}{'?' + query if query else ''}"


def audio(rate: int = 16000) -> bytes:
    return pcm16(fixture_16k(FIXTURE), rate)


def chunks(data: bytes, rate: int = 16000, frame: int = PCM_FRAME_BYTES) -> list[dict[str, Any]]:
    """The audio as Sarvam's audio messages, base64 PCM, 100 ms each."""
    return [
        {
            "audio": {
                "data": base64.b64encode(data[at : at + frame]).decode(),
                "sample_rate": rate,
                "encoding": "audio/wav",
            }
        }
        for at in range(0, len(data), frame)
    ]


async def stream(
    target: str, *sent: dict[str, Any] | str | bytes, headers: dict[str, str] | None = None, paced: bool = False
) -> tuple[Messages, int | None]:
    """The `sent` messages (by default the fixture then `end_of_stream`); every message until the
    Close, and its code."""
    return await send_all(target, sent or (*chunks(audio()), END), headers, paced)


def finals(messages: Messages) -> list[str]:
    return [m["data"]["transcript"] for m in of_type(messages, "data")]


async def test_three_commands_with_vad_signals_every_message_in_order() -> None:
    """Nothing on connect; each command: START_SPEECH, END_SPEECH, then its `data` (no partials:
    Sarvam's stream has none) with the language asked and Sarvam's fields; `end_of_stream`: 1000."""
    async with running_daemon() as daemon:
        messages, code = await stream(
            url(daemon, "language-code=en-IN&vad_signals=true"), *chunks(audio()), END, paced=True
        )
    assert code == 1000 and same_words(EXPECTED[FIXTURE], finals(messages)), messages
    order = [m["data"]["signal_type"] if m["type"] == "events" else m["type"] for m in messages]
    assert order == ["START_SPEECH", "END_SPEECH", "data"] * 3, order
    for message in of_type(messages, "data"):
        data = message["data"]
        assert data["language_code"] == "en-IN" and data["timestamps"] is None and data["request_id"], data
        assert 0 <= data["speech_start"] < data["speech_end"] and data["metrics"]["audio_duration"] > 0, data


async def test_without_vad_signals_only_transcripts_and_unknown_detects() -> None:
    """The default: no events; `unknown` (the default language) gives the detected one in Sarvam's form."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon))
    assert {m["type"] for m in messages} == {"data"} and code == 1000, messages
    assert {m["data"]["language_code"] for m in messages} == {"en-IN"}
    assert same_words(EXPECTED[FIXTURE], finals(messages))


async def test_flush_ends_the_utterance_in_progress() -> None:
    """`flush` mid-command: that command's words come at once, before the stream goes on."""
    async with running_daemon() as daemon, websockets.connect(url(daemon, "flush_signal=true")) as ws:
        for message in chunks(audio()[: 12 * PCM_FRAME_BYTES]):
            await ws.send(json.dumps(message))
        await ws.send(json.dumps({"type": "flush"}))
        first = json.loads(await asyncio.wait_for(ws.recv(), 30))
        await ws.send(json.dumps(END))
        rest = await read_all(ws)
    assert first["type"] == "data" and rest == [], (first, rest)
    assert normalise(first["data"]["transcript"]).split()[0] == normalise(EXPECTED[FIXTURE][0]).split()[0]


def wav_of(data: bytes, rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(data)
    return out.getvalue()


async def test_8khz_and_whole_wav_messages() -> None:
    """`sample_rate=8000` reads 8 kHz PCM; a message holding a whole WAV (the SDK's `transcribe`
    of a file) has its header read and stripped."""
    data8 = audio(8000)
    wav = wav_of(audio(), 16000)
    whole = {"audio": {"data": base64.b64encode(wav).decode(), "sample_rate": 16000, "encoding": "audio/wav"}}
    async with running_daemon() as daemon:
        low, _ = await stream(
            url(daemon, "sample_rate=8000&input_audio_codec=pcm_s16le"), *chunks(data8, 8000, 1600), END
        )
        file, _ = await stream(url(daemon), whole, END)
    assert same_words(EXPECTED[FIXTURE], finals(low)), finals(low)
    assert same_words(EXPECTED[FIXTURE], finals(file)), finals(file)


async def test_keyterms_reach_the_engine_and_unapplied_settings_are_taken() -> None:
    """`keyterms` (a JSON array) biases the engine; the model, mode and VAD tuning the clients
    send are taken (checked, not applied); LiveKit's `config` prompt is taken."""
    engine = ContextRecordingEngineDouble()
    query = (
        f"language-code=en-IN&model=saaras:v3&mode=verbatim&keyterms={quote(json.dumps(['Sarvam', 'New Delhi']))}"
        "&high_vad_sensitivity=true&positive_speech_threshold=0.5&min_speech_frames=3"
        "&start_speech_volume_threshold=-40&input_audio_codec=wav"
    )
    async with running_daemon(engine) as daemon:
        messages, code = await stream(url(daemon, query), {"type": "config", "prompt": "home"}, *chunks(audio()), END)
    assert code == 1000 and not of_type(messages, "error"), messages
    assert engine.names and all(names[:2] == ("Sarvam", "New Delhi") for names in engine.names), engine.names


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("language-code=fr-FR", "language-code must be unknown or one of en-IN"),
        ("language-code=hi-IN", "'hi' is not one of the languages of this engine"),
        ("model=whisper", "model must be one of saaras:v3"),
        ("mode=translate", "mode translate (translation into English) is not served here"),
        ("mode=shout", "mode must be one of"),
        ("sample_rate=44100", "sample_rate must be 8000 or 16000"),
        ("input_audio_codec=mp3", "input_audio_codec must be one of"),
        ("vad_signals=yes", "vad_signals"),
        ("positive_speech_threshold=2", "positive_speech_threshold"),
        ("keyterms=Sarvam", "keyterms must be a JSON array of strings"),
        ("colour=blue", "colour"),
    ],
)
async def test_a_bad_query_is_an_error_message_then_1008(query: str, words: str) -> None:
    """Refused in the stream, before any session: Sarvam's error with the sentence, then 1008."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, query))
    assert [m["type"] for m in messages] == ["error"] and words in messages[0]["data"]["error"], messages
    assert messages[0]["data"]["code"] == "invalid_request_error" and code == 1008


REFUSALS = [
    ("not json", "JSON", "invalid_message"),
    ({"type": "finalize"}, "unknown type 'finalize'; expected flush, config or end_of_stream", "invalid_message"),
    ({"audio": {"data": "@@@", "sample_rate": 16000}}, "not valid base64", "invalid_audio"),
    ({"audio": {"data": "AAAA", "sample_rate": 22050}}, "audio at 22050 Hz in a 16000 Hz stream", "invalid_audio"),
    ({"audio": {"data": "AAAA", "encoding": "audio/mp3"}}, "audio encoding must be audio/wav", "invalid_audio"),
    ({"audio": {"data": base64.b64encode(b"RIFF0000WAVEfmt ").decode()}}, "16-bit PCM", "invalid_audio"),
    ({"type": "flush", "now": 1}, "flush has no field 'now'", "invalid_message"),
    ({"audio": {"data": "AAA="}, "speed": 2}, "audio message has no field 'speed'", "invalid_message"),
    (b"\x00\x00", "not binary", "invalid_message"),
]


@pytest.mark.parametrize(("message", "words", "code"), REFUSALS)
async def test_a_refused_message_loses_nothing_else(message: Any, words: str, code: str) -> None:
    """A bad message after the first command: Sarvam's error with the sentence, and the stream
    goes on: all three commands' transcripts, then a normal Close."""
    sent = chunks(audio())
    async with running_daemon() as daemon:
        messages, closed = await stream(url(daemon), *sent[:30], message, *sent[30:], END)
    [error] = of_type(messages, "error")
    assert words in error["data"]["error"] and error["data"]["code"] == code, error
    assert same_words(EXPECTED[FIXTURE], finals(messages)) and closed == 1000, finals(messages)


async def test_an_engine_failure_is_an_error_and_the_stream_goes_on() -> None:
    async with running_daemon(FailsOnAWordEngineDouble("bedroom")) as daemon:
        messages, code = await stream(url(daemon))
    assert [e["data"]["code"] for e in of_type(messages, "error")] == ["engine_error"], messages
    said = normalise(" ".join(finals(messages)))
    assert "what time is it" in said and "garage door" in said and code == 1000


async def test_the_key_by_api_subscription_key_and_refusals_in_sarvams_shape() -> None:
    """`api-subscription-key` (every client's way) reaches the API; none or a wrong one: 401 at the
    upgrade with Sarvam's `{"error": {"message", "code"}}`; a plain GET: 426 in the same shape."""
    async with running_daemon(api_key=KEY) as daemon:
        messages, code = await stream(url(daemon), END, headers={"api-subscription-key": KEY})
        assert messages == [] and code == 1000
        async with aiohttp.ClientSession() as http:
            for headers, status, error in [
                ({}, 401, "missing_api_key"),
                ({"api-subscription-key": "wrong"}, 401, "invalid_api_key"),
                ({"api-subscription-key": KEY}, 426, "websocket_required"),
            ]:
                async with http.get(url(daemon).replace("ws", "http", 1), headers=headers) as response:
                    body = await response.json()
                    assert response.status == status and body["error"]["code"] == error, body
                    assert body["error"]["message"], body


async def test_idle_timeout_is_an_error_then_1001() -> None:
    """Nobody speaks for idle_timeout_s after the commands: their transcripts, then Sarvam's error
    naming the setting, then 1001."""
    async with running_daemon(idle_timeout_s=2) as daemon, websockets.connect(url(daemon)) as ws:
        for message in chunks(audio()):
            await ws.send(json.dumps(message))
        messages = await read_all(ws)
    assert messages[-1]["type"] == "error" and messages[-1]["data"]["code"] == "idle_timeout", messages[-1]
    assert "idle_timeout_s" in messages[-1]["data"]["error"] and ws.close_code == 1001
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)


async def test_shutdown_sends_the_transcript_of_what_came_then_an_error() -> None:
    sent = chunks(audio())
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        for message in sent[: len(sent) // 4]:
            await ws.send(json.dumps(message))
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(daemon.stop())
        messages = await read_all(ws)
        await stopping
    assert [m["type"] for m in messages[-2:]] == ["data", "error"], messages
    assert messages[-1]["data"]["code"] == "shutdown" and ws.close_code == 1001


async def test_over_max_sessions_is_an_error_and_the_open_session_goes_on() -> None:
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(url(daemon)) as first,
    ):
        await first.send(json.dumps(chunks(audio())[0]))
        await asyncio.sleep(0.3)
        refused, code = await stream(url(daemon))
        for message in (*chunks(audio())[1:], END):
            await first.send(json.dumps(message))
        messages = await read_all(first)
    assert [(m["type"], m["data"]["code"]) for m in refused] == [("error", "server_busy")] and code == 1013, refused
    assert same_words(EXPECTED[FIXTURE], finals(messages))


async def post(daemon: Daemon, fields: list[tuple[str, str]], file: bytes | None, key: str | None = None) -> Any:
    """`POST /speech-to-text` with the form's `fields` and its `file`; the status and body."""
    form = aiohttp.FormData()
    for name, value in fields:
        form.add_field(name, value)
    if file is not None:
        form.add_field("file", file, filename="audio.wav", content_type="audio/wav")
    headers = {"api-subscription-key": key} if key else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{daemon.http_port}/speech-to-text", data=form, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_upload_is_transcribed_with_timestamps_and_raw_pcm() -> None:
    """A WAV with the SDK's fields: Sarvam's `{request_id, transcript, language_code, ...}`, one
    timestamp chunk per command; headerless PCM (`input_audio_codec=pcm_s16le`) reads the same."""
    fields = [("model", "saaras:v3"), ("language_code", "en-IN"), ("with_timestamps", "true"), ("keyterms", "null")]
    async with running_daemon() as daemon:
        status, body = await post(daemon, fields, (FIXTURES / FIXTURE).read_bytes())
        raw_status, raw = await post(daemon, [("input_audio_codec", "pcm_s16le")], audio())
    assert status == 200 and same_words([" ".join(EXPECTED[FIXTURE])], [body["transcript"]]), body
    assert body["language_code"] == "en-IN" and body["request_id"] and len(body["timestamps"]["words"]) == 3, body
    assert raw_status == 200 and same_words([" ".join(EXPECTED[FIXTURE])], [raw["transcript"]]), raw
    assert raw["language_code"] == "en-IN" and raw["timestamps"] is None


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ([("mode", "translit")], "mode translit (transliteration into Latin script) is not served"),
        ([("language_code", "xx-IN")], "language_code must be unknown or one of"),
        ([("with_timestamps", "maybe")], "with_timestamps"),
        ([("prompt", "hi")], "prompt"),
    ],
)
async def test_upload_refusals_in_sarvams_shape(fields: list[tuple[str, str]], words: str) -> None:
    async with running_daemon() as daemon:
        status, body = await post(daemon, fields, (FIXTURES / "lights_on.wav").read_bytes())
    assert status == 400 and words in body["error"]["message"], body
    assert body["error"]["code"] == "invalid_request_error", body


async def test_upload_takes_the_key_by_api_subscription_key() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        refused = await post(daemon, [], (FIXTURES / "lights_on.wav").read_bytes(), key="wrong")
        status, body = await post(daemon, [], (FIXTURES / "lights_on.wav").read_bytes(), key=KEY)
    assert refused[0] == 401 and refused[1]["error"]["code"] == "invalid_api_key", refused
    assert status == 200 and same_words(EXPECTED["lights_on.wav"], [body["transcript"]]), body


async def test_end_of_stream_audio_is_transcribed() -> None:
    """`end_of_stream` carries an `audio` field (LiveKit's is empty): audio in it is the stream's last,
    transcribed like any other rather than dropped."""
    last = {"type": "end_of_stream", "audio": {"data": base64.b64encode(audio()).decode(), "sample_rate": 16000}}
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), last)
    assert code == 1000 and not of_type(messages, "error"), messages
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)


async def test_a_wav_at_another_rate_than_the_urls_is_refused() -> None:
    """A WAV's header tells its samples' rate: one at 8 kHz in a stream the URL set at 16 kHz is
    refused, not read at 16 kHz (twice too fast: wrong words), and the stream goes on."""
    wav8 = wav_of(audio(8000), 8000)
    whole = {"audio": {"data": base64.b64encode(wav8).decode(), "sample_rate": 16000, "encoding": "audio/wav"}}
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, "sample_rate=16000"), whole, *chunks(audio()), END)
    [error] = of_type(messages, "error")
    assert error["data"]["code"] == "invalid_audio" and "WAV audio at 8000 Hz" in error["data"]["error"], error
    assert same_words(EXPECTED[FIXTURE], finals(messages)) and code == 1000, finals(messages)


async def test_a_message_rate_the_url_cannot_take_is_not_advised_for_the_url() -> None:
    """Audio at 22050 Hz in a 16 kHz stream: the sentence does not tell the client to set
    `sample_rate=22050` in the URL, which the query refuses (8000 or 16000 only)."""
    odd = {"audio": {"data": "AAAA", "sample_rate": 22050}}
    async with running_daemon() as daemon:
        messages, _ = await stream(url(daemon), odd, END)
        refused, _ = await stream(url(daemon, "sample_rate=22050"))
    [error] = of_type(messages, "error")
    assert "sample_rate=22050" not in error["data"]["error"], error
    assert "8000 or 16000" in error["data"]["error"] and "sample_rate must be 8000 or 16000" in str(refused), error


async def test_both_spellings_of_the_language_are_refused() -> None:
    """`language-code` and `language_code` together: refused naming both, not one silently dropped."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, "language-code=en-IN&language_code=hi-IN"))
    assert [m["data"]["code"] for m in messages] == ["invalid_request_error"] and code == 1008, messages
    assert "language-code" in messages[0]["data"]["error"] and "language_code" in messages[0]["data"]["error"]


async def test_an_upload_over_max_upload_mb_keeps_its_own_code() -> None:
    """A file over `max_upload_mb`: 413 `file_too_large`, as on every upload API (docs/sarvam.md), in
    Sarvam's shape; not the `invalid_request_error` a bad field gets."""
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(bytes(1024 * 1024 + 1)), filename="audio.wav", content_type="audio/wav")
    async with (
        running_daemon(max_upload_mb=1) as daemon,
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{daemon.http_port}/speech-to-text", data=form) as response,
    ):
        body = await response.json()
    assert response.status == 413 and body["error"]["code"] == "file_too_large", body
    assert "1 MB" in body["error"]["message"], body


async def test_over_max_websocket_connections_is_a_503_in_sarvams_shape() -> None:
    """A connection over `max_websocket_connections` is refused at the upgrade: 503
    `too_many_connections` in Sarvam's `{"error": {"message", "code"}}`, with `Retry-After`."""
    async with (
        running_daemon(max_websocket_connections=1) as daemon,
        websockets.connect(url(daemon)),
        aiohttp.ClientSession() as http,
        http.get(
            url(daemon).replace("ws", "http", 1),
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": base64.b64encode(bytes(16)).decode(),
                "Sec-WebSocket-Version": "13",
            },
        ) as response,
    ):
        body = await response.json()
    assert response.status == 503 and body["error"]["code"] == "too_many_connections", body
    assert response.headers["Retry-After"] and "max_websocket_connections" in body["error"]["message"], body


async def test_the_next_commands_vad_events_wait_for_the_transcript_before_them() -> None:
    """With two decodes at once and the first command's slow, the next commands' START_SPEECH and
    END_SPEECH come after its `data`: LiveKit's plugin pairs a `data` with the last START_SPEECH, so
    sent early they would end the next turn before its words."""
    engine = FirstFinalGatedEngineDouble()
    async with running_daemon(engine) as daemon, websockets.connect(url(daemon, "vad_signals=true")) as ws:
        for message in chunks(audio()):
            await ws.send(json.dumps(message))
            await asyncio.sleep(0.1)
        engine.gate.set()
        await ws.send(json.dumps(END))
        messages = await read_all(ws)
    order = [m["data"]["signal_type"] if m["type"] == "events" else m["type"] for m in messages]
    assert order == ["START_SPEECH", "END_SPEECH", "data"] * 3, order
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)


async def test_end_of_stream_with_bad_audio_still_ends_the_stream() -> None:
    """`end_of_stream` whose audio is refused: the error, and still the end the client asked for
    (the finals, then 1000), not a stream left open until the idle timeout."""
    last = {"type": "end_of_stream", "audio": {"data": "@@@", "sample_rate": 16000}}
    async with running_daemon(idle_timeout_s=5) as daemon:
        messages, code = await stream(url(daemon), *chunks(audio()), last)
    assert [e["data"]["code"] for e in of_type(messages, "error")] == ["invalid_audio"], messages
    assert same_words(EXPECTED[FIXTURE], finals(messages)) and code == 1000, (code, messages[-1])
