"""Telnyx's speech-to-text WebSocket (`/v2/speech-to-text/transcription`) end to end: real daemon,
real Silero, real tiny.en, a raw WebSocket client for every message and for input no client would
send. No message ends a Telnyx stream, so these streams end as LiveKit's plugin's does: the client
stops sending and the daemon's idle timeout closes the connection once the finals are out."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import aiohttp
import numpy as np
import pytest
import websockets

from satellite_asr.clients.bench import wav_header
from satellite_asr.protocols import telnyx
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble, FirstFinalGatedEngineDouble
from tests.helpers import (
    EXPECTED,
    close_code_after_oversized_frame,
    fixture_16k,
    is_binary,
    of_type,
    pcm16,
    pcm_frames,
    read_all,
    running_daemon,
    same_words,
    send_all,
)

pytestmark = pytest.mark.timeout(180)

FIXTURE = "three_commands.wav"
KEY = "telnyx-key"
BEARER = {"Authorization": f"Bearer {KEY}"}
QUERY = "transcription_engine=telnyx&language=en&input_format=wav"
"""What LiveKit's plugin sends."""
IDLE_S = 2
"""The daemon's idle timeout in these tests: it ends each stream, as no message does."""
PACED_IDLE_S = 5
"""The idle timeout of a stream sent at microphone pace: over the fixture's longest pause."""
Messages = list[dict[str, Any]]


def url(daemon: Daemon, query: str = QUERY) -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{telnyx.PATH}{'?' + query if query else ''}"


def audio(rate: int = 16000) -> bytes:
    return pcm16(fixture_16k(FIXTURE), rate)


async def stream(
    target: str, *sent: str | bytes, headers: dict[str, str] | None = None, paced: bool = False
) -> tuple[Messages, int | None]:
    """The `sent` messages (by default the header, then the fixture); every message until the Close
    (the idle timeout's, after the finals), and its code."""
    return await send_all(target, sent or (wav_header(), *pcm_frames(audio())), headers, paced, is_binary)


def finals(messages: Messages) -> list[str]:
    return [m["transcript"] for m in of_type(messages, "transcript") if m["is_final"] and m["transcript"]]


def errors(messages: Messages) -> list[str]:
    return [m["code"] for m in of_type(messages, "error")]


async def test_three_commands_every_message() -> None:
    """LiveKit's way (a header alone, then 16 kHz PCM at microphone pace): each command's partials
    (`is_final` false, its words so far), its final with `confidence`, `start_time` and `duration`;
    the idle timeout then ends the stream: its error, and the Close 1001."""
    async with running_daemon(idle_timeout_s=PACED_IDLE_S) as daemon:
        messages, code = await stream(url(daemon), wav_header(), *pcm_frames(audio()), paced=True)
    assert code == 1001
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)
    transcripts = of_type(messages, "transcript")
    partials = [m for m in transcripts if not m["is_final"]]
    assert partials and all(set(m) == {"type", "transcript", "is_final"} and m["transcript"] for m in partials)
    done = [m for m in transcripts if m["is_final"]]
    assert all(set(m) == {"type", "transcript", "is_final", "confidence", "start_time", "duration"} for m in done)
    assert all(0 <= m["confidence"] <= 1 and m["duration"] > 0 for m in done), done
    starts = [m["start_time"] for m in done]
    assert starts == sorted(starts) and starts[0] >= 0, starts
    assert messages[-1] == {"type": "error", "error": messages[-1]["error"], "code": "idle_timeout"}
    assert "idle_timeout_s" in messages[-1]["error"]


async def test_a_wav_header_with_its_audio_in_one_message_at_24_khz() -> None:
    """The SDK's way with a file: the header and audio together; the rate is the header's."""
    data = audio(24000)
    async with running_daemon(idle_timeout_s=IDLE_S) as daemon:
        messages, code = await stream(url(daemon), wav_header(24000) + data[:4800], *pcm_frames(data[4800:], 4800))
    assert same_words(EXPECTED[FIXTURE], finals(messages)) and code == 1001, finals(messages)


async def test_part_of_a_sample_after_the_header_in_its_message_is_an_error_and_the_stream_goes_on() -> None:
    """Review: the audio after the header in the first message, when part of a sample, ended the
    stream (the error, then a Close 1000 and nothing more) where a later message's goes on."""
    frames = pcm_frames(audio())
    async with running_daemon(idle_timeout_s=IDLE_S) as daemon:
        messages, code = await stream(url(daemon), wav_header() + b"\x01", *frames)
    assert errors(messages) == ["invalid_audio", "idle_timeout"], messages
    assert same_words(EXPECTED[FIXTURE], finals(messages)) and code == 1001, finals(messages)


def extensible_header(channels: int) -> bytes:
    """A streaming WAV header of 16-bit PCM as `WAVE_FORMAT_EXTENSIBLE` (FFmpeg's for over two channels)."""
    pcm = (1).to_bytes(2, "little") + bytes.fromhex("000000001000800000aa00389b71")  # KSDATAFORMAT_SUBTYPE_PCM
    block = 2 * channels
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, 16000, 16000 * block, block, 16, 22, 16, 0) + pcm
    header = wav_header()
    return header[:12] + b"fmt " + len(fmt).to_bytes(4, "little") + fmt + header[-8:]


@pytest.mark.parametrize("header", [wav_header(channels=2), extensible_header(2)], ids=["pcm", "extensible"])
async def test_a_stereo_wav_is_mixed_to_mono_as_headerless_audio_is(header: bytes) -> None:
    """Review: a two-channel WAV header was refused (Azure's one-channel rule) though `channels`
    mixes headerless audio of up to 64 channels, and so was `WAVE_FORMAT_EXTENSIBLE`'s PCM: its
    channels and subformat are now taken from the header."""
    samples = fixture_16k(FIXTURE)
    stereo = pcm16(np.stack([samples, samples], axis=1).reshape(-1), 16000)
    async with running_daemon(idle_timeout_s=IDLE_S) as daemon:
        messages, code = await stream(url(daemon), header, *pcm_frames(stereo))
    assert same_words(EXPECTED[FIXTURE], finals(messages)) and code == 1001, messages


def chunked_header(*chunks: tuple[bytes, bytes]) -> bytes:
    """A streaming WAV header with `chunks` (kind, body) before its `fmt `, as some recorders write
    (Apple's `FLLR` filler, Broadcast WAV's `bext`)."""
    header = wav_header()
    extra = b"".join(kind + len(body).to_bytes(4, "little") + body + b"\x00" * (len(body) % 2) for kind, body in chunks)
    return header[:12] + extra + header[12:]


async def test_a_wav_header_split_across_messages_or_longer_than_the_first_one_is_read_whole() -> None:
    """Review: the header had to be whole in the first message: a file sent in 3200-byte chunks
    whose header holds a 4 KiB filler chunk before `data` (or a header cut in two) was refused."""
    data = chunked_header((b"FLLR", bytes(4040))) + audio()
    async with running_daemon(idle_timeout_s=IDLE_S) as daemon:
        messages, code = await stream(url(daemon), *pcm_frames(data, 3200))
        cut, cut_code = await stream(url(daemon), wav_header()[:20], wav_header()[20:], *pcm_frames(audio()))
    assert same_words(EXPECTED[FIXTURE], finals(messages)) and code == 1001, messages
    assert same_words(EXPECTED[FIXTURE], finals(cut)) and cut_code == 1001, cut


async def test_linear16_at_the_querys_rate_and_mulaw() -> None:
    """`input_format=linear16` is headerless PCM at `sample_rate`; `encoding=mulaw`, G.711 at 8 kHz."""
    linear = "transcription_engine=Deepgram&input_format=linear16&sample_rate=24000&model=deepgram/nova-3"
    async with running_daemon(idle_timeout_s=IDLE_S) as daemon:
        messages, code = await stream(url(daemon, linear), *pcm_frames(audio(24000), 4800))
        assert same_words(EXPECTED[FIXTURE], finals(messages)) and code == 1001, finals(messages)
        silence = b"\xff" * 16000  # 2 s of mu-law's digital silence: no speech, no error
        messages, code = await stream(url(daemon, "input_format=raw&encoding=mulaw&sample_rate=8000"), silence)
    assert of_type(messages, "transcript") == [] and errors(messages) == ["idle_timeout"] and code == 1001


async def test_interim_results_false_sends_finals_alone() -> None:
    async with running_daemon(idle_timeout_s=PACED_IDLE_S) as daemon:
        messages, _ = await stream(url(daemon, QUERY + "&interim_results=false"), paced=True)
    assert all(m["is_final"] for m in of_type(messages, "transcript"))
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)


async def test_language_keyterms_keywords_and_endpointing_reach_the_engine() -> None:
    """`language=en-US` is the decode's language, `auto` leaves it to the engine; each `keyterm`
    and the comma-separated `keywords` bias the decode; `endpointing` (ms) is the silence that ends
    an utterance."""
    engine = ContextRecordingEngineDouble()
    query = "language=en-US&keyterm=Aoife&keyterm=Zo%C3%AB&keywords=Calloway,%20Niamh&endpointing=600"
    async with running_daemon(engine, idle_timeout_s=IDLE_S) as daemon:
        messages, code = await stream(url(daemon, query))
        assert same_words(EXPECTED[FIXTURE], finals(messages)) and code == 1001
        names = list(engine.names)
        await stream(url(daemon, "language=auto"), wav_header(), *pcm_frames(audio()[:32000]))
    assert names and all(entry[:4] == ("Aoife", "Zoë", "Calloway", "Niamh") for entry in names), names
    assert set(engine.languages[: len(names)]) == {"en"} and engine.languages[-1] is None, engine.languages


@pytest.mark.parametrize(
    ("query", "parameter", "words"),
    [
        ("input_format=wav&diarize=true", "diarize", "unknown query parameter"),
        ("transcription_engine=whisper", "transcription_engine", "unknown transcription_engine"),
        ("model=nova-9", "model", "unknown model"),
        ("input_format=mp3", "input_format", "MP3"),
        ("input_format=linear32", "input_format", "32-bit"),
        ("input_format=opus", "input_format", "wav or linear16"),
        ("input_format=linear16", "sample_rate", "sample_rate is required"),
        ("input_format=linear16&sample_rate=4000", "sample_rate", "from 8000 to 48000"),
        ("input_format=linear16&sample_rate=16000&channels=0", "channels", "from 1 to 64"),
        ("encoding=opus", "encoding", "linear16, mulaw, alaw"),
        ("interim_results=maybe", "interim_results", "true or false"),
        ("endpointing=5", "endpointing", "from 100 to 10000"),
        ("language=fr", "language", "not one of the languages"),
        ("language=en&language=en", "language", "given 2 times"),
        ("redact=pci", "redact", "redaction"),
    ],
)
async def test_a_refused_query_is_an_error_naming_the_parameter_then_1008(
    query: str, parameter: str, words: str
) -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon, query), wav_header())
    assert [(m["type"], m["code"]) for m in messages] == [("error", "invalid_query_parameter")], messages
    assert messages[0]["error"].startswith(f"{parameter}: ") and words in messages[0]["error"], messages
    assert code == 1008


async def test_the_key_by_bearer_and_refusals_in_telnyxs_shape() -> None:
    """`Authorization: Bearer` (both clients' way); none or a wrong one: 401 at the upgrade with
    Telnyx's `{"errors": [{"code", "title", "detail"}]}`; a plain GET: 426."""
    async with running_daemon(api_key=KEY, idle_timeout_s=IDLE_S) as daemon:
        messages, code = await stream(url(daemon), headers=BEARER)
        assert same_words(EXPECTED[FIXTURE], finals(messages)) and code == 1001
        async with aiohttp.ClientSession() as http:
            refusals = [
                ({}, 401, "missing_api_key", "Unauthorized"),
                ({"Authorization": "Bearer wrong"}, 401, "invalid_api_key", "Unauthorized"),
                (BEARER, 426, "websocket_required", "Upgrade Required"),
            ]
            for headers, status, code_name, title in refusals:
                async with http.get(url(daemon).replace("ws", "http", 1), headers=headers) as response:
                    body = await response.json()
                    assert response.status == status, body
                    [error] = body["errors"]
                    assert (error["code"], error["title"]) == (code_name, title) and error["detail"], body


@pytest.mark.parametrize(
    ("first", "words"),
    [
        ('{"type": "start"}', "must be binary audio starting with its WAV header"),
        (b"\x00\x01" * 800, "must be binary audio starting with its WAV header"),
        (wav_header(channels=65), "cannot be taken"),
        (wav_header(tag=85, bits=0), "format 85"),
        (wav_header(tag=1, bits=8), "format 1, 8 bits"),
        (wav_header(rate=96000), "cannot be taken"),
        (b"RIFF\x00\x00\x00\x00WAVEdata\x00\x00\x00\x00", "no fmt chunk before its data"),
        (b"RIFF\x00\x00\x00\x00WAVEJUNK\xff\xff\xff\x7f" + bytes(70000), "no data chunk within its first 65536"),
    ],
)
async def test_a_wav_stream_whose_first_message_is_no_usable_header_is_refused_then_1008(
    first: str | bytes, words: str
) -> None:
    async with running_daemon() as daemon:
        messages, code = await stream(url(daemon), first, *pcm_frames(audio()[:6400]))
    assert errors(messages) == ["invalid_audio"] and words in messages[0]["error"] and code == 1008, messages


async def test_a_text_message_or_bad_audio_mid_stream_is_an_error_and_the_stream_goes_on() -> None:
    frames = pcm_frames(audio())
    async with running_daemon(idle_timeout_s=IDLE_S) as daemon:
        messages, code = await stream(
            url(daemon), wav_header(), *frames[:5], '{"type": "CloseStream"}', b"\x01", *frames[5:]
        )
    assert errors(messages) == ["invalid_message", "invalid_audio", "idle_timeout"], messages
    assert "binary audio alone" in of_type(messages, "error")[0]["error"]
    assert same_words(EXPECTED[FIXTURE], finals(messages)) and code == 1001, finals(messages)


async def test_no_header_within_the_first_message_timeout_is_an_error_then_1008() -> None:
    async with running_daemon(first_message_timeout_s=1) as daemon, websockets.connect(url(daemon)) as ws:
        messages = await read_all(ws)
    assert errors(messages) == ["timeout"] and ws.close_code == 1008, messages


async def test_a_header_whose_rest_does_not_come_is_an_error_then_1008() -> None:
    """A header's first part waits for the rest within `first_message_timeout_s`, no longer."""
    async with running_daemon(first_message_timeout_s=1) as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(wav_header()[:30])
        messages = await read_all(ws)
    assert errors(messages) == ["timeout"] and "rest of the WAV header" in messages[0]["error"], messages
    assert ws.close_code == 1008


async def test_over_max_sessions_is_a_server_busy_error_1013_and_the_open_session_goes_on() -> None:
    """A headerless stream's session opens at the upgrade, a WAV stream's at its header: either way
    the one over `max_sessions` gets `server_busy` and the Close 1013."""
    linear = "input_format=linear16&sample_rate=16000"
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0, idle_timeout_s=IDLE_S) as daemon,
        websockets.connect(url(daemon, linear)) as first,
    ):
        await first.send(audio()[:3200])
        refused, code = await stream(url(daemon), wav_header())
        for frame in pcm_frames(audio()[3200:]):
            await first.send(frame)
        messages = await read_all(first)
    assert errors(refused) == ["server_busy"] and code == 1013, refused
    assert same_words(EXPECTED[FIXTURE], finals(messages)) and first.close_code == 1001


async def test_a_message_over_1_mib_closes_1009() -> None:
    async with running_daemon() as daemon:
        code = await asyncio.to_thread(close_code_after_oversized_frame, daemon.http_port, telnyx.PATH, (1 << 20) + 2)
    assert code == 1009


async def test_shutdown_sends_the_finals_of_what_came_then_its_error_and_1001() -> None:
    data = audio()
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(wav_header())
        for frame in pcm_frames(data[: len(data) // 3]):
            await ws.send(frame)
        await asyncio.sleep(0.5)
        stopping = asyncio.create_task(daemon.stop())
        messages = await read_all(ws)
        await stopping
    assert finals(messages) and errors(messages) == ["shutdown"] and ws.close_code == 1001, messages


async def test_shutdown_closes_a_wav_stream_awaiting_its_header() -> None:
    async with running_daemon() as daemon, websockets.connect(url(daemon)) as ws:
        await asyncio.sleep(0.3)
        stopping = asyncio.create_task(daemon.stop())
        messages = await read_all(ws)
        await stopping
    assert errors(messages) == ["shutdown"] and ws.close_code == 1001, messages


async def test_two_decodes_at_once_keep_each_commands_partials_after_the_final_before_it() -> None:
    """The first command's final still decoding (gated) while the next is spoken: the next one's
    partials wait for it, since Telnyx's messages name no utterance."""
    engine = FirstFinalGatedEngineDouble()
    async with running_daemon(engine, idle_timeout_s=PACED_IDLE_S) as daemon, websockets.connect(url(daemon)) as ws:
        await ws.send(wav_header())
        for frame in pcm_frames(audio()):
            await ws.send(frame)
            await asyncio.sleep(0.1)
        engine.gate.set()
        messages = await read_all(ws)
    transcripts = of_type(messages, "transcript")
    assert same_words(EXPECTED[FIXTURE], finals(messages)), finals(messages)
    first_final = next(index for index, m in enumerate(transcripts) if m["is_final"])
    before = " ".join(m["transcript"] for m in transcripts[:first_final]).lower()
    assert "time" not in before and "garage" not in before, transcripts
