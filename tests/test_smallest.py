"""Smallest AI's Pulse API (`/waves/v1/stt/live` and the upload `POST /waves/v1/stt/`) end to end:
real daemon, real Silero, real tiny.en, a raw WebSocket (or HTTP) client for every message and for
input no client library would send."""

from __future__ import annotations

import asyncio
import audioop
import json
from typing import Any

import aiohttp
import numpy as np
import pytest
import websockets

from satellite_asr.protocols import smallest, smallest_upload
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble, FailsOnAWordEngineDouble, FirstFinalGatedEngineDouble
from tests.helpers import (
    EXPECTED,
    FIXTURES,
    PCM_FRAME_BYTES,
    encoded_audio,
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
from tests.test_speechmatics import mulaw

pytestmark = pytest.mark.timeout(180)

Messages = list[dict[str, Any]]
FIXTURE = "three_commands.wav"
FINALIZE = {"type": "finalize"}
CLOSE = {"type": "close_stream"}
KEY = "smallest-key"


def url(daemon: Daemon, query: str = "model=pulse&language=en&encoding=linear16&sample_rate=16000") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{smallest.PATH}{'?' + query if query else ''}"


def audio() -> bytes:
    return pcm16(fixture_16k(FIXTURE), 16000)


async def stream(
    target: str, *sent: dict[str, Any] | str | bytes, headers: dict[str, str] | None = None, paced: bool = False
) -> tuple[Messages, int | None]:
    """The `sent` messages (by default the fixture then `close_stream`); every message until the
    Close, and its code."""
    return await send_all(target, sent or (*pcm_frames(audio()), CLOSE), headers, paced, is_binary)


def finals(messages: Messages) -> list[str]:
    """The finals with words."""
    return [m["transcript"] for m in of_type(messages, "transcription") if m["is_final"] and m["transcript"]]


async def test_three_commands_every_message_and_its_order() -> None:
    """Interim transcripts while each command is heard, with `vad_events` its `speech_started` first
    and `speech_ended` after its final (LiveKit's turn ends there); each final with its words,
    utterances and the transcript so far; `close_stream`: an empty final `is_last`, last, then a normal Close."""
    query = "model=pulse&vad_events=true&full_transcript=true&sentence_timestamps=true&encoding=linear16"
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, query), *pcm_frames(audio()), CLOSE, paced=True)
    assert code == 1000
    said = finals(messages)
    assert same_words(EXPECTED[FIXTURE], said), said
    shape = []
    for message in messages:
        if message["type"] == "transcription":
            shape.append("last" if message["is_last"] else "final" if message["is_final"] else "interim")
        else:
            shape.append(message["type"])
    compact = [kind for at, kind in enumerate(shape) if at == 0 or kind != shape[at - 1]]
    assert compact == ["speech_started", "interim", "final", "speech_ended"] * 3 + ["last"], compact
    for message in of_type(messages, "transcription"):
        assert message["session_id"] == messages[0]["session_id"] and message["language"] == "en", message
    said_finals = [m for m in of_type(messages, "transcription") if m["is_final"] and m["transcript"]]
    for at, final in enumerate(said_finals):
        assert [word["word"] for word in final["words"]] == final["transcript"].split(), final
        assert final["utterances"] == [
            {"text": final["transcript"], "start": final["words"][0]["start"], "end": final["words"][0]["end"]}
        ]
        assert final["full_transcript"] == " ".join(said[: at + 1]) and final["speech_final"] is True
        assert final["from_finalize"] is False
    last = messages[-1]
    assert (
        last["is_last"] and last["is_final"] and last["transcript"] == "" and last["full_transcript"] == " ".join(said)
    )


async def test_next_commands_start_and_interims_wait_for_the_final_before_it() -> None:
    """With two decodes at once (the first final held), the second command's `speech_started` and
    interims come after the first command's final and `speech_ended`: a client never takes the next
    command's words for the end of the last, nor ends the turn before its final."""
    engine = FirstFinalGatedEngineDouble()
    async with running_daemon(engine) as daemon, websockets.connect(url(daemon, "vad_events=true")) as ws:
        for frame in pcm_frames(audio()):
            await ws.send(frame)
            await asyncio.sleep(0.1)
        engine.gate.set()
        await ws.send(json.dumps(CLOSE))
        messages = await read_all(ws)
    first = next(at for at, m in enumerate(messages) if m.get("is_final") and m["transcript"])
    assert [m["type"] for m in messages[: first + 2]].count("speech_started") == 1, messages[: first + 2]
    assert messages[first + 1]["type"] == "speech_ended", messages[first : first + 3]
    early = " ".join(m["transcript"] for m in of_type(messages[:first], "transcription"))
    assert not {"what", "time"} & set(normalise(early).split()), early
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)
    assert (
        [m["type"] for m in messages].count("speech_started")
        == 3
        == [m["type"] for m in messages].count("speech_ended")
    )


async def test_finalize_ends_the_command_in_progress_and_an_idle_one_answers_empty() -> None:
    """A finalize midway through the first command: its words so far, `from_finalize`; a second
    with nothing in progress: an empty final `from_finalize` (the clients end their turn on it); the
    rest of the stream as before."""
    data = audio()
    middle = 12 * PCM_FRAME_BYTES
    async with running_daemon() as daemon:
        messages, code = await stream(
            url(daemon), *pcm_frames(data[:middle]), FINALIZE, FINALIZE, *pcm_frames(data[middle:]), CLOSE
        )
    answered = [m for m in of_type(messages, "transcription") if m.get("from_finalize")]
    assert len(answered) == 2 and code == 1000, messages
    assert normalise(answered[0]["transcript"]).split()[0] == normalise(EXPECTED[FIXTURE][0]).split()[0]
    assert answered[1]["transcript"] == "" and answered[1]["is_final"]
    rest = normalise(" ".join(finals(messages)[1:]))
    assert "what time is it" in rest and "garage door" in rest, rest


def alaw(pcm: bytes) -> bytes:
    return audioop.lin2alaw(pcm, 2)


@pytest.mark.parametrize(
    ("encoding", "rate", "encode"),
    [("mulaw", 8000, lambda pcm: mulaw(np.frombuffer(pcm, "<i2"))), ("alaw", 8000, alaw), ("linear16", 44100, bytes)],
)
async def test_each_encoding_and_rate_the_clients_use(encoding: str, rate: int, encode: Any) -> None:
    """Telephony's 8 kHz mu-law and A-law, and 44.1 kHz PCM, resampled: the same three commands."""
    data = encode(pcm16(fixture_16k(FIXTURE), rate))
    width = 2 if encoding == "linear16" else 1
    async with running_daemon() as daemon:
        messages, _ = await stream(
            url(daemon, f"model=pulse&encoding={encoding}&sample_rate={rate}"),
            *pcm_frames(data, rate // 10 * width),
            CLOSE,
        )
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)


async def test_keywords_reach_the_engine_without_their_weights() -> None:
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine) as daemon:
        await stream(
            url(daemon, "model=pulse&keywords=Calloway%20blinds:2,Aoife:4.5,Marigold"), *pcm_frames(audio())[:20], CLOSE
        )
    assert engine.names[-1][:3] == ("Calloway blinds", "Aoife", "Marigold"), engine.names


async def test_keepalive_is_answered_with_pong() -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), {"type": "keepalive"}, CLOSE)
    assert [m["type"] for m in messages] == ["pong", "transcription"] and messages[-1]["is_last"] and code == 1000


REFUSALS = [
    ("not json", "JSON"),
    ({"type": "flush"}, "'flush'"),
    ({"kind": "finalize"}, "no type"),
    ({"type": "finalize", "now": True}, "now"),
    (b"\x00\x00\x00", "dropped"),
]


@pytest.mark.parametrize(("message", "words"), REFUSALS)
async def test_a_refused_message_loses_nothing_else(message: Any, words: str) -> None:
    """A bad message after the first command: Smallest's error (400, the daemon's code and
    sentence), and the stream goes on: all three commands come."""
    data = audio()
    middle = 30 * PCM_FRAME_BYTES
    async with running_daemon() as daemon:
        messages, code = await stream(
            url(daemon), *pcm_frames(data[:middle]), message, *pcm_frames(data[middle:]), CLOSE
        )
    [error] = of_type(messages, "error")
    assert error["status"] == 400 and error["code"] and words in error["message"], error
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)
    assert messages[-1]["is_last"] and code == 1000


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("model=pulse-pro", "model"),
        ("encoding=opus", "encoding"),
        ("encoding=linear32", "encoding"),
        ("sample_rate=4000", "sample_rate"),
        ("language=xx", "language"),
        ("diarize=true", "diarize"),
        ("redact_pii=true", "redact_pii"),
        ("word_timestamps=yes", "word_timestamps"),
        ("numerals=maybe", "numerals"),
        ("keywords=Aoife:-1", "keywords"),
        ("endpointing_timeout=soon", "endpointing_timeout"),
        ("punctuate=true", "punctuate"),
        ("model=pulse&model=pulse", "model"),
    ],
)
async def test_a_bad_query_is_a_400_before_the_upgrade(query: str, parameter: str) -> None:
    """Refused before the upgrade, as Smallest refuses a model it cannot stream, in its error shape
    naming the parameter."""
    async with running_daemon() as daemon:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url(daemon, query))
    assert refused.value.response.status_code == 400
    body = json.loads(refused.value.response.body)
    assert body["type"] == "error" and body["status"] == 400 and body["code"] == "invalid_query_parameter", body
    assert body["message"].startswith(f"{parameter}:"), body


async def test_settings_checked_not_applied_and_false_features_are_accepted() -> None:
    """What Pipecat sends by default (every flag, `numerals=auto`, Pulse 2's estimates) opens a stream."""
    query = (
        "model=pulse-2&language=en&encoding=linear16&sample_rate=16000&word_timestamps=false&full_transcript=false"
        "&sentence_timestamps=false&redact_pii=false&redact_pci=false&numerals=auto&diarize=false&endpointing=true"
        "&format=true&emotion_detection=true&gender_detection=true&itn_normalize=false&no_format_delay=false"
        "&endpointing_timeout=300&eou_timeout_ms=800&finalize_on_words=true&max_words=40&vad_events=false"
    )
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, query))
    assert same_words(EXPECTED[FIXTURE], finals(messages)) and code == 1000
    assert all("words" not in m for m in of_type(messages, "transcription")) and not of_type(messages, "speech_started")


async def test_an_engine_failure_is_an_error_and_the_stream_goes_on() -> None:
    async with running_daemon(FailsOnAWordEngineDouble("bedroom")) as daemon:
        messages, code = await stream(url(daemon))
    assert [e["status"] for e in of_type(messages, "error")] == [500], messages
    said = normalise(" ".join(finals(messages)))
    assert "what time is it" in said and "garage door" in said and code == 1000


async def test_the_key_by_bearer_and_refusals_in_smallests_shape() -> None:
    """`Authorization: Bearer` (both clients' way) reaches the API; none or a wrong one: 401 at the
    upgrade with Smallest's error body; a plain GET: 426 in the same shape."""
    async with running_daemon(api_key=KEY) as daemon:
        messages, _ = await stream(url(daemon), CLOSE, headers={"Authorization": f"Bearer {KEY}"})
        assert messages[-1]["is_last"], messages
        async with aiohttp.ClientSession() as http:
            for headers, status, code in [
                ({}, 401, "missing_api_key"),
                ({"Authorization": "Bearer wrong"}, 401, "invalid_api_key"),
                ({"Authorization": f"Bearer {KEY}"}, 426, "websocket_required"),
            ]:
                async with http.get(url(daemon).replace("ws", "http", 1), headers=headers) as response:
                    body = await response.json()
                    assert response.status == status and body["type"] == "error", body
                    assert body["status"] == status and body["code"] == code and body["message"], body


async def test_idle_timeout_sends_the_finals_then_a_408() -> None:
    async with running_daemon(idle_timeout_s=2) as daemon, websockets.connect(url(daemon)) as ws:
        for frame in pcm_frames(audio()):
            await ws.send(frame)
        messages = await read_all(ws)
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)
    assert (
        messages[-1]["type"] == "error"
        and messages[-1]["status"] == 408
        and "idle_timeout_s" in messages[-1]["message"]
    )
    assert ws.close_code == 1001


async def test_shutdown_sends_the_final_of_what_came_then_a_503() -> None:
    data = audio()
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        for frame in pcm_frames(data[: len(data) // 4]):
            await ws.send(frame)
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(daemon.stop())
        messages = await read_all(ws)
        await stopping
    assert finals(messages) and messages[-1]["type"] == "error" and messages[-1]["status"] == 503, messages
    assert ws.close_code == 1001


async def test_over_max_sessions_is_a_503_and_the_open_session_goes_on() -> None:
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(url(daemon)) as first,
    ):
        await first.send(json.dumps({"type": "keepalive"}))
        assert json.loads(await first.recv())["type"] == "pong"
        refused, code = await stream(url(daemon))
        for frame in pcm_frames(audio()):
            await first.send(frame)
        await first.send(json.dumps(CLOSE))
        messages = await read_all(first)
    assert [(m["type"], m["status"]) for m in refused] == [("error", 503)] and code == 1013, refused
    assert same_words(EXPECTED[FIXTURE], finals(messages)) and messages[-1]["is_last"]


def upload_url(daemon: Daemon, query: str = "model=pulse&language=en&encoding=linear16&sample_rate=16000") -> str:
    return f"http://127.0.0.1:{daemon.http_port}{smallest_upload.PATH}?{query}"


async def test_the_upload_answers_the_whole_file() -> None:
    """A WAV body, as LiveKit's `recognize` sends it: the transcript, its words and utterances."""
    body = (FIXTURES / FIXTURE).read_bytes()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/octet-stream"}
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        async with http.post(
            upload_url(daemon, "model=pulse&word_timestamps=true"), data=body, headers=headers
        ) as response:
            result = await response.json()
            assert response.status == 200, result
        async with http.post(
            upload_url(daemon), data=body, headers={**headers, "Authorization": "Bearer no"}
        ) as response:
            refused = await response.json()
            assert response.status == 401 and refused["code"] == "invalid_api_key", refused
    assert result["status"] == "success" and result["language"] == "en"
    said = [utterance["text"] for utterance in result["utterances"]]
    assert same_words(EXPECTED[FIXTURE], said) and result["transcription"] == " ".join(said), result
    assert [word["word"] for word in result["words"]] == result["transcription"].split()
    assert result["audio_length"] == pytest.approx(len(fixture_16k(FIXTURE)) / 16000, abs=0.05)


@pytest.mark.parametrize(
    ("query", "content_type", "status", "code"),
    [
        ("language=en", "application/octet-stream", 400, "invalid_query_parameter"),
        ("model=pulse&diarize=true", "application/octet-stream", 400, "invalid_query_parameter"),
        ("model=pulse&webhook_url=http://x", "application/octet-stream", 400, "invalid_query_parameter"),
        ("model=pulse", "application/json", 400, "url_not_fetched"),
        ("model=pulse", "text/plain", 415, "unsupported_media_type"),
    ],
)
async def test_a_refused_upload_in_smallests_shape(query: str, content_type: str, status: int, code: str) -> None:
    async with running_daemon() as daemon, aiohttp.ClientSession() as http:
        data = json.dumps({"url": "http://x/a.wav"}) if content_type == "application/json" else np.zeros(8).tobytes()
        async with http.post(upload_url(daemon, query), data=data, headers={"Content-Type": content_type}) as response:
            body = await response.json()
    assert response.status == status and body == {**body, "type": "error", "status": status, "code": code}, body
    assert body["message"]


async def test_an_idle_finalizes_empty_final_carries_what_every_final_carries() -> None:
    """With `full_transcript` and `word_timestamps`, the empty final answering a finalize with nothing
    in progress is a final like any other: its `words` (none) and the transcript so far, which a
    client reading every final's `full_transcript` finds there too."""
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, "model=pulse&full_transcript=true"), FINALIZE, CLOSE)
    answer, last = of_type(messages, "transcription")
    assert answer["from_finalize"] and answer["is_final"] and not answer["is_last"] and code == 1000, messages
    assert answer["words"] == [] and answer["full_transcript"] == "" == last["full_transcript"], answer


async def test_an_ogg_opus_upload_named_as_smallest_names_it_is_transcribed() -> None:
    """The upload is decoded by its own header, so Smallest's `encoding` names of what the daemon
    does not stream (`ogg_opus`, `opus`, `linear32`) say nothing it needs: an Ogg Opus file sent
    with `encoding=ogg_opus` is transcribed, not refused."""
    body = encoded_audio(fixture_16k("lights_on.wav"), "ogg", "libopus", 48000)
    headers = {"Content-Type": "application/octet-stream"}
    async with (
        running_daemon() as daemon,
        aiohttp.ClientSession() as http,
        http.post(upload_url(daemon, "model=pulse&encoding=ogg_opus"), data=body, headers=headers) as response,
    ):
        result = await response.json()
        assert response.status == 200, result
    assert same_words(EXPECTED["lights_on.wav"], [result["transcription"]]), result
