"""Cartesia's streaming speech-to-text API (`/stt/websocket`) end to end: real daemon, real Silero,
real tiny.en, a raw WebSocket client for every message and command and for input no SDK would send."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import numpy as np
import pytest
import websockets

from satellite_asr.protocols import cartesia
from satellite_asr.protocols.streaming_apis import MAX_MESSAGE_BYTES
from satellite_asr.server import Daemon
from tests.doubles import (
    ContextRecordingEngineDouble,
    CrashingEngineDouble,
    FirstFinalGatedEngineDouble,
    FirstUtteranceIsNoiseEngineDouble,
)
from tests.helpers import (
    EXPECTED,
    close_code_after_oversized_frame,
    exchange,
    fixture_16k,
    normalise,
    pcm16,
    running_daemon,
    same_words,
)

pytestmark = pytest.mark.timeout(180)

Messages = list[dict[str, Any]]
QUERY = "model=ink-whisper&encoding=pcm_s16le&sample_rate=16000"


def stt_url(daemon: Daemon, query: str = QUERY) -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{cartesia.PATH}?{query}"


def audio(name: str = "three_commands.wav", rate: int = 16000) -> bytes:
    return pcm16(fixture_16k(name), rate)


def of_type(messages: Messages, kind: str) -> Messages:
    return [m for m in messages if m["type"] == kind]


def final_texts(messages: Messages) -> list[str]:
    return [m["text"] for m in of_type(messages, "transcript") if m["is_final"]]


async def stream(url: str, data: bytes, *after: str | bytes, **kwargs: Any) -> tuple[Messages, int | None]:
    """`exchange` ended by `done` unless `after` says otherwise: every message, and the close code."""
    return await exchange(url, data, *(after or ("done",)), **kwargs)


async def test_three_commands_as_pipecat_streams_them() -> None:
    """Pipecat's query and commands: partials then each command's final, the finals' deltas
    concatenated give the transcript; `finalize` is answered by `flush_done`, `done` by `done`,
    then the Close."""
    query = QUERY + "&language=en"
    async with running_daemon() as daemon:
        messages, code = await stream(stt_url(daemon, query), audio(), "finalize", "done", paced=True)
    assert code == 1000
    assert [m["type"] for m in messages[-2:]] == ["flush_done", "done"]
    assert len(of_type(messages, "flush_done")) == 1
    request_ids = {m["request_id"] for m in messages}
    assert len(request_ids) == 1 and request_ids != {""}
    finals = final_texts(messages)
    assert same_words(EXPECTED["three_commands.wav"], finals)
    assert not finals[0].startswith(" ") and all(text.startswith(" ") for text in finals[1:]), finals
    transcripts = of_type(messages, "transcript")
    assert not transcripts[0]["is_final"], "partials come before the first final"
    for message in transcripts:
        assert message["language"] == "en"
        assert [w["word"] for w in message["words"]] == message["text"].split()
        assert all(0 <= w["start"] <= w["end"] for w in message["words"]), message
        assert message["duration"] >= 0
    total = sum(m["duration"] for m in transcripts)
    assert total <= len(audio()) / 2 / 16000 + 0.5, "durations are deltas: together no more than the audio"


@pytest.mark.parametrize("encoding", ["pcm_mulaw", "pcm_alaw"])
async def test_g711_at_8_khz_is_transcribed(encoding: str) -> None:
    audioop = pytest.importorskip("audioop")  # the reference G.711 encoder (Python <= 3.12)
    encode = audioop.lin2ulaw if encoding == "pcm_mulaw" else audioop.lin2alaw
    data = encode(audio("lights_on.wav", 8000), 2)
    async with running_daemon() as daemon:
        query = f"model=ink-whisper&encoding={encoding}&sample_rate=8000"
        messages, code = await stream(stt_url(daemon, query), data, "finalize", "done")
    assert code == 1000 and not of_type(messages, "error"), messages
    assert same_words(EXPECTED["lights_on.wav"], [" ".join(final_texts(messages))])


async def test_finalize_ends_the_utterance_in_progress_and_is_answered_once_after_its_final() -> None:
    """The final `finalize` forced comes before its `flush_done`; a `finalize` with nothing in
    progress is answered by `flush_done` alone; the stream goes on."""
    data = audio("lights_on.wav")
    async with running_daemon() as daemon:
        messages, _ = await stream(stt_url(daemon), data[: len(data) * 2 // 3], "finalize", "finalize", "done")
    kinds = [m["type"] if m["type"] != "transcript" or not m["is_final"] else "final" for m in messages]
    kinds = [kind for kind in kinds if kind != "transcript"]
    assert kinds == ["final", "flush_done", "flush_done", "done"], messages
    assert final_texts(messages)[0].strip()


@pytest.mark.parametrize("command", ["close", "done"])
async def test_close_and_done_each_end_the_stream_after_its_finals(command: str) -> None:
    """`close` as Cartesia's SDK sends it, `done` as Pipecat does: the final of the speech sent just
    before, `done`, then the Close."""
    data = audio("lights_on.wav")
    async with running_daemon() as daemon:
        messages, code = await stream(stt_url(daemon), data[: len(data) * 2 // 3], command)
    assert code == 1000 and messages[-1]["type"] == "done"
    assert len(final_texts(messages)) == 1 and final_texts(messages)[0].strip()


@pytest.mark.parametrize(("encoding", "rate"), [("pcm_s16le", 8000), ("pcm_f32le", 24000)])
async def test_each_encoding_is_decoded(encoding: str, rate: int) -> None:
    samples = fixture_16k("lights_on.wav")
    resampled = np.interp(np.arange(0, len(samples), 16000 / rate), np.arange(len(samples)), samples)
    data = pcm16(samples, rate) if encoding == "pcm_s16le" else resampled.astype("<f4").tobytes()
    query = f"model=ink-whisper&encoding={encoding}&sample_rate={rate}"
    async with running_daemon() as daemon, websockets.connect(stt_url(daemon, query)) as ws:
        for offset in range(0, len(data), 8192):
            await ws.send(data[offset : offset + 8192])
        await ws.send("done")
        messages = [json.loads(message) async for message in ws]
    assert same_words(EXPECTED["lights_on.wav"], [" ".join(final_texts(messages))])


async def refusal(url: str) -> tuple[dict[str, Any], int | None]:
    """A query refused after the upgrade, as Cartesia refuses one: its one message, and the Close's code."""
    async with websockets.connect(url) as ws:
        error = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosedError):
            await ws.recv()
    return error, ws.close_code


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("model=ink-whisper&sample_rate=16000", "encoding"),
        ("model=ink-whisper&encoding=pcm_s32le&sample_rate=16000", "encoding"),
        ("model=ink-whisper&encoding=pcm_s16le", "sample_rate"),
        (QUERY.replace("16000", "sixteen"), "sample_rate"),
        (QUERY.replace("16000", "96000"), "sample_rate"),
        (QUERY + "&language=de", "language"),  # tiny.en is English only
        (QUERY + "&min_volume=2", "min_volume"),
        (QUERY + "&max_silence_duration_secs=soon", "max_silence_duration_secs"),
        (QUERY + "&no_such=1", "no_such"),
        (QUERY + "&model=ink-2", "model"),  # twice
        (QUERY + "&keyterm=" + "x" * 5000, "keyterm"),
    ],
)
async def test_a_bad_parameter_is_refused_in_cartesias_error_event_then_the_close(query: str, parameter: str) -> None:
    async with running_daemon() as daemon:
        error, code = await refusal(stt_url(daemon, query))
        counted = daemon.core.metrics.errors.labels("invalid_query_parameter")._value.get()
    assert error["type"] == "error" and error["done"] and code == 1008 and counted == 1
    assert error["status_code"] == error["code"] == 400 and error["error_code"] == "invalid_query_parameter"
    assert error["title"] and error["request_id"] and error["message"].startswith(f"{parameter}: "), error


async def test_an_access_token_is_refused_with_the_way_to_send_the_key() -> None:
    """Cartesia's browser clients send a short-lived `access_token`; the daemon issues none, and
    says how to send its key instead."""
    async with running_daemon() as daemon:
        error, _ = await refusal(stt_url(daemon, QUERY + "&access_token=short-lived"))
    assert error["status_code"] == 400 and error["message"].startswith("access_token: ")
    assert "api_key" in error["message"] and "X-API-Key" in error["message"], error


async def test_settings_the_daemon_does_not_apply_are_accepted_and_keyterms_reach_the_engine() -> None:
    """`min_volume`, `max_silence_duration_secs` and `cartesia_version` are checked, not used; each
    `keyterm` is a name for the engine's biasing, `language` the decode language."""
    engine = ContextRecordingEngineDouble()
    query = (
        QUERY + "&language=en&min_volume=0.1&max_silence_duration_secs=0.4&cartesia_version=2026-03-01"
        "&keyterm=Calloway%20blinds&keyterm=Aoife&keyterm=%20"
    )
    async with running_daemon(engine) as daemon:
        messages, _ = await stream(stt_url(daemon, query), audio("lights_on.wav"))
    assert [names[:2] for names in engine.names] == [("Calloway blinds", "Aoife")]
    assert engine.languages == ["en"] and final_texts(messages)


async def test_bad_messages_are_errors_and_the_stream_goes_on() -> None:
    """An unknown command and audio of a broken sample are each an `error` with `done` false; the
    speech after them is still heard."""
    data = audio("lights_on.wav")
    async with running_daemon() as daemon:
        messages, code = await stream(
            stt_url(daemon), b"", "flush", json.dumps({"type": "finalize"}), b"\x00" * 3, "done"
        )
        async with websockets.connect(stt_url(daemon)) as ws:
            await ws.send("flush")
            await ws.send(b"\x00" * 3)
            for offset in range(0, len(data), 3200):
                await ws.send(data[offset : offset + 3200])
            await ws.send("done")
            after = [json.loads(message) async for message in ws]
    errors = of_type(messages, "error")
    assert [e["error_code"] for e in errors] == ["invalid_message", "invalid_message", "invalid_audio"]
    assert all(not e["done"] and e["status_code"] == e["code"] == 400 and e["title"] for e in errors)
    assert "'flush'" in errors[0]["message"] and "finalize" in errors[0]["message"]
    assert code == 1000 and messages[-1]["type"] == "done"
    assert [e["error_code"] for e in of_type(after, "error")] == ["invalid_message", "invalid_audio"]
    assert same_words(EXPECTED["lights_on.wav"], [" ".join(final_texts(after))])


async def test_an_engine_failure_is_an_error_counted_once_and_the_stream_goes_on() -> None:
    engine = CrashingEngineDouble()
    async with running_daemon(engine) as daemon:
        errors = daemon.core.metrics.errors.labels("engine_error")
        before = errors._value.get()
        messages, code = await stream(stt_url(daemon, QUERY + "&keyterm=crash"), audio("lights_on.wav"))
        counted = errors._value.get() - before
    [failure] = of_type(messages, "error")
    assert counted == 1 and failure["status_code"] == 422 and not failure["done"]
    assert code == 1000 and messages[-1]["type"] == "done"


@pytest.mark.parametrize("headers", [{"X-API-Key": "ink-key"}, {"Authorization": "Bearer ink-key"}])
async def test_the_key_as_cartesias_clients_send_it_and_refusals_in_cartesias_body(headers: dict[str, str]) -> None:
    async with running_daemon(api_key="ink-key") as daemon:
        messages, _ = await stream(stt_url(daemon), audio("lights_on.wav"), headers=headers)
        assert final_texts(messages)
        http = f"http://127.0.0.1:{daemon.http_port}{cartesia.PATH}"
        async with aiohttp.ClientSession() as session:
            async with session.get(http, headers={"X-API-Key": "wrong"}) as wrong:
                body = await wrong.json()
                assert wrong.status == 401 and body["error_code"] == "invalid_api_key"
                assert body["message"] == "the API key is not valid" and body["title"] and body["request_id"]
            async with session.get(http) as missing:
                assert missing.status == 401 and (await missing.json())["error_code"] == "missing_api_key"
            async with session.get(http, headers=headers) as plain:
                assert plain.status == 426 and (await plain.json())["error_code"] == "websocket_required"


async def test_shutdown_sends_the_final_in_progress_then_an_error_and_going_away() -> None:
    data = audio("lights_on.wav")
    async with running_daemon() as daemon, websockets.connect(stt_url(daemon)) as ws:
        await ws.send(data[: len(data) * 2 // 3])
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(daemon.stop())
        messages = [json.loads(message) async for message in ws]
        await stopping
    *_, final, error = messages
    assert final["type"] == "transcript" and final["is_final"] and final["text"]
    assert error["type"] == "error" and error["error_code"] == "shutdown" and error["done"]
    assert error["status_code"] == 503 and ws.close_code == 1001


async def test_the_idle_timeout_is_an_error_and_going_away() -> None:
    async with running_daemon(idle_timeout_s=1) as daemon, websockets.connect(stt_url(daemon)) as ws:
        await ws.send(bytes(3200))
        messages = [json.loads(message) async for message in ws]
    [error] = messages
    assert error["type"] == "error" and error["error_code"] == "idle_timeout" and error["done"]
    assert error["status_code"] == 408 and ws.close_code == 1001


async def test_no_session_to_open_is_a_server_busy_error_and_try_again_later() -> None:
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(stt_url(daemon)) as first,
    ):
        await first.send(bytes(3200))
        async with websockets.connect(stt_url(daemon)) as second:
            messages = []
            with pytest.raises(websockets.ConnectionClosedError):  # an error code ends the iteration so
                async for message in second:
                    messages.append(json.loads(message))
    [error] = messages
    assert error["type"] == "error" and error["error_code"] == "server_busy" and error["done"]
    assert error["status_code"] == 503 and second.close_code == 1013


async def test_a_message_over_the_limit_is_message_too_big() -> None:
    path = f"{cartesia.PATH}?{QUERY}"
    async with running_daemon() as daemon:
        code = await asyncio.to_thread(close_code_after_oversized_frame, daemon.http_port, path, MAX_MESSAGE_BYTES + 4)
    assert code == 1009


async def test_the_next_utterance_waits_for_the_final_of_the_one_before() -> None:
    """With two decodes at once, the next utterance is heard while the one before decodes its
    final: its partials do not come before that final, so a client never takes the next command's
    words (a delta after the last final) as the end of the last."""
    engine = FirstFinalGatedEngineDouble()
    async with running_daemon(engine) as daemon:
        messages, _ = await stream(stt_url(daemon), audio(), paced=True, release=(engine.gate, 4.8))
    assert same_words(EXPECTED["three_commands.wav"], final_texts(messages))
    first_final = next(at for at, m in enumerate(messages) if m["type"] == "transcript" and m["is_final"])
    early = [m["text"] for m in of_type(messages[:first_final], "transcript")]
    assert early and not any({"what", "time"} & set(normalise(text).split()) for text in early), early


async def test_partials_held_back_behind_a_pending_final_are_sent_once_it_is() -> None:
    """The second command spoken whole while the first still decodes (its final gated until all the
    audio is sent): its partial is held back for that final, then sent after it and before its own
    final, not dropped."""
    engine = FirstFinalGatedEngineDouble()
    async with running_daemon(engine) as daemon:
        messages, _ = await stream(stt_url(daemon), audio(), paced=True, release=(engine.gate, 1000.0))
    said = [(m["is_final"], m["text"]) for m in of_type(messages, "transcript")]
    finals = [at for at, (final, _) in enumerate(said) if final]
    assert len(finals) == 3, said
    between = [text for final, text in said[finals[0] + 1 : finals[1]] if not final]
    assert between and {"what", "time"} & set(normalise(between[-1]).split()), said


async def test_a_noise_without_words_sends_nothing() -> None:
    """An utterance in which no words were heard (a cough) gave no partial with words: no final is
    sent for it, as a client that began no speech expects nothing to end."""
    data = audio("lights_on.wav")
    async with running_daemon(FirstUtteranceIsNoiseEngineDouble()) as daemon:
        messages, _ = await stream(stt_url(daemon), data + data)
    assert [m["type"] for m in messages] == ["transcript", "done"]
    assert same_words(EXPECTED["lights_on.wav"], final_texts(messages))
