"""ElevenLabs' batch speech-to-text API (`POST /v1/speech-to-text`) end to end: real daemon, real
Silero, real tiny.en; the elevenlabs SDK's `speech_to_text.convert`, LiveKit's `STT.recognize`,
Pipecat's `ElevenLabsSTTService`, and raw requests for every refusal."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
from typing import Any

import aiohttp
import httpx
import pytest
from elevenlabs import AsyncElevenLabs
from elevenlabs.core.api_error import ApiError
from elevenlabs.types import SpeechToTextChunkResponseModel
from livekit import rtc
from livekit.agents import APIConnectOptions
from livekit.plugins import elevenlabs as lk_elevenlabs
from multidict import MultiDict
from pipecat.services.elevenlabs.stt import ElevenLabsSTTService

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.config import Settings
from satellite_asr.core import Core
from satellite_asr.engines.whisper import WhisperEngine
from satellite_asr.events import FinalTranscript
from satellite_asr.protocols import elevenlabs_upload
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble, GatedEngineDouble
from tests.helpers import (
    EXPECTED,
    FIXTURES,
    an_upload_holding_the_only_slot,
    curl_peak_memory,
    daemon_settings,
    eventually,
    expect_continue_answer,
    fixture_16k,
    pcm16,
    running_daemon,
    same_words,
)
from tests.test_deepgram_clients import validated
from tests.test_docs import ROOT
from tests.test_pipecat import running_pipeline, speak

pytestmark = pytest.mark.timeout(180)

KEY = "elevenlabs-test-key"
FIXTURE = "three_commands.wav"


def base_url(daemon: Daemon) -> str:
    return f"http://127.0.0.1:{daemon.http_port}"


def fixture_bytes(name: str = FIXTURE) -> bytes:
    return (FIXTURES / name).read_bytes()


@contextlib.asynccontextmanager
async def sdk(daemon: Daemon, api_key: str = KEY) -> Any:
    """The SDK's client on the daemon, on an HTTP client the test closes."""
    async with httpx.AsyncClient(timeout=60) as http:
        yield AsyncElevenLabs(api_key=api_key, base_url=base_url(daemon), httpx_client=http).speech_to_text


def form(fields: list[tuple[str, str]], file: bytes | io.BytesIO | None) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields:
        data.add_field(name, value)
    if file is not None:
        data.add_field("file", file, filename="audio.wav", content_type="audio/wav")
    return data


async def post(
    daemon: Daemon,
    fields: list[tuple[str, str]],
    file: bytes | io.BytesIO | None = None,
    query: str = "",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """A raw `POST /v1/speech-to-text` of a form: the status and the JSON answer."""
    url = f"{base_url(daemon)}{elevenlabs_upload.PATH}?{query}"
    async with aiohttp.ClientSession() as http, http.post(url, data=form(fields, file), headers=headers) as response:
        return response.status, await response.json()


async def test_sdk_convert_gets_a_typed_transcript_with_words_and_spacing() -> None:
    async with running_daemon(api_key=KEY) as daemon, sdk(daemon) as stt:
        response = await stt.convert(file=("three.wav", fixture_bytes(), "audio/wav"), model_id="scribe_v2")
    assert isinstance(response, SpeechToTextChunkResponseModel)
    validated(response)
    assert same_words([" ".join(EXPECTED[FIXTURE])], [response.text])
    words = [word for word in response.words if word.type == "word"]
    assert [word.text for word in words] == response.text.split()
    assert "".join(word.text for word in response.words) == response.text, "spacing entries between the words"
    assert response.audio_duration_secs is not None
    assert all(0 <= word.start < word.end <= response.audio_duration_secs for word in response.words)
    assert len({(word.start, word.end) for word in words}) == 3, "each word spans its utterance, one of three"
    assert all(word.logprob <= 0 and word.speaker_id is None for word in words), "0: the engine did not say"
    assert response.language_code == "eng"
    assert response.audio_duration_secs == pytest.approx(fixture_16k(FIXTURE).size / SAMPLE_RATE, abs=0.01)
    assert response.transcription_id


async def test_a_named_language_is_certain_and_a_detected_one_not_measured() -> None:
    """`language_probability` is 1 when the file was decoded in a language named (ISO 639-3 `eng`
    as Pipecat sends it; one language named twice, in either code, is one), and 0 (not measured)
    when the engine detected it (the daemon's `language` unset); `language_code` in three letters."""
    engine = ContextRecordingEngineDouble()
    data = fixture_bytes("lights_on.wav")
    async with running_daemon(engine) as daemon, sdk(daemon) as stt:
        named = await stt.convert(file=data, model_id="scribe_v1", language_code="eng")
        detected = await stt.convert(file=data, model_id="scribe_v1")
        twice = await stt.convert(file=data, model_id="scribe_v1", language_code="en", secondary_language_codes=["eng"])
    assert engine.languages == ["en", None, "en"]
    assert (twice.language_code, twice.language_probability) == ("eng", 1.0)
    assert (named.language_code, named.language_probability) == ("eng", 1.0)
    assert (detected.language_code, detected.language_probability) == ("eng", 0.0)


@pytest.mark.parametrize(
    ("fields", "language"),
    [
        ([("language_code", "en"), ("secondary_language_codes", "de")], None),
        ([("language_code", "deu"), ("secondary_language_codes", "de")], "de"),
        ([("secondary_language_codes", "fra"), ("secondary_language_codes", "deu")], None),
        ([("language_code", "fil")], "tl"),
    ],
)
def test_several_languages_named_let_the_engine_detect(fields: list[tuple[str, str]], language: str | None) -> None:
    multilingual = WhisperEngine(model="small")  # its languages are known before it loads (it is not loaded)
    form = MultiDict([("model_id", "scribe_v2"), *fields])
    parsed = elevenlabs_upload.parse_form(b"RIFF", form, Core(daemon_settings(), multilingual))
    assert parsed.options.language == language


async def test_character_timestamps_and_none() -> None:
    data = fixture_bytes("lights_on.wav")
    async with running_daemon() as daemon, sdk(daemon) as stt:
        characters = await stt.convert(file=data, model_id="scribe_v2", timestamps_granularity="character")
        bare = await stt.convert(file=data, model_id="scribe_v2", timestamps_granularity="none")
    for word in characters.words:
        assert word.type == "spacing" or "".join(c.text for c in word.characters or []) == word.text
    assert bare.words == [] and same_words(EXPECTED["lights_on.wav"], [bare.text])


async def test_sdk_with_a_wrong_key_gets_401_with_the_daemons_message() -> None:
    async with running_daemon(api_key=KEY) as daemon, sdk(daemon, api_key="wrong") as stt:
        with pytest.raises(ApiError) as refused:
            await stt.convert(file=fixture_bytes("lights_on.wav"), model_id="scribe_v2")
    assert refused.value.status_code == 401
    assert refused.value.body["detail"]["status"] == "invalid_api_key"
    assert refused.value.body["detail"]["message"]


async def test_keyterms_reach_the_engine_in_a_session_of_its_own_protocol() -> None:
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine) as daemon, sdk(daemon) as stt:
        response = await stt.convert(
            file=fixture_bytes("lights_on.wav"), model_id="scribe_v2", keyterms=["Calloway blinds", "Aoife"]
        )
        metrics = daemon.core.metrics.render().decode()
    assert same_words(EXPECTED["lights_on.wav"], [response.text])
    assert engine.names[-1][:2] == ("Calloway blinds", "Aoife")
    assert 'satellite_asr_sessions_total{protocol="elevenlabs-upload"} 1.0' in metrics


async def test_headerless_pcm_is_transcribed() -> None:
    pcm = pcm16(fixture_16k("lights_on.wav"), SAMPLE_RATE)
    async with running_daemon() as daemon, sdk(daemon) as stt:
        response = await stt.convert(file=pcm, model_id="scribe_v2", file_format="pcm_s16le_16")
    assert same_words(EXPECTED["lights_on.wav"], [response.text])
    assert response.audio_duration_secs == pytest.approx(len(pcm) / 2 / SAMPLE_RATE, abs=0.01)


async def test_livekit_recognize_transcribes_a_buffer() -> None:
    samples = pcm16(fixture_16k("lights_on.wav"), SAMPLE_RATE)
    frame = rtc.AudioFrame(samples, SAMPLE_RATE, 1, len(samples) // 2)
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        stt = lk_elevenlabs.STT(api_key=KEY, base_url=f"{base_url(daemon)}/v1", http_session=http)
        event = await stt.recognize([frame], conn_options=APIConnectOptions(max_retry=0, timeout=10))
    [speech] = event.alternatives
    assert same_words(EXPECTED["lights_on.wav"], [speech.text])
    assert 0 <= speech.start_time < speech.end_time <= len(samples) / 2 / SAMPLE_RATE


async def test_livekit_recognize_reads_the_daemons_refusal() -> None:
    samples = pcm16(fixture_16k("lights_on.wav"), SAMPLE_RATE)
    frame = rtc.AudioFrame(samples, SAMPLE_RATE, 1, len(samples) // 2)
    async with running_daemon() as daemon, aiohttp.ClientSession() as http:
        stt = lk_elevenlabs.STT(
            api_key=KEY, base_url=f"{base_url(daemon)}/v1", http_session=http, keyterms=["x" * 5000]
        )
        with pytest.raises(Exception, match="max_context_chars") as refused:
            await stt.recognize([frame], conn_options=APIConnectOptions(max_retry=0, timeout=10))
    assert getattr(refused.value, "status_code", None) == 400


async def test_pipecat_stt_service_transcribes_each_segment_its_vad_cut() -> None:
    """Each segment Pipecat's VAD cut, posted as a WAV file with `language_code=eng` (Pipecat names
    languages by ISO 639-3)."""
    async with (
        running_daemon(api_key=KEY) as daemon,
        aiohttp.ClientSession() as http,
    ):
        stt = ElevenLabsSTTService(api_key=KEY, aiohttp_session=http, base_url=base_url(daemon))
        async with running_pipeline(stt) as (worker, frames):
            await speak(worker, FIXTURE)
            await frames.wait_for(finals=3)
    assert frames.errors == []
    assert same_words(EXPECTED[FIXTURE], frames.finals)


REFUSALS: list[tuple[str, list[tuple[str, str]], str, int, str]] = [
    ("", [], "file", 400, "invalid_value"),  # no model_id
    ("", [("model_id", "scribe_v2")], "none", 400, "invalid_value"),  # no file
    ("", [("model_id", "scribe_v2"), ("colour", "blue")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("model_id", "scribe_v1")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("source_url", "http://192.168.1.1/a.wav")], "none", 400, "url_not_fetched"),
    ("", [("model_id", "scribe_v2"), ("cloud_storage_url", "https://x/a.wav")], "none", 400, "url_not_fetched"),
    ("", [("model_id", "scribe_v2"), ("diarize", "true")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("diarize", "maybe")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("diarization_threshold", "0.3")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("num_speakers", "33")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("use_multi_channel", "true")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("webhook", "true")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("webhook_id", "w1")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("webhook_metadata", '{"job": 1}')], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("entity_detection", '"all"')], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("entity_redaction", '"pii"')], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("entity_redaction_mode", "redacted")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("transcript_edit", "shorter")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("additional_formats", '[{"format": "srt"}]')], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("detect_speaker_roles", "true")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("use_speaker_library", "true")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("timestamps_granularity", "segment")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("file_format", "mp3")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("temperature", "2.5")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("seed", "-1")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("numbers_format", "roman")], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("language_code", "xx")], "file", 400, "unsupported_language"),
    ("", [("model_id", "scribe_v2"), ("secondary_language_codes", "xx")], "file", 400, "unsupported_language"),
    ("", [("model_id", "scribe_v2"), ("keyterms", "x" * 5000)], "file", 400, "context_too_long"),
    ("", [("model_id", "scribe_v2"), *[("keyterms", "Aoife")] * 301], "file", 400, "context_too_long"),
    ("", [("model_id", "scribe_v2"), *[("secondary_language_codes", "en")] * 21], "file", 400, "invalid_value"),
    ("", [("model_id", "scribe_v2"), ("file_format", "pcm_s16le_16")], "odd", 400, "invalid_file"),
    ("", [("model_id", "scribe_v2")], "not audio", 400, "invalid_file"),
    ("", [("model_id", "scribe_v2")], "over", 413, "file_too_large"),
    ("token=abc", [("model_id", "scribe_v2")], "file", 400, "invalid_value"),
    ("enable_logging=maybe", [("model_id", "scribe_v2")], "file", 400, "invalid_value"),
    ("colour=blue", [("model_id", "scribe_v2")], "file", 400, "invalid_value"),
]
"""Query, form fields, which file, and the status and code of the refusal."""
FILES = {
    "file": fixture_bytes("lights_on.wav"),
    "none": None,
    "odd": bytes(3),
    "not audio": b"\x00these bytes are not audio",
    "over": bytes(1024 * 1024 + 1),  # sent as BytesIO: aiohttp refuses a large body in bytes
}


@pytest.mark.parametrize(("query", "fields", "file", "status", "code"), REFUSALS)
async def test_every_refusal_is_elevenlabs_error_body(
    query: str, fields: list[tuple[str, str]], file: str, status: int, code: str
) -> None:
    async with running_daemon(max_upload_mb=1) as daemon:
        body = FILES[file]
        answered, answer = await post(daemon, fields, io.BytesIO(body) if file == "over" else body, query)
    detail = answer["detail"]
    assert (answered, detail["status"]) == (status, code), detail
    assert detail["message"]


async def test_a_refusal_names_the_field_and_the_feature() -> None:
    async with running_daemon() as daemon:
        _, unknown = await post(daemon, [("model_id", "scribe_v2"), ("colour", "blue")], fixture_bytes())
        _, diarize = await post(daemon, [("model_id", "scribe_v2"), ("diarize", "true")], fixture_bytes())
        _, url = await post(daemon, [("model_id", "scribe_v2"), ("source_url", "http://nas.local/a.wav")])
    assert unknown["detail"]["message"].startswith("unknown field 'colour'; this server reads")
    assert diarize["detail"]["message"].startswith("this server does not do speaker diarization; leave diarize")
    assert "does not fetch audio from a URL (source_url)" in url["detail"]["message"]


async def test_the_sdks_null_fields_and_false_features_are_accepted() -> None:
    """The SDK sends `webhook_metadata`, `entity_detection` and `entity_redaction` as JSON `null`
    whatever the caller asked; a feature set to false asks for nothing."""
    fields = [
        ("model_id", "scribe_v2"),
        ("webhook_metadata", "null"),
        ("entity_detection", "null"),
        ("entity_redaction", "null"),
        ("diarize", "false"),
        ("webhook", "false"),
        ("use_multi_channel", "false"),
        ("tag_audio_events", "true"),
        ("no_verbatim", "true"),
        ("num_speakers", "2"),
        ("temperature", "0.5"),
        ("seed", "7"),
        ("numbers_format", "digits"),
    ]
    async with running_daemon() as daemon:
        status, answer = await post(daemon, fields, fixture_bytes("lights_on.wav"), "enable_logging=false")
    assert status == 200, answer
    assert same_words(EXPECTED["lights_on.wav"], [answer["text"]])


async def test_a_bad_query_is_refused_before_the_body_is_sent() -> None:
    """`Expect: 100-continue`: the refusal comes instead of the go-ahead, so the file is never sent."""
    async with running_daemon() as daemon:
        answer = await expect_continue_answer(daemon.http_port, target=f"{elevenlabs_upload.PATH}?token=abc")
    assert answer == (400, "invalid_value")


async def test_uploads_to_any_api_share_one_cap() -> None:
    """An OpenAI upload whose body is still arriving holds the one slot of `max_uploads`: an
    ElevenLabs upload is told so (503, `Retry-After`) in ElevenLabs' body."""
    async with running_daemon(max_uploads=1) as daemon, an_upload_holding_the_only_slot(daemon):
        url = f"{base_url(daemon)}{elevenlabs_upload.PATH}"
        data = form([("model_id", "scribe_v2")], fixture_bytes("lights_on.wav"))
        async with aiohttp.ClientSession() as http, http.post(url, data=data) as response:
            answer = await response.json()
    assert response.status == 503 and response.headers["Retry-After"] == "5"
    assert answer["detail"]["status"] == "too_many_connections" and "max_uploads" in answer["detail"]["message"]


async def test_a_transcription_cut_by_shutdown_is_a_503() -> None:
    engine = GatedEngineDouble()  # its finals never decode: the shutdown finds the upload in flight
    daemon = Daemon(daemon_settings(shutdown_timeout_s=2), engine)
    try:
        await daemon.start()
        await daemon.core.wait_ready()
        uploading = asyncio.create_task(post(daemon, [("model_id", "scribe_v2")], fixture_bytes("lights_on.wav")))
        await eventually(lambda: bool(engine.finals))
    finally:
        await daemon.stop()
    status, answer = await uploading
    assert (status, answer["detail"]["status"]) == (503, "shutdown"), answer


async def test_a_keyterm_too_long_to_read_is_context_too_long_as_a_long_one_is() -> None:
    """A keyterms part over the 64 KB a text field may hold is over `max_context_chars` as surely as
    one of 5000 characters: the same 400 `context_too_long` the docs' table names, not `invalid_value`."""
    async with running_daemon() as daemon:
        status, answer = await post(daemon, [("model_id", "scribe_v2"), ("keyterms", "x" * 70_000)], fixture_bytes())
    assert (status, answer["detail"]["status"]) == (400, "context_too_long"), answer
    assert "max_context_chars" in answer["detail"]["message"]


def test_the_words_and_spacing_joined_are_the_text_whatever_the_finals_spacing() -> None:
    """docs/elevenlabs.md: the entries' texts joined are `text`. A final whose text holds a run of
    spaces, a tab or a line break (Whisper's segments joined), or a final of no words between two
    (a noise), must not make them differ."""
    finals = [
        FinalTranscript(1, " Turn  off\tthe lights.\n", True, 0.2, 2.2, "en", "silence", -0.25),
        FinalTranscript(2, "", True, 2.6, 2.8, "en", "silence", None),
        FinalTranscript(3, "What time\nis it?", True, 3.0, 4.0, "en", "silence", None),
    ]
    parsed = elevenlabs_upload.parse_form(b"RIFF", MultiDict([("model_id", "scribe_v2")]), Core(daemon_settings()))
    body = elevenlabs_upload.response_body(finals, 4.5, parsed)
    assert "".join(entry["text"] for entry in body["words"]) == body["text"], body["text"]
    assert [entry["text"] for entry in body["words"] if entry["type"] == "word"] == body["text"].split()


@pytest.mark.parametrize(
    ("setting", "fields", "language"),
    [
        ("", [("secondary_language_codes", "de")], None),
        ("en", [("secondary_language_codes", "de")], None),
        ("en", [("secondary_language_codes", "eng")], "en"),
        ("en", [], "en"),
    ],
)
def test_secondary_languages_alone_are_spoken_alongside_the_main_one_not_instead(
    setting: str, fields: list[tuple[str, str]], language: str | None
) -> None:
    """ElevenLabs: `secondary_language_codes` are languages that may be present *alongside*
    `language_code`, which absent is detected (here: the `language` setting, or detection). A lone
    secondary language is not the file's language: German named as a secondary language must not
    make an English file (the setting's `en`, or one the engine detects) be decoded as German."""
    multilingual = WhisperEngine(model="small")
    form = MultiDict([("model_id", "scribe_v2"), *fields])
    parsed = elevenlabs_upload.parse_form(b"RIFF", form, Core(daemon_settings(language=setting), multilingual))
    assert parsed.options.language == language


async def test_headerless_pcm_is_held_in_memory_once(tmp_path: Any) -> None:
    """`pcm_s16le_16` audio is read as it came, not copied into a WAV file beside it: held once, as
    every upload's file is (test_openai_rest's `test_an_uploaded_file_is_held_in_memory_once`).
    Measured with tracemalloc over the request, from curl (another process); the audio is longer
    than `max_upload_audio_s`, so the request ends once the file is read and opened."""
    size = 25 * (1 << 20)
    path = tmp_path / "upload.raw"
    path.write_bytes(bytes(size))
    out = tmp_path / "body.json"
    async with running_daemon(max_upload_audio_s=10) as daemon:
        peak = await curl_peak_memory(
            "--expect100-timeout", "30", "-F", "model_id=scribe_v2", "-F", "file_format=pcm_s16le_16",
            "-F", f"file=@{path}", "-o", str(out), f"{base_url(daemon)}{elevenlabs_upload.PATH}",
        )  # fmt: skip
    answer = json.loads(out.read_bytes())
    assert answer["detail"]["status"] == "audio_too_long", answer
    assert "819 s" in answer["detail"]["message"], "its length known from its size, before decoding"
    assert peak < 1.3 * size, f"{peak / size:.2f} times the file"


UPLOAD_PATHS = ("/v1/audio/transcriptions", "/v1/listen", elevenlabs_upload.PATH, "/stt")


@pytest.mark.parametrize("setting", ["max_upload_mb", "max_upload_audio_s", "max_uploads"])
def test_the_upload_limits_help_names_every_upload_api(setting: str) -> None:
    """Each of these limits every upload API alike (`Uploads`): its help, which `serve --help` and
    config.example.yaml show, must not say it is OpenAI's alone."""
    [field] = [f for f in dataclasses.fields(Settings) if f.name == setting]
    assert all(path in field.metadata["help"] for path in UPLOAD_PATHS), field.metadata["help"]


def test_security_md_counts_the_elevenlabs_upload_under_max_uploads() -> None:
    """docs/security.md's caps table says which uploads share `max_uploads` and in whose error body
    a refusal comes."""
    security = (ROOT / "docs/security.md").read_text()
    row = next(line for line in security.splitlines() if "`max_uploads` (8)" in line)
    assert f"POST {elevenlabs_upload.PATH}" in row and "ElevenLabs'" in row, row
    routes = security.split("| port (default) |")[1].split("\n\n")[0]
    assert f"`POST {elevenlabs_upload.PATH}`" in routes, "the routes table lists the upload and its URL refusal"
    closing = security.split("**An upload whose Content-Length is shorter than its body.**")[1].split("\n\n")[0]
    assert elevenlabs_upload.PATH in closing, "its refusals close the connection as the other uploads' do"


async def test_the_json_fields_asking_for_nothing_are_accepted_as_the_docs_say() -> None:
    """docs/elevenlabs.md's field table: `webhook_metadata`, `entity_detection`, `entity_redaction`
    and `additional_formats` are refused unless empty, JSON `null` or `[]`."""
    fields = [
        ("model_id", "scribe_v2"),
        ("webhook_metadata", "[]"),
        ("entity_detection", ""),
        ("entity_redaction", "[]"),
        ("additional_formats", "null"),
    ]
    async with running_daemon() as daemon:
        status, answer = await post(daemon, fields, fixture_bytes("lights_on.wav"))
    assert status == 200, answer


async def test_a_refusal_before_the_uploads_own_checks_keeps_the_connection_and_the_uploads_close_it() -> None:
    """docs/elevenlabs.md: every refusal but the 401 closes the connection; the 401, like a 403 of
    `allowed_origins`, keeps it (without `Expect: 100-continue`). All in ElevenLabs' body."""
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        url = f"{base_url(daemon)}{elevenlabs_upload.PATH}"
        answers = []
        for headers, fields in [
            ({"xi-api-key": "wrong"}, [("model_id", "scribe_v2")]),
            ({"xi-api-key": KEY, "Origin": "http://evil.example"}, [("model_id", "scribe_v2")]),
            ({"xi-api-key": KEY}, [("model_id", "scribe_v2"), ("diarize", "true")]),
        ]:
            data = form(fields, fixture_bytes("lights_on.wav"))
            async with http.post(url, data=data, headers=headers) as response:
                answers.append((response.status, response.headers.get("Connection", ""), await response.json()))
    [(unauthorized, kept, body), (forbidden, kept_too, body_too), (refused, closed, _)] = answers
    assert (unauthorized, forbidden, refused) == (401, 403, 400)
    assert body["detail"]["status"] == "invalid_api_key" and body_too["detail"]["status"] == "origin_not_allowed"
    assert kept.lower() != "close" and kept_too.lower() != "close"
    assert closed.lower() == "close"


async def test_a_body_in_brotli_or_zstd_gets_what_the_docs_say() -> None:
    """docs/elevenlabs.md's errors table: its refusals come in ElevenLabs' body, a
    `Content-Encoding` other than gzip or deflate 415 `unsupported_encoding`. aiohttp refuses `br`
    and `zstd` itself, before the daemon sees the request (neither decoder is a dependency), with a
    plain-text 400: the doc must say so, as deepgram.md and openai.md do."""
    doc = " ".join((ROOT / "docs/elevenlabs.md").read_text().split())
    async with running_daemon() as daemon, aiohttp.ClientSession() as http:
        url = f"{base_url(daemon)}{elevenlabs_upload.PATH}"
        headers = {"Content-Encoding": "br", "Content-Type": "multipart/form-data; boundary=b"}
        async with http.post(url, data=b"\x0b\x02\x80--b--\r\n\x03", headers=headers) as response:
            status, body = response.status, await response.text()
    if status == 415:
        assert json.loads(body)["detail"]["status"] == "unsupported_encoding"
    else:
        assert (status, body.startswith("Can not decode content-encoding")) == (400, True), body
        assert "`br` and `zstd`" in doc and "Can not decode content-encoding" in doc
