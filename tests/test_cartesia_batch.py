"""Cartesia's batch speech-to-text API (`POST /stt`) end to end: real daemon, real Silero, real
tiny.en; the real SDK (`stt.transcribe`) for what it sends, a raw form for what it would not."""

from __future__ import annotations

from typing import Any

import aiohttp
import numpy as np
import pytest
from cartesia import AsyncCartesia, BadRequestError
from cartesia.types import STTTranscribeResponse

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.protocols import cartesia_batch
from satellite_asr.server import Daemon
from tests.helpers import EXPECTED, FIXTURES, an_upload_holding_the_only_slot, fixture_16k, pcm16, running_daemon

pytestmark = pytest.mark.timeout(180)

KEY = "cartesia-test-key"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sdk(daemon: Daemon) -> AsyncCartesia:
    return AsyncCartesia(api_key=KEY, base_url=f"http://127.0.0.1:{daemon.http_port}")


async def post(
    daemon: Daemon, fields: list[tuple[str, str]], file: bytes | None, query: str = ""
) -> tuple[int, dict[str, Any]]:
    """A raw multipart form to `/stt`: its status and JSON body."""
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields:
        data.add_field(name, value)
    if file is not None:
        data.add_field("file", file, filename="audio.wav")
    url = f"http://127.0.0.1:{daemon.http_port}{cartesia_batch.PATH}?{query}"
    async with aiohttp.ClientSession() as http, http.post(url, data=data, headers={"X-API-Key": KEY}) as response:
        return response.status, await response.json()


async def test_sdk_transcribes_a_file_with_its_words() -> None:
    """The SDK's `transcribe` with word timestamps: the commands' text, the language, the file's
    duration, and each word spanning its utterance, in order."""
    async with running_daemon(api_key=KEY) as daemon, sdk(daemon) as client:
        result = await client.stt.transcribe(
            file=("three_commands.wav", fixture_bytes("three_commands.wav")),
            model="ink-whisper",
            language="en",
            timestamp_granularities=["word"],
        )
    assert isinstance(result, STTTranscribeResponse) and result.type == "transcript" and result.request_id
    assert result.language == "en"
    seconds = fixture_16k("three_commands.wav").size / SAMPLE_RATE
    assert result.duration is not None and abs(result.duration - seconds) < 0.1
    expected = " ".join(EXPECTED["three_commands.wav"]).split()
    assert [w.word.strip(".?").lower() for w in result.words or []] == expected
    assert result.text.split() == [w.word for w in result.words or []]
    previous_end = 0.0
    for word in result.words or []:
        assert previous_end <= word.start <= word.end <= seconds + 0.1
        previous_end = word.start


@pytest.mark.parametrize("setting", [None, "en"], ids=["no language setting", "language en"])
async def test_without_word_timestamps_there_are_no_words_and_the_language_is_the_daemons(setting: str | None) -> None:
    """No `timestamp_granularities[]`: no `words`; no `language`: the daemon's `language` setting,
    else the language the engine detected (tiny.en's is English)."""
    async with running_daemon(api_key=KEY, language=setting) as daemon:
        status, body = await post(daemon, [("model", "ink-whisper")], fixture_bytes("lights_on.wav"))
        assert daemon.settings.default_language == setting
    assert status == 200 and "words" not in body and body["language"] == "en"
    assert body["text"].lower().strip(".").startswith("turn")


@pytest.mark.parametrize(
    ("encoding", "rate"),
    [("pcm_s16le", 16000), ("pcm_s16le", 8000), ("pcm_f32le", 24000), ("pcm_mulaw", 8000), ("pcm_alaw", 8000)],
)
async def test_headerless_pcm_of_the_querys_encoding_and_rate(encoding: str, rate: int) -> None:
    samples = fixture_16k("lights_on.wav")
    resampled = np.interp(np.arange(0, len(samples), 16000 / rate), np.arange(len(samples)), samples)
    data = pcm16(samples, rate) if encoding != "pcm_f32le" else resampled.astype("<f4").tobytes()
    if encoding in ("pcm_mulaw", "pcm_alaw"):
        audioop = pytest.importorskip("audioop")  # the reference G.711 encoder (Python <= 3.12)
        data = (audioop.lin2ulaw if encoding == "pcm_mulaw" else audioop.lin2alaw)(data, 2)
    async with running_daemon(api_key=KEY) as daemon, sdk(daemon) as client:
        result = await client.stt.transcribe(
            file=("audio.raw", data), model="ink-whisper", encoding=encoding, sample_rate=rate
        )
    assert result.text.lower().startswith("turn") and result.duration is not None
    assert abs(result.duration - samples.size / SAMPLE_RATE) < 0.1


async def test_the_api_version_in_the_query_is_taken_as_on_the_streams() -> None:
    """`cartesia_version`, Cartesia's API version where a client sends no header (a browser): any
    version, as on `/stt/websocket`, not an unknown parameter."""
    async with running_daemon(api_key=KEY) as daemon:
        query = "cartesia_version=2026-03-01"
        status, body = await post(daemon, [("model", "ink-whisper")], fixture_bytes("lights_on.wav"), query)
    assert status == 200 and body["text"].lower().startswith("turn"), body


async def test_the_sdk_raises_a_refusal_with_cartesias_body() -> None:
    async with running_daemon(api_key=KEY) as daemon, sdk(daemon) as client:
        with pytest.raises(BadRequestError) as refused:
            await client.stt.transcribe(
                file=("three_commands.wav", fixture_bytes("three_commands.wav")), model="ink-whisper", language="de"
            )
    body = refused.value.body
    assert isinstance(body, dict) and body["error_code"] == "unsupported_language"
    assert body["message"].startswith("language: ") and body["title"] and body["request_id"]


@pytest.mark.parametrize(
    ("fields", "query", "file", "code", "named"),
    [
        ([], "", "lights_on.wav", "invalid_value", "model"),
        ([("model", "ink-whisper")], "", None, "invalid_value", "file"),
        (
            [("model", "ink-whisper"), ("timestamp_granularities[]", "segment")],
            "",
            "lights_on.wav",
            "invalid_value",
            "timestamp_granularities[]",
        ),
        ([("model", "ink-whisper"), ("prompt", "Calloway")], "", "lights_on.wav", "invalid_value", "prompt"),
        ([("model", "ink-whisper"), ("model", "ink-2")], "", "lights_on.wav", "invalid_value", "model"),
        ([("model", "ink-whisper")], "encoding=pcm_s16le", "lights_on.wav", "invalid_value", "sample_rate"),
        ([("model", "ink-whisper")], "sample_rate=16000", "lights_on.wav", "invalid_value", "encoding"),
        (
            [("model", "ink-whisper")],
            "encoding=pcm_s32le&sample_rate=16000",
            "lights_on.wav",
            "invalid_value",
            "encoding",
        ),
        (
            [("model", "ink-whisper")],
            "encoding=pcm_s16le&sample_rate=2",
            "lights_on.wav",
            "invalid_value",
            "sample_rate",
        ),
        ([("model", "ink-whisper")], "diarize=true", "lights_on.wav", "invalid_value", "diarize"),
        ([("model", "ink-whisper")], "encoding=pcm_f32le&sample_rate=16000", "odd", "invalid_file", "file"),
        ([("model", "ink-whisper")], "", "not audio", "invalid_file", ""),
    ],
    ids=[
        "no model",
        "no file",
        "a granularity not word",
        "an unknown field",
        "a field twice",
        "encoding without sample_rate",
        "sample_rate without encoding",
        "pcm_s32le",
        "a rate out of range",
        "an unknown query parameter",
        "not whole samples",
        "not audio",
    ],
)
async def test_a_bad_request_is_a_400_in_cartesias_body_naming_what_is_wrong(
    fields: list[tuple[str, str]], query: str, file: str | None, code: str, named: str
) -> None:
    content = {None: None, "odd": bytes(6), "not audio": b"this is not audio"}.get(file)
    if file is not None and file not in ("odd", "not audio"):
        content = fixture_bytes(file)
    async with running_daemon(api_key=KEY) as daemon:
        status, body = await post(daemon, fields, content, query)
        counted = daemon.core.metrics.errors.labels(code)._value.get()
    assert status == 400 and body["error_code"] == code and counted == 1, body
    assert body["message"].startswith(f"{named}: " if named else ""), body
    assert set(body) == {"error_code", "title", "message", "request_id"}


async def test_uploads_to_any_api_share_one_cap() -> None:
    """An OpenAI upload whose body is still arriving holds the one slot of `max_uploads`: a Cartesia
    upload is told so (503, `Retry-After`) in Cartesia's body."""
    async with running_daemon(max_uploads=1) as daemon, an_upload_holding_the_only_slot(daemon):
        status, body = await post(daemon, [("model", "ink-whisper")], fixture_bytes("lights_on.wav"))
    assert status == 503 and body["error_code"] == "too_many_connections" and "max_uploads" in body["message"]


async def test_a_wrong_key_is_a_401_in_cartesias_body() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        url = f"http://127.0.0.1:{daemon.http_port}{cartesia_batch.PATH}"
        async with aiohttp.ClientSession() as http, http.post(url, headers={"X-API-Key": "wrong"}) as response:
            body = await response.json()
    assert response.status == 401 and body["error_code"] == "invalid_api_key" and body["title"]
