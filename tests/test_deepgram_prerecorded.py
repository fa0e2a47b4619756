"""Deepgram's pre-recorded API (`POST /v1/listen`) end to end: real daemon, real Silero, real
tiny.en; the deepgram-sdk's `transcribe_file`, LiveKit's `STT.recognize`, and raw requests for
every refusal."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import threading
import types
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
from deepgram.types.listen_v1response import ListenV1Response
from livekit import rtc
from livekit.agents import APIConnectOptions
from livekit.plugins import deepgram as lk_deepgram

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.engines.base import EngineStream, StreamOptions
from satellite_asr.engines.whisper import WhisperEngine
from satellite_asr.protocols import MESSAGE_CHARS, deepgram, deepgram_prerecorded
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble, GatedEngineDouble, SwitchesLanguageEngineDouble
from tests.helpers import (
    EXPECTED,
    FIXTURES,
    an_upload_holding_the_only_slot,
    daemon_settings,
    encoded_audio,
    eventually,
    expect_continue_answer,
    fixture_16k,
    pcm16,
    running_daemon,
    same_words,
)
from tests.test_deepgram_clients import KEY, sdk_client, validated

pytestmark = [
    pytest.mark.timeout(180),
    # the deepgram-sdk imports websockets' names that websockets 16 deprecates, even for REST
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:websockets.exceptions.InvalidStatusCode is deprecated:DeprecationWarning"),
]

FIXTURE = "three_commands.wav"
WAV = {"Content-Type": "audio/wav"}


def listen_url(daemon: Daemon, query: str = "") -> str:
    return f"http://127.0.0.1:{daemon.http_port}{deepgram.PATH}?{query}"


def fixture_bytes(name: str = FIXTURE) -> bytes:
    return (FIXTURES / name).read_bytes()


async def post(daemon: Daemon, query: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A raw `POST /v1/listen`: the status and the JSON answer."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(listen_url(daemon, query), data=body, headers=WAV if headers is None else headers) as response,
    ):
        return response.status, await response.json()


async def test_sdk_transcribe_file_gets_a_typed_response_with_words_and_utterances() -> None:
    data = fixture_bytes()
    async with running_daemon(api_key=KEY) as daemon, httpx.AsyncClient() as http:  # closed, unlike the SDK's own
        media = sdk_client(daemon, httpx_client=http).listen.v1.media
        response = await media.transcribe_file(request=data, model="nova-3", smart_format=True, utterances=True)
    assert isinstance(response, ListenV1Response)
    validated(response)
    metadata = response.metadata
    assert metadata.sha256 == hashlib.sha256(data).hexdigest()
    assert metadata.duration == pytest.approx(fixture_16k(FIXTURE).size / SAMPLE_RATE, abs=0.01)
    assert metadata.channels == 1 and metadata.models == list(metadata.model_info)
    [channel] = response.results.channels
    assert channel.alternatives is not None
    [alternative] = channel.alternatives
    utterances = response.results.utterances
    assert utterances is not None and same_words(EXPECTED[FIXTURE], [u.transcript or "" for u in utterances])
    assert alternative.transcript == " ".join(u.transcript or "" for u in utterances)
    assert alternative.words is not None
    assert [w.punctuated_word for w in alternative.words] == (alternative.transcript or "").split()
    assert [w.word for w in alternative.words] == " ".join(EXPECTED[FIXTURE]).split()
    spans = [(w.start, w.end) for w in alternative.words]
    assert spans == [(u.start, u.end) for u in utterances for _ in (u.transcript or "").split()]
    assert channel.detected_language is None, "reported only when detect_language asked for it"


async def test_livekit_recognize_transcribes_a_buffer() -> None:
    samples = pcm16(fixture_16k("lights_on.wav"), SAMPLE_RATE)
    frame = rtc.AudioFrame(samples, SAMPLE_RATE, 1, len(samples) // 2)
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        stt = lk_deepgram.STT(api_key=KEY, base_url=listen_url(daemon).rstrip("?"), http_session=http)
        event = await stt.recognize([frame], conn_options=APIConnectOptions(max_retry=0, timeout=10))
    [speech] = event.alternatives
    assert same_words(EXPECTED["lights_on.wav"], [speech.text])
    assert 0 < speech.start_time < speech.end_time <= len(samples) / 2 / SAMPLE_RATE
    assert speech.words is not None and " ".join(str(word) for word in speech.words) == speech.text


async def test_the_body_is_hashed_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """`metadata.sha256` costs a tenth of a second for a 25 MB file: on the event loop, every live
    stream would wait that long for its next frame. A spy on the `hashlib.sha256` the handler calls
    records its thread and calls it through."""
    threads: list[str] = []

    def sha256_spy(data: bytes) -> Any:
        threads.append(threading.current_thread().name)
        return hashlib.sha256(data)

    monkeypatch.setattr(deepgram_prerecorded, "hashlib", types.SimpleNamespace(sha256=sha256_spy))
    data = fixture_bytes("lights_on.wav")
    async with running_daemon() as daemon:
        status, answer = await post(daemon, "", data)
    assert status == 200 and answer["metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert threads and all(name.startswith("upload-decode") for name in threads), threads


class LanguageRecordingEngineDouble(WhisperEngine):
    """Real whisper that records the language each stream was opened with (None: detect it)."""

    def __init__(self) -> None:
        super().__init__()
        self.languages: list[str | None] = []

    def open_stream(self, options: StreamOptions) -> EngineStream:
        self.languages.append(options.language)
        return super().open_stream(options)


async def test_an_ogg_or_mp4_body_named_by_its_application_type_is_transcribed() -> None:
    """`application/ogg` and `application/mp4` are audio containers' registered types, as a sender's
    system may name an `.ogg` or `.m4a` file: the body is transcribed, not refused as not audio."""
    samples = fixture_16k("lights_on.wav")
    bodies = {
        "application/ogg": encoded_audio(samples, "ogg", "libopus", 48000),
        "application/mp4": encoded_audio(samples, "mp4", "aac", 16000),
    }
    async with running_daemon() as daemon:
        for media_type, body in bodies.items():
            status, answer = await post(daemon, "", body, {"Content-Type": media_type})
            assert status == 200, answer
            [alternative] = answer["results"]["channels"][0]["alternatives"]
            assert same_words(EXPECTED["lights_on.wav"], [alternative["transcript"]])


async def test_detect_language_lets_the_engine_detect_and_reports_what_it_heard() -> None:
    engine = LanguageRecordingEngineDouble()
    async with running_daemon(engine) as daemon:
        _, detected = await post(daemon, "detect_language=true", fixture_bytes("lights_on.wav"))
        _, multi = await post(daemon, "language=multi", fixture_bytes("lights_on.wav"))
        _, named = await post(daemon, "language=en", fixture_bytes("lights_on.wav"))
    assert engine.languages == [None, None, "en"]
    [channel] = detected["results"]["channels"]
    assert channel["detected_language"] == "en"
    assert same_words(EXPECTED["lights_on.wav"], [channel["alternatives"][0]["transcript"]])
    [alternative] = multi["results"]["channels"][0]["alternatives"]
    assert alternative["languages"] == ["en"] and {w["language"] for w in alternative["words"]} == {"en"}
    [fixed] = named["results"]["channels"]
    assert "detected_language" not in fixed and "languages" not in fixed["alternatives"][0]


async def test_with_language_multi_each_utterance_and_word_has_the_language_it_was_heard_in() -> None:
    """A file that switches language: each utterance, and each of its words, says its own; the
    alternative's `languages` lists every one, the most words first (as Deepgram's do)."""
    engine = SwitchesLanguageEngineDouble("de", "en")  # three_commands: German, English, German
    async with running_daemon(engine) as daemon:
        status, answer = await post(daemon, "language=multi&utterances=true", fixture_bytes())
    assert status == 200, answer
    utterances = answer["results"]["utterances"]
    assert [u["languages"] for u in utterances] == [["de"], ["en"], ["de"]]
    assert all(w["language"] == u["languages"][0] for u in utterances for w in u["words"])
    [alternative] = answer["results"]["channels"][0]["alternatives"]
    assert [w["language"] for w in alternative["words"]] == [w["language"] for u in utterances for w in u["words"]]
    assert alternative["languages"] == ["de", "en"]


async def test_keyterms_and_keywords_reach_the_engine_in_a_session_of_its_own_protocol() -> None:
    engine = ContextRecordingEngineDouble()
    query = "keyterm=Calloway%20blinds&keyterm=Aoife&keywords=Marigold:2.5"
    async with running_daemon(engine) as daemon:
        status, _ = await post(daemon, query, fixture_bytes("lights_on.wav"))
        metrics = daemon.core.metrics.render().decode()
    assert status == 200
    assert engine.names[-1][:3] == ("Calloway blinds", "Aoife", "Marigold")
    assert 'satellite_asr_sessions_total{protocol="deepgram-prerecorded"} 1.0' in metrics


async def test_a_transcription_cut_by_shutdown_is_deepgrams_503() -> None:
    engine = GatedEngineDouble()  # its finals never decode: the shutdown finds the upload in flight
    daemon = Daemon(daemon_settings(shutdown_timeout_s=2), engine)
    try:
        await daemon.start()
        await daemon.core.wait_ready()
        uploading = asyncio.create_task(post(daemon, "", fixture_bytes("lights_on.wav")))
        await eventually(lambda: bool(engine.finals))
    finally:
        await daemon.stop()
    status, answer = await uploading
    assert (status, answer["err_code"]) == (503, "shutdown"), answer


async def chunked(data: bytes) -> AsyncIterator[bytes]:
    """`data` as a chunked body: no Content-Length tells its size before it is read."""
    for offset in range(0, len(data), 64 * 1024):
        yield data[offset : offset + 64 * 1024]


async def test_every_refusal_is_deepgrams_error_body() -> None:
    over_a_megabyte = bytes(1024 * 1024 + 1)  # sent as BytesIO: aiohttp warns of a large body in bytes
    cases: list[tuple[str, Any, dict[str, str] | None, int, str]] = [
        ("colour=blue", fixture_bytes(), None, 400, "invalid_query_parameter"),
        ("utterances=maybe", fixture_bytes(), None, 400, "invalid_query_parameter"),
        ("utt_split=%D9%A1", fixture_bytes(), None, 400, "invalid_query_parameter"),  # Arabic-Indic 1
        ("language=xx", fixture_bytes(), None, 400, "invalid_query_parameter"),
        ("language=en&detect_language=true", fixture_bytes(), None, 400, "invalid_query_parameter"),
        ("diarize=true", fixture_bytes(), None, 400, "invalid_query_parameter"),
        ("summarize=v2", fixture_bytes(), None, 400, "invalid_query_parameter"),
        ("callback=http://example.com/", fixture_bytes(), None, 400, "invalid_query_parameter"),
        ("encoding=linear16", fixture_bytes(), None, 400, "invalid_query_parameter"),
        ("", b'{"url": "https://example.com/a.wav"}', {"Content-Type": "application/json"}, 400, "url_not_fetched"),
        ("", b"", None, 400, "invalid_file"),
        ("", b"these bytes are not audio", None, 400, "invalid_file"),
        ("", fixture_bytes(), {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ("", io.BytesIO(over_a_megabyte), None, 413, "file_too_large"),
        ("", chunked(over_a_megabyte), None, 413, "file_too_large"),
        ("", fixture_bytes(), {**WAV, "Authorization": "Token wrong"}, 401, "invalid_api_key"),
    ]
    answers = []
    async with running_daemon(api_key=KEY, max_upload_mb=1) as daemon:
        for query, body, headers, _, _ in cases:
            status, answer = await post(daemon, query, body, {"Authorization": f"Token {KEY}", **(headers or WAV)})
            assert answer["err_msg"] and answer["request_id"], answer
            answers.append((query, status, answer["err_code"]))
    assert answers == [(query, status, code) for query, _, _, status, code in cases]


async def test_a_parameter_error_names_the_parameter() -> None:
    async with running_daemon() as daemon:
        _, unknown = await post(daemon, "colour=blue", fixture_bytes())
        _, refused = await post(daemon, "paragraphs=true", fixture_bytes())
        _, long_language = await post(daemon, "language=" + "x" * 5000, fixture_bytes())
    assert unknown["err_msg"] == "colour: unknown query parameter 'colour'"
    assert refused["err_msg"].startswith("paragraphs: this server does not do paragraphs")
    message = long_language["err_msg"]
    assert message.startswith("language: 'xxx") and len(message) < MESSAGE_CHARS + 50, "the 5000 characters are cut"
    cut = re.search(r"\(cut: (\d+) characters\)$", message)
    assert cut and int(cut[1]) > 5000, "the cut says how long the message was, as the live API's does"


async def test_a_bad_query_is_refused_before_the_body_is_sent() -> None:
    """`Expect: 100-continue`: the refusal comes instead of the go-ahead, so the file is never sent."""
    async with running_daemon() as daemon:
        answer = await expect_continue_answer(
            daemon.http_port, target=f"{deepgram.PATH}?colour=blue", content_type="audio/wav"
        )
    assert answer == (400, "invalid_query_parameter")


async def test_uploads_to_either_api_share_one_cap() -> None:
    """An OpenAI upload whose body is still arriving holds the one slot of `max_uploads`: a Deepgram
    upload is told so (503, `Retry-After`) in Deepgram's body."""
    async with (
        running_daemon(max_uploads=1) as daemon,
        an_upload_holding_the_only_slot(daemon),
        aiohttp.ClientSession() as http,
        http.post(listen_url(daemon), data=fixture_bytes(), headers=WAV) as response,
    ):
        answer = await response.json()
    assert response.status == 503 and response.headers["Retry-After"] == "5"
    assert answer["err_code"] == "too_many_connections" and "max_uploads" in answer["err_msg"]
