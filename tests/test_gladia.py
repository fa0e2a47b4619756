"""Gladia's live API v2 (`POST /v2/live`, then its session's WebSocket) end to end: real daemon, real
Silero, real tiny.en, a raw aiohttp / websockets client for every message and for input no SDK
would send."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets

from satellite_asr.protocols import gladia
from satellite_asr.server import Daemon
from tests.certificates import self_signed
from tests.doubles import ContextRecordingEngineDouble, CrashingEngineDouble, FirstFinalGatedEngineDouble
from tests.helpers import (
    EXPECTED,
    PCM_FRAME_BYTES,
    fixture_16k,
    normalise,
    pcm16,
    running_daemon,
    same_words,
    upgrade_request,
)

pytestmark = pytest.mark.timeout(180)

Messages = list[dict[str, Any]]
KEY = "gladia-test-key"
BODY = {"encoding": "wav/pcm", "bit_depth": 16, "sample_rate": 16000, "channels": 1}
ALL_MESSAGES = {
    "receive_partial_transcripts": True,
    "receive_lifecycle_events": True,
    "receive_speech_events": True,
    "receive_acknowledgments": True,
}


def post_url(daemon: Daemon, query: str = "") -> str:
    return f"http://127.0.0.1:{daemon.http_port}{gladia.PATH}{'?' + query if query else ''}"


def audio(name: str = "three_commands.wav", rate: int = 16000) -> bytes:
    return pcm16(fixture_16k(name), rate)


async def post(daemon: Daemon, body: object, key: str | None = KEY, query: str = "") -> tuple[int, dict[str, Any]]:
    headers = {"X-Gladia-Key": key} if key is not None else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as http, http.post(post_url(daemon, query), data=data, headers=headers) as r:
        return r.status, await r.json()


async def session_url(daemon: Daemon, body: dict[str, Any] | None = None) -> str:
    status, answer = await post(daemon, body if body is not None else BODY)
    assert status == 201, answer
    return str(answer["url"])


async def stream(
    url: str,
    data: bytes = b"",
    *after: str | bytes,
    base64_chunks: bool = False,
    frame: int = PCM_FRAME_BYTES,
    paced: bool = False,
) -> tuple[Messages, int | None]:
    """`data` in `frame`-byte messages (binary, or base64 `audio_chunk`s; `paced` as a microphone
    sends them), the `after` messages (by default `stop_recording`); every message until the Close."""
    received: Messages = []
    async with websockets.connect(url) as ws:

        async def read() -> None:
            with contextlib.suppress(websockets.ConnectionClosedError):
                async for message in ws:
                    received.append(json.loads(message))

        reader = asyncio.create_task(read())
        for offset in range(0, len(data), frame):
            chunk = data[offset : offset + frame]
            if base64_chunks:
                await ws.send(json.dumps({"type": "audio_chunk", "data": {"chunk": base64.b64encode(chunk).decode()}}))
            else:
                await ws.send(chunk)
            if paced:
                await asyncio.sleep(0.1)
        for message in after or (json.dumps({"type": "stop_recording"}),):
            await ws.send(message)
        await reader
    return received, ws.close_code


def of_type(messages: Messages, kind: str) -> Messages:
    return [m for m in messages if m["type"] == kind]


def finals(messages: Messages) -> list[str]:
    return [m["data"]["utterance"]["text"] for m in of_type(messages, "transcript") if m["data"]["is_final"]]


async def test_post_answers_a_session_whose_url_streams_the_commands_and_every_message_type() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        status, answer = await post(daemon, {**BODY, "messages_config": ALL_MESSAGES})
        assert status == 201
        assert set(answer) == {"id", "created_at", "url"}
        assert answer["url"].startswith(f"ws://127.0.0.1:{daemon.http_port}/v2/live?token=")
        messages, code = await stream(answer["url"], audio(), paced=True)
    assert code == 1000
    assert same_words(EXPECTED["three_commands.wav"], [normalise(t) for t in finals(messages)])
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "start_recording" and "start_session" not in kinds  # the SDK makes its own
    assert kinds[-4:] == ["end_recording", "post_transcript", "post_final_transcript", "end_session"]
    assert {"speech_start", "speech_end", "audio_chunk", "stop_recording", "transcript"} <= set(kinds)
    assert any(not m["data"]["is_final"] for m in of_type(messages, "transcript"))
    acks = of_type(messages, "audio_chunk")
    assert acks[-1]["data"]["byte_range"][1] == len(audio()) and all(a["acknowledged"] for a in acks)
    final = of_type(messages, "transcript")[-1]["data"]["utterance"]
    assert {"text", "start", "end", "language", "words", "channel", "confidence"} <= set(final)
    assert [w["word"] for w in final["words"]] == final["text"].split()
    post_final = of_type(messages, "post_final_transcript")[0]["data"]["transcription"]
    assert normalise(post_final["full_transcript"]) == normalise(" ".join(finals(messages)))
    assert all(m["session_id"] == answer["id"] and m["created_at"] for m in messages)


async def test_the_closing_transcript_holds_the_last_kept_utterances(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session's memory is bounded: its closing transcript keeps its last `KEPT_UTTERANCES` finals."""
    monkeypatch.setattr(gladia, "KEPT_UTTERANCES", 2)
    async with running_daemon(api_key=KEY) as daemon:
        messages, code = await stream(await session_url(daemon), audio(), paced=True)
    assert code == 1000 and len(finals(messages)) == 3, messages
    transcription = of_type(messages, "post_final_transcript")[0]["data"]["transcription"]
    assert [u["text"] for u in transcription["utterances"]] == finals(messages)[1:]
    assert transcription["full_transcript"] == " ".join(finals(messages)[1:])


async def test_defaults_send_finals_and_speech_events_but_no_partials_or_lifecycle() -> None:
    async with running_daemon() as daemon:
        messages, _ = await stream(await session_url(daemon), audio())
    kinds = {m["type"] for m in messages}
    assert not any(not m["data"]["is_final"] for m in of_type(messages, "transcript"))
    assert "start_session" not in kinds and "end_session" not in kinds
    assert {"speech_start", "post_final_transcript", "audio_chunk"} <= kinds
    assert len(finals(messages)) == 3


async def test_base64_audio_chunks_are_audio() -> None:
    async with running_daemon() as daemon:
        messages, _ = await stream(await session_url(daemon), audio(), base64_chunks=True)
    assert same_words(EXPECTED["three_commands.wav"], [normalise(t) for t in finals(messages)])


@pytest.mark.parametrize("encoding", ["wav/ulaw", "wav/alaw"])
async def test_g711_at_8_khz(encoding: str) -> None:
    audioop = pytest.importorskip("audioop")  # the reference G.711 encoder (Python <= 3.12)
    pcm = audio("lights_on.wav", rate=8000)
    encoded = audioop.lin2ulaw(pcm, 2) if encoding == "wav/ulaw" else audioop.lin2alaw(pcm, 2)
    body = {"encoding": encoding, "bit_depth": 8, "sample_rate": 8000, "channels": 1}
    async with running_daemon() as daemon:
        messages, _ = await stream(await session_url(daemon, body), encoded, frame=800)
    assert same_words(EXPECTED["lights_on.wav"], [normalise(t) for t in finals(messages)])


async def test_pcm_at_8_khz() -> None:
    async with running_daemon() as daemon:
        body = {**BODY, "sample_rate": 8000}
        messages, _ = await stream(await session_url(daemon, body), audio(rate=8000), frame=1600)
    assert same_words(EXPECTED["three_commands.wav"], [normalise(t) for t in finals(messages)])


@pytest.mark.parametrize(
    ("body", "sentence"),
    [
        ({**BODY, "encoding": "wav/flac"}, "encoding must be one of"),
        ({**BODY, "encoding": ["wav/pcm"]}, "encoding must be one of"),
        ({**BODY, "bit_depth": 24}, "bit_depth must be 16"),
        ({**BODY, "sample_rate": 22050}, "sample_rate must be one of"),
        ({**BODY, "channels": 0}, "channels must be"),
        ({**BODY, "endpointing": 0}, "endpointing must be a number"),
        ({**BODY, "maximum_duration_without_endpointing": 61}, "maximum_duration_without_endpointing must be"),
        ({**BODY, "colour": "blue"}, "colour is not a field"),
        ({**BODY, "language_config": {"languages": ["xx"]}}, "xx"),
        ({**BODY, "language_config": {"dialect": 1}}, "language_config.dialect is not a field"),
        ({**BODY, "messages_config": {"receive_errors": "yes"}}, "receive_errors must be a boolean"),
        ({**BODY, "realtime_processing": {"translation": True}}, "does not do translation"),
        ({**BODY, "realtime_processing": {"named_entity_recognition": True}}, "named entity recognition"),
        ({**BODY, "realtime_processing": {"sentiment_analysis": True}}, "sentiment analysis"),
        ({**BODY, "realtime_processing": {"custom_spelling": True}}, "custom spelling"),
        ({**BODY, "post_processing": {"summarization": True}}, "summarization"),
        ({**BODY, "post_processing": {"chapterization": True}}, "chapterization"),
        ({**BODY, "pre_processing": {"audio_enhancer": True}}, "audio enhancement"),
        ({**BODY, "callback": True}, "callbacks"),
        ({**BODY, "realtime_processing": {"custom_vocabulary": True}}, "vocabulary must be a list"),
        ({**BODY, "realtime_processing": {"custom_vocabulary": "yes"}}, "custom_vocabulary must be a boolean"),
        ([1], "must be a JSON object"),
        (b"{", "not JSON"),
    ],
)
async def test_a_bad_body_is_refused_with_gladias_error_and_a_sentence(body: object, sentence: str) -> None:
    async with running_daemon() as daemon:
        status, answer = await post(daemon, body)
        assert status == 400
        assert answer["statusCode"] == 400 and sentence in answer["message"]
        assert answer["validation_errors"] == [answer["message"]]
        assert not daemon.gladia.sessions.pending


async def test_a_body_arriving_in_pieces_is_read_whole_and_one_that_stalls_is_refused() -> None:
    """A body comes in as many reads as the network cuts it into (a custom vocabulary of some size,
    over a real link, is several): each piece is not the body. One that stops coming is an upload's
    408, not an HTTP connection held for ever."""
    body = json.dumps({**BODY, "custom_metadata": {"note": "x" * 3000}}).encode()
    head = (
        f"POST {gladia.PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    answers = []
    async with running_daemon(header_timeout_s=1) as daemon:
        for rest in (body[100:], b""):
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
            writer.write(head + body[:100])
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.write(rest)
            answers.append(await asyncio.wait_for(reader.read(), 30))
            writer.close()
    assert answers[0].startswith(b"HTTP/1.1 201"), answers[0]
    assert answers[1].startswith(b"HTTP/1.1 408") and b'"statusCode": 408' in answers[1], answers[1]
    assert b"min_upload_kb_per_s" in answers[1]


async def test_a_body_its_content_encoding_cannot_decode_is_refused_with_a_sentence() -> None:
    headers = {"Content-Encoding": "gzip", "X-Gladia-Key": KEY}
    async with (
        running_daemon() as daemon,
        aiohttp.ClientSession() as http,
        http.post(post_url(daemon), data=b"x" * 200, headers=headers) as answer,
    ):
        status, body = answer.status, await answer.json()
    assert status == 400 and body["message"] == "the body cannot be read: Can not decode content-encoding: gzip"


async def test_null_fields_are_the_defaults() -> None:
    nulls = {"encoding": None, "sample_rate": None, "language_config": {"languages": None}, "messages_config": None}
    async with running_daemon() as daemon:
        status, answer = await post(daemon, nulls)
        assert status == 201, answer
        [config] = [pending.config for pending in daemon.gladia.sessions.pending.values()]
    assert (config.encoding, config.sample_rate, config.messages) == ("wav/pcm", 16000, gladia.MESSAGE_DEFAULTS)


async def test_an_unknown_query_parameter_and_region_are_checked() -> None:
    async with running_daemon() as daemon:
        assert (await post(daemon, BODY, query="region=us-west"))[0] == 201
        status, answer = await post(daemon, BODY, query="region=moon")
        assert status == 400 and "region must be one of" in answer["message"]
        status, answer = await post(daemon, BODY, query="verbose=1")
        assert status == 400 and "verbose is not a query parameter" in answer["message"]


async def test_the_key_is_required_on_the_post_and_the_token_stands_for_it() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        status, answer = await post(daemon, BODY, key=None)
        assert status == 401 and answer["statusCode"] == 401 and "requires an API key" in answer["message"]
        status, answer = await post(daemon, BODY, key="wrong")
        assert status == 401 and answer["message"] == "the API key is not valid"
        url = await session_url(daemon)
        messages, code = await stream(url, audio())
        assert code == 1000 and finals(messages)
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url.split("?")[0])
        assert refused.value.response.status_code == 401


async def test_over_tls_the_session_url_is_wss_and_streams(tmp_path: Path) -> None:
    """The session's URL is built from the POST's own scheme and host: `wss://` behind TLS."""
    cert = self_signed(tmp_path, ["localhost"], ["127.0.0.1"])
    trusting = cert.client_context()
    async with running_daemon(tls_cert=str(cert.cert), tls_key=str(cert.key)) as daemon:
        target = f"https://127.0.0.1:{daemon.http_port}{gladia.PATH}"
        async with aiohttp.ClientSession() as http, http.post(target, json=BODY, ssl=trusting) as answer:
            url = (await answer.json())["url"]
        assert url.startswith(f"wss://127.0.0.1:{daemon.http_port}/v2/live?token=")
        async with websockets.connect(url, ssl=trusting) as ws:
            await ws.send(audio("lights_on.wav"))
            await ws.send(json.dumps({"type": "stop_recording"}))
            messages = [json.loads(message) async for message in ws]
    assert same_words(EXPECTED["lights_on.wav"], [normalise(t) for t in finals(messages)])


async def test_a_dropped_client_reconnects_to_its_session_which_goes_on_until_it_ends() -> None:
    """Gladia's SDK and Pipecat reconnect to the same URL after a drop: the session goes on (its id,
    byte ranges, times and closing transcript), one connection at a time, until stop_recording."""
    first, second = audio("lights_on.wav"), audio("weather.wav")
    async with running_daemon(first_message_timeout_s=5) as daemon:
        status, answer = await post(daemon, {**BODY, "messages_config": {"receive_lifecycle_events": True}})
        assert status == 201
        async with websockets.connect(answer["url"]) as ws:
            await ws.send(first)
            before = []
            while not finals(before):
                before.append(json.loads(await ws.recv()))
            messages, code = await stream(answer["url"], b"")
            assert code == 4401 and "connected already" in messages[0]["data"]["message"]
            ws.transport.abort()  # the network drops: no Close; the URL waits for the client
        await asyncio.sleep(0.2)
        after, code = await stream(answer["url"], second)
        assert code == 1000
        again, code = await stream(answer["url"], b"")
        assert code == 4401 and "ended" in again[0]["data"]["message"]
        assert not daemon.gladia.sessions.pending
    assert all(m["session_id"] == answer["id"] for m in before + after)
    assert same_words(EXPECTED["weather.wav"], [normalise(t) for t in finals(after)])
    assert [m["type"] for m in after if m["type"].endswith("_session")] == ["end_session"]
    assert len(of_type(before, "start_recording")) == 1 and not of_type(after, "start_recording")
    acks = of_type(after, "audio_chunk")
    assert acks[0]["data"]["byte_range"][0] == len(first) and acks[-1]["data"]["byte_range"][1] == len(first + second)
    later = of_type(after, "transcript")[-1]["data"]["utterance"]
    assert later["start"] >= len(first) / 32000
    post_final = of_type(after, "post_final_transcript")[0]["data"]
    assert normalise(post_final["transcription"]["full_transcript"]) == normalise(" ".join(finals(before + after)))
    assert post_final["metadata"]["audio_duration"] == pytest.approx(len(first + second) / 32000, abs=0.05)


async def test_a_client_that_closes_without_stop_recording_ends_its_session() -> None:
    """A Close from the client (or from the daemon, for a message over the size limit) is no network
    drop: the session ends at once, and holds none of the address's slots for a reconnection."""
    async with running_daemon(max_connections_per_address=1) as daemon:
        for ending in ({"close": True}, {"oversized": True}):
            url = await session_url(daemon)
            async with websockets.connect(url, max_size=None) as ws:
                await ws.send(audio("lights_on.wav")[:32000])
                if ending.get("oversized"):
                    await ws.send(b"\x00" * (2 << 20))
                    with contextlib.suppress(websockets.ConnectionClosed):
                        await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == (1009 if ending.get("oversized") else 1000)
            await asyncio.sleep(0.2)
            assert not daemon.gladia.sessions.pending
        assert (await post(daemon, BODY))[0] == 201


async def test_an_upgrade_whose_client_left_before_the_answer_does_not_take_the_session() -> None:
    """A client gone before its 101 (it half-closed at once) never had the session: its URL still
    connects, and the session still expires if nobody does."""
    async with running_daemon() as daemon:
        url = await session_url(daemon)
        path = url.removeprefix(f"ws://127.0.0.1:{daemon.http_port}")
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
        writer.write(upgrade_request(daemon.http_port, path))
        writer.write_eof()
        await asyncio.wait_for(reader.read(), 60)
        writer.close()
        messages, code = await stream(url, audio("lights_on.wav"))
    assert code == 1000
    assert same_words(EXPECTED["lights_on.wav"], [normalise(t) for t in finals(messages)])


async def test_a_session_never_connected_expires_and_an_address_holds_a_bounded_number() -> None:
    async with running_daemon(first_message_timeout_s=1, max_connections_per_address=2) as daemon:
        first = await session_url(daemon)
        await session_url(daemon)
        status, answer = await post(daemon, BODY)
        assert status == 429 and "max_connections_per_address" in answer["message"]
        await asyncio.sleep(1.5)
        assert not daemon.gladia.sessions.pending
        messages, code = await stream(first, b"")
        assert code == 4401 and "expired" in messages[0]["data"]["message"]
        # a connected session holds none of the address's slots; left without stop_recording, it holds
        # one again until it expires
        url = await session_url(daemon)
        async with websockets.connect(url) as ws:
            assert (await post(daemon, BODY))[0] == 201
            ws.transport.abort()
        await asyncio.sleep(0.2)
        assert (await post(daemon, BODY))[0] == 429
        await asyncio.sleep(1.5)
        assert not daemon.gladia.sessions.pending
        assert (await post(daemon, BODY))[0] == 201


async def test_a_bad_audio_chunk_is_unacknowledged_and_loses_nothing_else() -> None:
    pcm = audio()
    middle = len(pcm) // 2 // PCM_FRAME_BYTES * PCM_FRAME_BYTES
    async with running_daemon() as daemon, websockets.connect(await session_url(daemon)) as ws:
        await ws.send(pcm[:middle])
        await ws.send(json.dumps({"type": "audio_chunk", "data": {"chunk": "%%%"}}))
        await ws.send(b"\x00")  # half a sample
        await ws.send(json.dumps({"type": "shout"}))
        await ws.send("not json")
        await ws.send(pcm[middle:])
        await ws.send(json.dumps({"type": "stop_recording"}))
        messages = [json.loads(m) async for m in ws]
    refused = [m for m in of_type(messages, "audio_chunk") if not m["acknowledged"]]
    assert next(r["error"]["message"] for r in refused) == "an audio_chunk's data.chunk is not valid base64"
    assert len(refused) == 2
    errors = of_type(messages, "error")
    assert "unknown type 'shout'" in errors[0]["data"]["message"] and len(errors) == 2
    assert same_words(EXPECTED["three_commands.wav"], [normalise(t) for t in finals(messages)])


async def test_custom_vocabulary_biases_the_decode() -> None:
    engine = ContextRecordingEngineDouble()
    realtime = {
        "custom_vocabulary": True,
        "custom_vocabulary_config": {"vocabulary": ["Zigbee", {"value": "Hue", "intensity": 0.5}]},
    }
    async with running_daemon(engine) as daemon:
        await stream(await session_url(daemon, {**BODY, "realtime_processing": realtime}), audio())
    assert engine.names[0][:2] == ("Zigbee", "Hue")


async def test_an_engine_failure_is_an_error_message_and_the_stream_goes_on() -> None:
    """Each utterance's failed decode is its own `error` message; the stream is not closed for it
    (a Close would lose the next utterance's final), and ends as the client ends it."""
    realtime = {"custom_vocabulary": True, "custom_vocabulary_config": {"vocabulary": ["crash"]}}
    async with running_daemon(CrashingEngineDouble()) as daemon:
        messages, code = await stream(await session_url(daemon, {**BODY, "realtime_processing": realtime}), audio())
    assert code == 1000
    errors = of_type(messages, "error")
    assert [e["data"]["code"] for e in errors] == ["engine_error"] * 3
    assert errors[0]["data"]["status_code"] == 500
    assert messages[-1]["type"] == "post_final_transcript"


async def test_the_next_utterances_partial_waits_for_the_final_before_it() -> None:
    """A command spoken whole while the one before still decodes: its speech events and partials
    come after that final, never before it."""
    engine = FirstFinalGatedEngineDouble()
    body = {**BODY, "messages_config": {"receive_partial_transcripts": True}}
    async with running_daemon(engine) as daemon, websockets.connect(await session_url(daemon, body)) as ws:
        data = audio()
        for offset in range(0, len(data), PCM_FRAME_BYTES):
            await ws.send(data[offset : offset + PCM_FRAME_BYTES])
            await asyncio.sleep(0.1)
        engine.gate.set()
        await ws.send(json.dumps({"type": "stop_recording"}))
        messages = [json.loads(m) async for m in ws]
    kinds = [m["type"] + ("!" if m["type"] == "transcript" and m["data"]["is_final"] else "") for m in messages]
    starts = [index for index, kind in enumerate(kinds) if kind == "speech_start"]
    assert kinds.index("transcript!") < starts[1], kinds  # the next speech's start waits for it too
    speech = [m["type"] for m in messages if m["type"] in ("speech_start", "speech_end")]
    assert speech == ["speech_start", "speech_end"] * 3, speech
    transcripts = [m["data"] for m in of_type(messages, "transcript")]
    first_final = next(i for i, t in enumerate(transcripts) if t["is_final"])
    assert all(t["id"] == transcripts[first_final]["id"] for t in transcripts[:first_final]), transcripts
    assert any(t["id"] != transcripts[first_final]["id"] and not t["is_final"] for t in transcripts[first_final:])
    assert same_words(EXPECTED["three_commands.wav"], [normalise(t) for t in finals(messages)])


async def test_shutdown_sends_the_final_in_progress_and_the_closing_messages_then_1001() -> None:
    data = audio("lights_on.wav")
    async with running_daemon() as daemon, websockets.connect(await session_url(daemon)) as ws:
        await ws.send(data[: len(data) * 2 // 3])
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(daemon.stop())
        messages = [json.loads(message) async for message in ws]
        await stopping
    assert finals(messages) and messages[-1]["type"] == "post_final_transcript"
    assert ws.close_code == 1001


async def test_the_idle_timeout_ends_the_stream_after_its_closing_messages() -> None:
    async with running_daemon(idle_timeout_s=1) as daemon, websockets.connect(await session_url(daemon)) as ws:
        messages = [json.loads(message) async for message in ws]
    assert [m["type"] for m in messages] == ["post_transcript", "post_final_transcript"]
    assert ws.close_code == 1001


async def test_a_session_over_max_sessions_is_an_error_and_4503() -> None:
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(await session_url(daemon)),
    ):
        messages, code = await stream(await session_url(daemon), b"")
    assert code == 4503
    assert [(m["type"], m["data"]["code"]) for m in messages] == [("error", "server_busy")]
