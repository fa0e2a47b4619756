"""OpenAI's REST transcription API with the official `openai` SDK as the client: real daemon, real
Silero, real tiny.en, loopback. Other containers are encoded from the fixtures at test time with PyAV."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import gzip
import io
import itertools
import json
import lzma
import re
import threading
import tracemalloc
import wave
import weakref
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import openai
import pytest

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.audio_files import AudioFile
from satellite_asr.biasing.context import MAX_CLIENT_TERMS
from satellite_asr.clients.bench import load_manifest, speech_segments
from satellite_asr.clients.rest_bench import long_recording, run_rest_bench, wav_bytes
from satellite_asr.clients.stream_client import stream_source
from satellite_asr.clients.wav import read_wav
from satellite_asr.events import FinalTranscript, SessionEvent
from satellite_asr.protocols import MESSAGE_CHARS
from satellite_asr.protocols.openai_rest import NOT_REPORTED
from satellite_asr.server import Daemon
from satellite_asr.session import SessionOptions
from tests.doubles import (
    ContextRecordingEngineDouble,
    CrashingEngineDouble,
    ScoresEachFinalEngineDouble,
    SlowLoadingEngineDouble,
    StallingWavSourceDouble,
)
from tests.helpers import (
    EXPECTED,
    FIXTURES,
    WER_TOLERANCE,
    daemon_settings,
    encoded_audio,
    eventually,
    expect_continue_answer,
    fixture_16k,
    normalise,
    of_type,
    running_daemon,
    same_words,
    u8_wav,
    word_error_rate,
    ws_url,
)

pytestmark = pytest.mark.timeout(180)

THREE = (FIXTURES / "three_commands.wav").read_bytes()


def client(daemon: Daemon) -> openai.AsyncOpenAI:
    """The SDK pointed at the daemon; no retries, so a refusal is seen as it is."""
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{daemon.http_port}/v1", api_key="unused", max_retries=0)


def url(daemon: Daemon) -> str:
    return f"http://127.0.0.1:{daemon.http_port}/v1/audio/transcriptions"


def encoded(name: str, container: str, codec: str, rate: int, layout: str = "mono") -> bytes:
    """A fixture as `encoded_audio`."""
    return encoded_audio(read_wav(FIXTURES / name).to_16k_mono(), container, codec, rate, layout)


def cues(subtitles: str) -> list[tuple[float, float, str]]:
    """(start, end, text) of each SRT or WebVTT cue."""
    pattern = r"(\d\d):(\d\d):(\d\d)[,.](\d{3}) --> (\d\d):(\d\d):(\d\d)[,.](\d{3})\n(.+)"
    found = []
    for match in re.finditer(pattern, subtitles):
        h1, m1, s1, ms1, h2, m2, s2, ms2 = (int(g) for g in match.groups()[:8])
        found.append((h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000, match.group(9)))
    return found


async def refusal(call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        await call
    return caught.value


# --- formats -------------------------------------------------------------------------------------


async def test_every_response_format_has_the_words_of_each_command() -> None:
    expected = EXPECTED["three_commands.wav"]
    seconds = read_wav(FIXTURES / "three_commands.wav").seconds
    async with running_daemon() as daemon, client(daemon) as api:
        create = api.audio.transcriptions.create
        as_json = await create(file=("three.wav", THREE), model="whisper-1")
        as_text = await create(file=("three.wav", THREE), model="whisper-1", response_format="text")
        verbose = await create(file=("three.wav", THREE), model="gpt-4o-transcribe", response_format="verbose_json")
        srt = await create(file=("three.wav", THREE), model="whisper-1", response_format="srt")
        vtt = await create(file=("three.wav", THREE), model="whisper-1", response_format="vtt")
        assert len(daemon.core.sessions) == 0, "each request's session is released"
    assert word_error_rate(" ".join(expected), as_json.text) <= WER_TOLERANCE, as_json.text
    assert as_json.usage is not None and as_json.usage.type == "duration"
    assert as_json.usage.seconds == pytest.approx(seconds, abs=0.05)
    assert as_text == as_json.text + "\n", "text is the same transcript, as plain text"
    assert verbose.text == as_json.text and verbose.language == "en"
    assert verbose.duration == pytest.approx(seconds, abs=0.05)
    segments = verbose.segments or []
    assert same_words(expected, [s.text for s in segments]), segments
    assert [s.id for s in segments] == [0, 1, 2]
    assert all(0 <= s.start < s.end <= seconds for s in segments)
    assert all(a.end <= b.start for a, b in itertools.pairwise(segments))
    assert vtt.startswith("WEBVTT\n\n")
    for subtitles in (srt, vtt):
        found = cues(subtitles)
        assert [text for *_, text in found] == [s.text for s in segments]
        assert [(start, end) for start, end, _ in found] == [
            (pytest.approx(s.start, abs=0.001), pytest.approx(s.end, abs=0.001)) for s in segments
        ]
    assert [line for line in srt.splitlines() if line.isdigit()] == ["1", "2", "3"], "SRT cues are numbered"


async def test_stream_sends_one_delta_per_segment_then_done_with_their_text() -> None:
    async with running_daemon() as daemon, client(daemon) as api:
        events = await api.audio.transcriptions.create(
            file=("three.wav", THREE), model="gpt-4o-transcribe", stream=True
        )
        received = [event async for event in events]
    *deltas, done = received
    assert [e.type for e in deltas] == ["transcript.text.delta"] * 3 and done.type == "transcript.text.done"
    assert "".join(e.delta for e in deltas) == done.text, "the deltas concatenate to the final text"
    assert same_words(EXPECTED["three_commands.wav"], [e.delta for e in deltas]), deltas


async def test_verbose_json_segments_carry_the_scores_the_engine_gave_their_text() -> None:
    """Each segment's `avg_logprob` and `no_speech_prob` are those the engine reported for the decode
    of its text, `avg_logprob` averaged as Whisper does (over the text tokens and the end token)."""
    engine = ScoresEachFinalEngineDouble()
    async with running_daemon(engine) as daemon, client(daemon) as api:
        verbose = await api.audio.transcriptions.create(
            file=("three.wav", THREE), model="whisper-1", response_format="verbose_json"
        )
    segments = verbose.segments or []
    decoded = {final.text: final for final in engine.finals}
    assert len(segments) == len(decoded) == 3, (segments, engine.finals)
    for segment in segments:
        final = decoded[segment.text]
        assert final.mean_logprob is not None and final.tokens == 3
        assert segment.avg_logprob == pytest.approx(final.mean_logprob * 3 / 4)
        assert segment.no_speech_prob == final.no_speech_prob
    assert sorted(s.no_speech_prob for s in segments) == [0.01, 0.02, 0.03], "one decode's scores each"


async def test_an_engine_that_reports_no_scores_gets_the_documented_placeholder() -> None:
    async with running_daemon(ScoresEachFinalEngineDouble(reports=False)) as daemon, client(daemon) as api:
        verbose = await api.audio.transcriptions.create(
            file=("three.wav", THREE), model="whisper-1", response_format="verbose_json"
        )
    segments = verbose.segments or []
    assert len(segments) == 3
    assert {(s.avg_logprob, s.no_speech_prob) for s in segments} == {(NOT_REPORTED, NOT_REPORTED)} == {(0.0, 0.0)}


async def test_a_final_carries_the_scores_of_the_decode_whose_text_it_sends() -> None:
    """A speculative final that speech made stale finished decoding, yet the final carries the
    scores of the decode of its own text and audio (the later speculation's), not the stale one's."""
    engine = ScoresEachFinalEngineDouble()
    finals: list[FinalTranscript] = []

    async def collect(event: SessionEvent) -> None:
        if isinstance(event, FinalTranscript):
            finals.append(event)

    async def no_connection(reason: str) -> None:
        return None

    # fixed: a pause is decoded ahead at a third of silence_ms (2 s) and ends the utterance at 6 s
    async with running_daemon(engine) as daemon:
        core = daemon.core
        options = SessionOptions.from_settings(
            core.settings, vad={"turn_detection": "fixed", "silence_ms": 6000}, partials=False, language="en"
        )
        session = core.sessions.create(
            "test", dataclasses.replace(options, max_feed_ahead_s=None), collect, no_connection
        )
        silence = np.zeros(SAMPLE_RATE, np.float32)
        await session.feed(np.concatenate([fixture_16k("lights_on.wav"), silence]))  # 2.7 s after its words
        await eventually(lambda: len(engine.finals) == 1)  # the speculation finished before speech resumed
        await session.feed(np.concatenate([fixture_16k("weather.wav"), *[silence] * 7]))
        await core.sessions.release(session, "end", finalize=True)
    stale, spoken = engine.finals
    (final,) = finals
    assert final.text == spoken.text != stale.text and final.endpoint == "silence", (final, engine.finals)
    assert (
        (final.avg_logprob, final.no_speech_prob)
        == (spoken.avg_logprob, spoken.no_speech_prob)
        != (
            stale.avg_logprob,
            stale.no_speech_prob,
        )
    )


@pytest.mark.parametrize(
    ("container", "codec", "rate"),
    [
        ("flac", "flac", 16000),
        ("ogg", "libopus", 48000),
        ("mp3", "libmp3lame", 44100),
        ("webm", "libopus", 48000),
        ("ipod", "aac", 44100),
    ],
    ids=["flac", "ogg-opus", "mp3", "webm-opus", "m4a-aac"],
)
async def test_other_containers_are_decoded(container: str, codec: str, rate: int) -> None:
    data = encoded("music.wav", container, codec, rate)
    async with running_daemon() as daemon, client(daemon) as api:
        result = await api.audio.transcriptions.create(file=("music", data), model="whisper-1")
    assert word_error_rate(EXPECTED["music.wav"][0], result.text) <= WER_TOLERANCE, result.text


@pytest.mark.parametrize(
    ("container", "codec", "rate", "damage"),
    [
        ("mp3", "libmp3lame", 44100, "overwritten"),
        ("ipod", "aac", 44100, "overwritten"),
        ("flac", "flac", 16000, "cut"),
    ],
    ids=["mp3-damaged-packet", "m4a-damaged-packets", "flac-cut-mid-frame"],
)
async def test_a_packet_that_does_not_decode_is_skipped_and_the_rest_transcribed(
    container: str, codec: str, rate: int, damage: str
) -> None:
    """2 KB of noise written over the middle of the file, or the file cut in the middle of a frame:
    what decodes is transcribed (as from a WAV cut short), and the first command is whole."""
    data = encoded("three_commands.wav", container, codec, rate)
    middle = len(data) // 2
    if damage == "overwritten":
        noise = np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes()
        data = data[:middle] + noise + data[middle + len(noise) :]
    else:
        data = data[:middle]
    async with running_daemon() as daemon, client(daemon) as api:
        result = await api.audio.transcriptions.create(
            file=("damaged", data), model="whisper-1", response_format="verbose_json"
        )
    first, *_ = result.segments or [None]
    assert first is not None and word_error_rate(EXPECTED["three_commands.wav"][0], first.text) <= WER_TOLERANCE


async def test_a_file_whose_channels_change_midway_is_transcribed_whole() -> None:
    """ADTS AAC joined from a mono and a stereo recording: the stereo part gets a resampler of its
    own, with and without streaming."""
    mono, stereo = ("lights_on.wav", "mono"), ("weather.wav", "stereo")
    data = b"".join(encoded(name, "adts", "aac", 16000, layout) for name, layout in (mono, stereo))
    expected = " ".join([*EXPECTED["lights_on.wav"], *EXPECTED["weather.wav"]])
    async with running_daemon() as daemon, client(daemon) as api:
        result = await api.audio.transcriptions.create(file=("joined.aac", data), model="whisper-1")
        events = await api.audio.transcriptions.create(file=("joined.aac", data), model="whisper-1", stream=True)
        received = [event async for event in events]
    assert word_error_rate(expected, result.text) <= WER_TOLERANCE, result.text
    assert received[-1].type == "transcript.text.done", received
    assert word_error_rate(expected, received[-1].text) <= WER_TOLERANCE, received


@pytest.mark.parametrize("language", ["en", "en-US"])
async def test_language_the_engine_has_is_accepted(language: str) -> None:
    async with running_daemon() as daemon, client(daemon) as api:
        result = await api.audio.transcriptions.create(
            file=("timer.wav", (FIXTURES / "timer.wav").read_bytes()),
            model="whisper-1",
            language=language,
            response_format="verbose_json",
        )
    assert result.language == "en"
    assert word_error_rate(EXPECTED["timer.wav"][0], result.text) <= WER_TOLERANCE, result.text


async def test_prompt_becomes_the_engines_context() -> None:
    """The crashing double fails finals whose context says 'crash': only the prompt can put it there."""
    async with running_daemon(CrashingEngineDouble()) as daemon, client(daemon) as api:
        wav = ("lights.wav", (FIXTURES / "lights_on.wav").read_bytes())
        failed = await refusal(api.audio.transcriptions.create(file=wav, model="whisper-1", prompt="crash test"))
        events = await api.audio.transcriptions.create(file=wav, model="whisper-1", prompt="crash", stream=True)
        with pytest.raises(openai.APIError) as streamed:
            _ = [event async for event in events]
        fine = await api.audio.transcriptions.create(file=wav, model="whisper-1", prompt="kitchen, bedroom")
    assert failed.status_code == 500 and failed.code == "engine_error"
    assert isinstance(streamed.value.body, dict) and streamed.value.body["code"] == "engine_error"
    assert "failed" in failed.message
    assert "kitchen" in normalise(fine.text), "a session without the word is transcribed"


async def test_keywords_are_the_clients_terms_as_in_realtime_and_wyoming() -> None:
    """Keywords follow the prompt in the engine's context and are names to correct towards; blank
    ones are dropped."""
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine) as daemon, client(daemon) as api:
        wav = ("lights.wav", (FIXTURES / "lights_on.wav").read_bytes())
        both = await api.audio.transcriptions.create(
            file=wav, model="gpt-4o-transcribe", prompt="Kowalski", keywords=["Zigbee", "kitchen lights"]
        )
        await api.audio.transcriptions.create(file=wav, model="gpt-4o-transcribe", keywords=["Zigbee", " "])
        too_many = await refusal(
            api.audio.transcriptions.create(file=wav, model="gpt-4o-transcribe", keywords=["k"] * 301)
        )
    assert engine.contexts == ["Kowalski. Zigbee, kitchen lights", "Zigbee"]
    assert engine.names == [("Zigbee", "kitchen lights"), ("Zigbee",)]
    assert too_many.status_code == 400 and too_many.code == "context_too_long" and "301 names" in too_many.message
    assert word_error_rate(EXPECTED["lights_on.wav"][0], both.text) <= WER_TOLERANCE, both.text


async def test_a_prompt_over_the_context_cap_is_a_400_naming_it() -> None:
    prompt = ("Bedroom lights, garage door. " * 4)[:100]
    async with running_daemon(max_context_chars=100) as daemon, client(daemon) as api:
        refused = await refusal(
            api.audio.transcriptions.create(file=("a.wav", THREE), model="whisper-1", prompt=prompt + ".")
        )
        served = await api.audio.transcriptions.create(file=("a.wav", THREE), model="whisper-1", prompt=prompt)
        with_keywords = await refusal(
            api.audio.transcriptions.create(
                file=("a.wav", THREE), model="whisper-1", prompt="p" * 60, keywords=["k" * 50]
            )
        )
    assert with_keywords.status_code == 400 and with_keywords.code == "context_too_long"
    assert with_keywords.param == "prompt" and "prompt and keywords[]" in with_keywords.message
    assert refused.status_code == 400 and refused.code == "context_too_long"
    assert refused.param == "prompt" and "max_context_chars" in refused.message
    assert word_error_rate(" ".join(EXPECTED["three_commands.wav"]), served.text) <= WER_TOLERANCE


async def test_an_upload_is_cut_at_silence_ms_without_speculative_decodes() -> None:
    """A pause shorter than silence_ms does not end a segment, even after words that read as a complete
    command (adaptive turn detection would end it there); the segment is decoded once."""
    paused = (FIXTURES / "turns/dev_hard_01.wav").read_bytes()  # "turn on the lights ... in the kitchen"
    async with running_daemon() as daemon, client(daemon) as api:
        result = await api.audio.transcriptions.create(
            file=("paused.wav", paused), model="whisper-1", response_format="verbose_json"
        )
        decodes = daemon.core.metrics.registry.get_sample_value("satellite_asr_decode_seconds_count", {"kind": "final"})
    assert [normalise(s.text) for s in result.segments or []] == [normalise("turn on the lights in the kitchen")]
    assert decodes == 1


async def test_models_lists_the_engine_model_and_answers_any_name() -> None:
    async with running_daemon() as daemon, client(daemon) as api:
        listed = await api.models.list()
        asked = await api.models.retrieve("whisper-1")
    assert [m.id for m in listed.data] == ["bundled:tiny.en"]
    assert listed.data[0].object == "model" and listed.data[0].owned_by == "satellite-asr"
    assert asked.id == "whisper-1" and asked.object == "model"


# --- bad input -----------------------------------------------------------------------------------


async def test_bad_uploads_and_fields_get_openai_errors_and_the_next_request_is_served() -> None:
    wav = ("lights.wav", (FIXTURES / "lights_on.wav").read_bytes())
    async with running_daemon() as daemon, client(daemon) as api:
        create = api.audio.transcriptions.create
        errors = {
            "garbage": await refusal(create(file=("a.mp3", bytes(range(256)) * 64), model="whisper-1")),
            "text file": await refusal(create(file=("a.wav", b"RIFF but not really\n" * 50), model="whisper-1")),
            "empty": await refusal(create(file=("a.wav", b""), model="whisper-1")),
            "format": await refusal(create(file=wav, model="whisper-1", response_format="xml")),  # type: ignore[arg-type]
            "temperature text": await refusal(create(file=wav, model="whisper-1", temperature="hot")),  # type: ignore[arg-type]
            "temperature high": await refusal(create(file=wav, model="whisper-1", temperature=1.5)),
            "language": await refusal(create(file=wav, model="whisper-1", language="fr")),
            "long language": await refusal(create(file=wav, model="whisper-1", language="x" * 50_000)),
            "words": await refusal(
                create(file=wav, model="whisper-1", response_format="verbose_json", timestamp_granularities=["word"])
            ),
            "stream srt": await refusal(create(file=wav, model="whisper-1", response_format="srt", stream=True)),
            "unknown field": await refusal(create(file=wav, model="whisper-1", extra_body={"speaker_labels": "yes"})),
            "long prompt": await refusal(create(file=wav, model="whisper-1", prompt="kitchen " * 10_000)),
            "chunking object": await refusal(
                create(file=wav, model="whisper-1", chunking_strategy={"type": "server_vad"})
            ),
            "no packet decodes": await refusal(create(file=("a.m4a", undecodable_m4a()), model="whisper-1")),
            "8 Hz": await refusal(create(file=("a.wav", u8_wav(np.zeros(2000), 8)), model="whisper-1")),
        }
        after = await create(file=wav, model="whisper-1")
    params = {
        "garbage": "file",
        "text file": "file",
        "empty": "file",
        "format": "response_format",
        "temperature text": "temperature",
        "temperature high": "temperature",
        "language": "language",
        "long language": "language",
        "words": "timestamp_granularities",
        "stream srt": "stream",
        "unknown field": "speaker_labels",
        "long prompt": "prompt",
        "chunking object": "chunking_strategy",
        "no packet decodes": "file",
        "8 Hz": "file",
    }
    for case, error in errors.items():
        assert error.status_code == 400, case
        body = error.body
        assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}, (case, body)
        assert body["type"] == "invalid_request_error" and body["param"] == params[case], (case, body)
        assert len(body["message"]) > 15, (case, body)
    assert "empty" in errors["empty"].message
    assert errors["long prompt"].code == "context_too_long" and "max_context_chars" in errors["long prompt"].message
    assert '"auto"' in errors["chunking object"].message
    assert errors["no packet decodes"].code == "invalid_file" and "none of its" in errors["no packet decodes"].message
    assert errors["8 Hz"].code == "invalid_file" and "sample rate is 8 Hz" in errors["8 Hz"].message
    assert "'fr'" in errors["language"].message and "en" in errors["language"].message
    assert len(errors["long language"].message) < MESSAGE_CHARS + 50, "the 50 KB it quotes is cut"
    cut = re.search(r"\(cut: (\d+) characters\)$", errors["long language"].message)
    assert cut and int(cut[1]) > 50_000, "the cut says how long the message was, not how long its cut was"
    assert word_error_rate(EXPECTED["lights_on.wav"][0], after.text) <= WER_TOLERANCE, "nothing else was lost"


def undecodable_m4a() -> bytes:
    """An M4A whose AAC packets are all overwritten with 0xff: the container reads, no packet decodes."""
    data = encoded("lights_on.wav", "ipod", "aac", 44100)
    start = data.index(b"mdat") + 4
    end = start - 8 + int.from_bytes(data[start - 8 : start - 4], "big")
    return data[:start] + b"\xff" * (end - start) + data[end:]


async def test_form_problems_the_sdk_would_not_send() -> None:
    async with running_daemon() as daemon, aiohttp.ClientSession() as http:
        no_file = aiohttp.FormData({"model": "whisper-1"}, default_to_multipart=True)
        async with http.post(url(daemon), data=no_file) as response:
            missing = response.status, await response.json()
        bad_stream = aiohttp.FormData({"model": "whisper-1", "stream": "maybe"})
        bad_stream.add_field("file", (FIXTURES / "timer.wav").read_bytes(), filename="timer.wav")
        async with http.post(url(daemon), data=bad_stream) as response:
            stream = response.status, await response.json()
        async with http.post(url(daemon), json={"file": "timer.wav"}) as response:
            not_multipart = response.status, await response.json()
        form = b'--b0undary\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--b0undary--\r\n'
        gzip_label = {"Content-Type": "multipart/form-data; boundary=b0undary", "Content-Encoding": "gzip"}
        async with http.post(url(daemon), data=form, headers=gzip_label) as response:
            not_gzip = response.status, await response.text()
    assert not_gzip[0] == 400, not_gzip
    not_gzip_error = json.loads(not_gzip[1])["error"]
    assert not_gzip_error["code"] == "invalid_request" and "gzip" in not_gzip_error["message"], not_gzip_error
    assert missing[0] == 400 and missing[1]["error"]["param"] == "file"
    assert stream[0] == 400 and stream[1]["error"]["param"] == "stream" and "'maybe'" in stream[1]["error"]["message"]
    assert not_multipart[0] == 400 and "multipart/form-data" in not_multipart[1]["error"]["message"]


async def test_an_upload_is_read_in_gzip_or_deflate_and_refused_as_json_415_in_another_encoding() -> None:
    """aiohttp decodes gzip and deflate and hands any other body on as it came: an xz body was read
    as a form and refused for its framing, a body marked `gzip, deflate` (two codings, which aiohttp
    does not undo) the same, and a plain form marked `compress` was transcribed as if unmarked."""
    wav = (FIXTURES / "timer.wav").read_bytes()
    form = (
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="timer.wav"\r\n\r\n'
        + wav
        + b"\r\n--b0undary--\r\n"
    )
    bodies = {
        "gzip": gzip.compress(form),
        "deflate": zlib.compress(form),
        "xz": lzma.compress(form),
        "gzip, deflate": zlib.compress(gzip.compress(form)),
        "compress": form,
        "": form,  # an empty header is no coding
    }
    answers = {}
    async with running_daemon() as daemon, aiohttp.ClientSession() as http:
        for encoding, body in bodies.items():
            headers = {"Content-Type": "multipart/form-data; boundary=b0undary", "Content-Encoding": encoding}
            async with http.post(url(daemon), data=body, headers=headers) as response:
                answers[encoding] = response.status, await response.json(), response.headers.get("Accept-Encoding")
        before_body = await expect_continue_answer(daemon.http_port, "Content-Encoding: xz")
    assert before_body == (415, "unsupported_encoding"), "refused before the file is sent"
    for encoding in ("gzip", "deflate", ""):
        status, body, _ = answers[encoding]
        assert status == 200 and word_error_rate(EXPECTED["timer.wav"][0], body["text"]) <= WER_TOLERANCE, answers
    for encoding in ("xz", "gzip, deflate", "compress"):
        status, body, accepted = answers[encoding]
        error = body["error"]
        assert (status, error["code"], accepted) == (415, "unsupported_encoding", "gzip, deflate"), (encoding, body)
        assert f"Content-Encoding {encoding!r}" in error["message"] and "gzip or deflate" in error["message"], error


async def test_list_fields_past_their_cap_are_refused_at_the_first_part_over_it() -> None:
    """Each form part costs the reader time whatever its size: 5000 empty `keywords[]` (which the
    engine would all drop) are refused at the 301st, and `timestamp_granularities[]` past two; at
    the caps the form is served."""
    wav = (FIXTURES / "timer.wav").read_bytes()

    async def answer(http: aiohttp.ClientSession, repeated: list[tuple[str, str]]) -> tuple[int, Any]:
        form = aiohttp.FormData([*repeated, ("model", "whisper-1")])
        form.add_field("file", wav, filename="timer.wav")
        async with http.post(url(daemon), data=form) as response:
            return response.status, await response.json()

    async with running_daemon() as daemon, aiohttp.ClientSession() as http:
        keywords = await answer(http, [("keywords[]", "")] * 5000)
        granularities = await answer(http, [("timestamp_granularities[]", "segment")] * 3)
        at_the_caps = await answer(
            http, [("keywords[]", "")] * MAX_CLIENT_TERMS + [("timestamp_granularities[]", "segment")] * 2
        )
    assert keywords[0] == 400 and keywords[1]["error"]["code"] == "context_too_long", keywords
    assert (
        keywords[1]["error"]["param"] == "prompt"
        and f"{MAX_CLIENT_TERMS + 1} names and terms or more" in keywords[1]["error"]["message"]
    )
    assert granularities[0] == 400 and granularities[1]["error"]["code"] == "invalid_value", granularities
    assert granularities[1]["error"]["param"] == "timestamp_granularities"
    assert at_the_caps[0] == 200 and word_error_rate(EXPECTED["timer.wav"][0], at_the_caps[1]["text"]) <= WER_TOLERANCE


async def test_an_unknown_address_or_method_gets_a_json_error_the_client_can_read() -> None:
    """OpenAI's own paths answer OpenAI's error object (what its SDKs parse), others the project's."""
    form = aiohttp.FormData({"model": "whisper-1"})
    form.add_field("file", (FIXTURES / "lights_on.wav").read_bytes(), filename="lights.wav")
    async with running_daemon() as daemon, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{daemon.http_port}"
        async with http.post(f"{base}/v1/audio/translations", data=form) as response:
            translation = response.status, await response.json()
        async with http.get(url(daemon)) as response:
            wrong_method = response.status, response.headers.get("Allow"), await response.json()
        async with http.get(f"{base}/nowhere") as response:
            elsewhere = response.status, await response.json()
        async with http.get(f"{base}/health/") as response:  # a trailing slash, as a person types a URL
            slashed = response.status, await response.json()
        async with http.post(f"{base}/v1/audio/transcriptions/", data=form) as response:
            slashed_upload = response.status, await response.json()
        static = {}  # not the page's files: the same JSON 404 (was an empty body, and 403 for the folder)
        for path in ("/static/nothing.js", "/static/"):
            async with http.get(base + path) as response:
                static[path] = response.status, await response.json()
    assert translation[0] == 404 and set(translation[1]["error"]) == {"message", "type", "param", "code"}
    assert (
        translation[1]["error"]["code"] == "not_found"
        and "/v1/audio/translations" in translation[1]["error"]["message"]
    )
    assert wrong_method[:2] == (405, "POST") and wrong_method[2]["error"]["code"] == "method_not_allowed"
    assert elsewhere == (
        404,
        {"type": "error", "code": "not_found", "message": "this daemon has nothing at GET /nowhere"},
    )
    assert slashed == (
        404,
        {
            "type": "error",
            "code": "not_found",
            "message": "this daemon has nothing at GET /health/ (the route is /health, without the trailing slash)",
        },
    )
    assert slashed_upload[0] == 404 and slashed_upload[1]["error"]["message"] == (
        "this daemon has nothing at POST /v1/audio/transcriptions/ "
        "(the route is /v1/audio/transcriptions, without the trailing slash)"
    )
    assert static == {
        path: (404, {"type": "error", "code": "not_found", "message": f"this daemon has nothing at GET {path}"})
        for path in static
    }


def noise_wav(megabytes: float) -> bytes:
    samples = int(megabytes * (1 << 20) / 2)
    return wav_bytes(np.random.default_rng(0).normal(0, 0.01, samples).astype(np.float32))


async def test_over_the_size_limit_is_413_by_content_length_and_while_reading() -> None:
    async with running_daemon(max_upload_mb=1) as daemon, client(daemon) as api, aiohttp.ClientSession() as http:
        declared = await refusal(api.audio.transcriptions.create(file=("big.wav", noise_wav(2.5)), model="whisper-1"))
        chunked_file = noise_wav(1.5)

        async def chunks() -> AsyncIterator[bytes]:
            for offset in range(0, len(chunked_file), 1 << 16):
                yield chunked_file[offset : offset + (1 << 16)]

        form = aiohttp.FormData({"model": "whisper-1"})
        form.add_field("file", chunks(), filename="big.wav", content_type="audio/wav")
        async with http.post(url(daemon), data=form) as response:
            assert response.request_info.headers.get("Transfer-Encoding") == "chunked", "no Content-Length to trust"
            read = response.status, await response.json()
        small = await api.audio.transcriptions.create(
            file=("timer.wav", (FIXTURES / "timer.wav").read_bytes()), model="whisper-1"
        )
    assert declared.status_code == 413 and declared.code == "file_too_large" and "1 MB" in declared.message
    assert read[0] == 413 and read[1]["error"]["code"] == "file_too_large" and read[1]["error"]["param"] == "file"
    assert word_error_rate(EXPECTED["timer.wav"][0], small.text) <= WER_TOLERANCE, "a file under the limit is served"


def understated_flac(name: str, declared_samples: int) -> bytes:
    """A fixture as FLAC whose STREAMINFO says it holds `declared_samples` samples."""
    data = bytearray(encoded(name, "flac", "flac", 16000))
    # STREAMINFO follows "fLaC" and its 4-byte block header; its bytes 10-17 end in the 36-bit sample count
    fields = int.from_bytes(data[18:26], "big")
    data[18:26] = (fields >> 36 << 36 | declared_samples).to_bytes(8, "big")
    return bytes(data)


async def test_audio_over_max_upload_audio_s_is_refused_by_its_header_and_while_decoding() -> None:
    """A file whose container says it is too long is refused before decoding; one that says less
    than it holds is refused when decoding gets past the limit (stream=true: an error event)."""
    understated = ("three.flac", understated_flac("three_commands.wav", SAMPLE_RATE))  # says 1 s, holds 9.9 s
    async with running_daemon(max_upload_audio_s=5) as daemon, client(daemon) as api:
        create = api.audio.transcriptions.create
        declared = await refusal(create(file=("three.wav", THREE), model="whisper-1"))
        decoded = await refusal(create(file=understated, model="whisper-1"))
        events = await create(file=understated, model="whisper-1", stream=True)
        with pytest.raises(openai.APIError) as streamed:
            _ = [event async for event in events]
        served = await create(file=("timer.wav", (FIXTURES / "timer.wav").read_bytes()), model="whisper-1")
    assert declared.status_code == 400 and declared.code == "audio_too_long" and declared.param == "file"
    assert "says its audio lasts 10 s, over the 5 s limit" in declared.message
    assert decoded.status_code == 400 and decoded.code == "audio_too_long"
    assert "goes on past the 5 s limit" in decoded.message
    for message in (declared.message, decoded.message):
        assert "max_upload_audio_s" in message
    assert isinstance(streamed.value.body, dict) and streamed.value.body["code"] == "audio_too_long"
    assert word_error_rate(EXPECTED["timer.wav"][0], served.text) <= WER_TOLERANCE, "a shorter file is served"


async def test_503_while_the_engine_loads_then_served() -> None:
    engine = SlowLoadingEngineDouble()
    daemon = Daemon(daemon_settings(), engine=engine)
    await daemon.start()
    try:
        async with client(daemon) as api:
            wav = ("timer.wav", (FIXTURES / "timer.wav").read_bytes())
            loading = await refusal(api.audio.transcriptions.create(file=wav, model="whisper-1"))
            listed = await api.models.list()
            engine.release.set()
            await daemon.core.wait_ready()
            served = await api.audio.transcriptions.create(file=wav, model="whisper-1")
    finally:
        await daemon.stop()
    assert loading.status_code == 503 and loading.code == "model_not_ready" and "loading" in loading.message
    assert [m.id for m in listed.data] == ["bundled:tiny.en"], "the model is listed while it loads"
    assert word_error_rate(EXPECTED["timer.wav"][0], served.text) <= WER_TOLERANCE


async def test_server_busy_is_503() -> None:
    async with (
        running_daemon(max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        client(daemon) as api,
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url(daemon)) as ws,
    ):
        await ws.send_json({"type": "config"})
        assert (await ws.receive_json())["type"] == "session_created"
        busy = await refusal(api.audio.transcriptions.create(file=("a.wav", THREE), model="whisper-1"))
    assert busy.status_code == 503 and busy.code == "server_busy"


# --- an upload beside a live stream --------------------------------------------------------------


def long_upload(rounds: int, gap_s: float) -> tuple[bytes, list[str]]:
    """Every fixture `rounds` times with silence between (a few minutes) as a WAV, and its commands."""
    audio, words = long_recording(load_manifest(FIXTURES / "fixtures.json"), rounds, gap_s)
    return wav_bytes(audio), words


STALL_BEFORE_VOICE_END_S = 0.1
"""Where the live stream stalls in each command: past its first partial's due point (half a second
of speech; the shortest command has 0.94 s), before the voice ends and the command with it."""


async def test_a_ten_minute_upload_does_not_stop_a_live_stream() -> None:
    """A live stream at microphone pace keeps its partials and finals while a 10-minute file is transcribed.

    The upload streams its segments, so one log of arrivals shows the two ran at the same time. The
    live stream stalls near the end of each command's voice, as a network may, until that command's
    partial is in: the scheduler must give it one while the upload runs, however slowly a busy
    machine decodes (the partial a quick machine sends sooner, a busy one dropped as the command ended).
    How soon is not asserted (a wall-clock matter); that live partials go before an upload's decodes
    is `test_scheduler`'s `test_batch_finals_wait_behind_live_partials_and_finals`.
    """
    upload, upload_words = long_upload(rounds=16, gap_s=3.0)
    assert read_wav_seconds(upload) > 600, "ten minutes of audio"
    log: list[tuple[str, Any]] = []
    async with running_daemon() as daemon, client(daemon) as api:

        async def transcribe_upload() -> str:
            events = await api.audio.transcriptions.create(file=("long.wav", upload), model="whisper-1", stream=True)
            async for event in events:
                log.append(("upload", event))
                if event.type == "transcript.text.done":
                    return event.text
            raise AssertionError("no transcript.text.done")

        async def live() -> list[dict[str, Any]]:
            await asyncio.sleep(0)
            path = FIXTURES / "three_commands.wav"
            voices = speech_segments(read_wav(path).to_16k_mono())
            assert len(voices) == 3, voices

            async def partial_in(stall: int) -> None:
                utterance = stall + 1
                await eventually(lambda: any(m.get("utterance_id") == utterance for _, m in live_partials()))

            source = StallingWavSourceDouble(path, [end - STALL_BEFORE_VOICE_END_S for _, end in voices], partial_in)
            return await stream_source(source, ws_url(daemon), on_message=lambda m: log.append(("live", m)))

        def live_partials() -> list[tuple[str, dict[str, Any]]]:
            return [(source, m) for source, m in log if source == "live" and m["type"] == "partial"]

        upload_task = asyncio.create_task(transcribe_upload())
        messages = await live()
        await upload_task
    finals = of_type(messages, "final")
    assert same_words(EXPECTED["three_commands.wav"], [f["text"] for f in finals]), finals
    for utterance in (1, 2, 3):
        partials = [m for m in of_type(messages, "partial") if m["utterance_id"] == utterance]
        assert partials, f"live utterance {utterance} got partials while the upload ran"
    deltas = [event.delta for source, event in log if source == "upload" and event.type == "transcript.text.delta"]
    # 112 segments: one command heard as two, or two as one, is no failure of what is tested here
    assert abs(len(deltas) - len(upload_words)) <= len(upload_words) // 20, (len(deltas), len(upload_words))
    assert word_error_rate(" ".join(upload_words), " ".join(deltas)) <= WER_TOLERANCE / 4, deltas
    upload_at = [i for i, (source, _) in enumerate(log) if source == "upload"]
    live_partials_at = [i for i, (source, m) in enumerate(log) if source == "live" and m["type"] == "partial"]
    assert any(upload_at[0] < i < upload_at[-1] for i in live_partials_at), "live partials came during the upload"


async def test_a_client_that_leaves_mid_stream_releases_its_session_and_audio(monkeypatch: pytest.MonkeyPatch) -> None:
    """The session, the tasks and the decoded file are freed when the client leaves; the file at once,
    not when the garbage collector next runs (it is off here), so no reference cycle holds it."""
    opened: list[weakref.ref[AudioFile]] = []
    real_open = AudioFile.open

    def open_and_watch(data: bytes, max_seconds: float) -> AudioFile:
        audio_file = real_open(data, max_seconds)
        opened.append(weakref.ref(audio_file))
        return audio_file

    monkeypatch.setattr(AudioFile, "open", open_and_watch)
    upload, _ = long_upload(rounds=3, gap_s=1.0)
    async with running_daemon() as daemon, client(daemon) as api:
        tasks_before = len(asyncio.all_tasks())
        gc.disable()
        try:
            events = await api.audio.transcriptions.create(file=("long.wav", upload), model="whisper-1", stream=True)
            async for event in events:
                assert event.type == "transcript.text.delta"
                break
            assert len(daemon.core.sessions) == 1
            await events.close()
            for _ in range(200):
                if len(daemon.core.sessions) == 0 and len(asyncio.all_tasks()) <= tasks_before:
                    break
                await asyncio.sleep(0.05)
            assert len(daemon.core.sessions) == 0, "the session of the client that left is released"
            assert len(asyncio.all_tasks()) <= tasks_before, "no task left behind"
            assert len(opened) == 1 and opened[0]() is None, "the file and its audio are freed"
        finally:
            gc.enable()
        after = await api.audio.transcriptions.create(file=("three.wav", THREE), model="whisper-1")
    assert word_error_rate(" ".join(EXPECTED["three_commands.wav"]), after.text) <= WER_TOLERANCE


async def test_rest_bench_reports_the_recording_it_uploaded() -> None:
    files = load_manifest(FIXTURES / "fixtures.json")
    report = await run_rest_bench(daemon_settings(), files, clients=2, rounds=1, url=None)
    assert report.clients == 2 and report.expected_segments == 7 and report.segments == 14
    assert report.audio_seconds == pytest.approx(sum(read_wav(f.path).seconds + 3.0 for f in files), abs=0.1)
    assert report.wer <= WER_TOLERANCE / 4
    assert report.audio_seconds_per_second > 0 and report.cpu_seconds_per_audio_second is not None


def read_wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as wav:
        return wav.getnframes() / wav.getframerate()


async def test_uploads_decode_in_threads_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not on asyncio's default executor, whose threads live sessions' name correction and pitch
    need: `max_uploads` (8) uploads there could take every one of them (cpu + 4)."""
    threads: set[str] = set()
    take = AudioFile._take

    def recorded_take(self: AudioFile) -> Any:
        threads.add(threading.current_thread().name)
        return take(self)

    monkeypatch.setattr(AudioFile, "_take", recorded_take)
    async with running_daemon() as daemon, client(daemon) as api:
        result = await api.audio.transcriptions.create(file=("three.wav", THREE), model="whisper-1")
    assert result.text
    assert threads and all(name.startswith("upload-decode") for name in threads), threads


# --- Expect: 100-continue ------------------------------------------------------------------------

KEY = "expect-test-key"


async def curl_upload(
    daemon: Daemon, tmp_path: Any, file: bytes, *headers: str
) -> tuple[int, int, dict[str, Any], str]:
    """curl posting `file` with `Expect: 100-continue` (as it does by itself over 1 MB): status,
    bytes curl sent after the headers (`size_upload`), the JSON body, and curl's -v trace. It waits
    30 s for the interim answer, not its default 1 s, so that a slow server is not sent the body
    for want of one."""
    path = tmp_path / "upload.wav"
    path.write_bytes(file)
    out = tmp_path / "body.json"
    header_flags = [flag for header in ("Expect: 100-continue", *headers) for flag in ("-H", header)]
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-v", "--expect100-timeout", "30", *header_flags,
        "-F", f"file=@{path}", "-F", "model=whisper-1",
        "-o", str(out), "-w", "%{http_code} %{size_upload}", url(daemon),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    status, sent = (int(value) for value in stdout.decode().split())
    return status, sent, json.loads(out.read_bytes()), stderr.decode()


async def test_expect_100_continue_refusals_come_before_the_body_and_a_good_upload_is_served(tmp_path: Any) -> None:
    big = noise_wav(3.5)  # over max_upload_mb and what the form may add (FORM_OVERHEAD_BYTES)
    async with running_daemon(api_key=KEY, max_upload_mb=2) as daemon:
        wrong_key = await curl_upload(daemon, tmp_path, noise_wav(1.5), "Authorization: Bearer wrong")
        too_large = await curl_upload(daemon, tmp_path, big, f"Authorization: Bearer {KEY}")
        served = await curl_upload(daemon, tmp_path, THREE, f"Authorization: Bearer {KEY}")
    assert wrong_key[:2] == (401, 0), wrong_key[3]
    assert wrong_key[2]["error"]["code"] == "invalid_api_key"
    assert too_large[:2] == (413, 0), too_large[3]
    assert too_large[2]["error"]["code"] == "file_too_large"
    assert "HTTP/1.1 100 Continue" not in wrong_key[3] + too_large[3]
    assert served[0] == 200 and served[1] > len(THREE), "the whole form went up after the 100"
    assert "HTTP/1.1 100 Continue" in served[3]
    assert word_error_rate(" ".join(EXPECTED["three_commands.wav"]), served[2]["text"]) <= WER_TOLERANCE


async def test_expect_100_continue_is_answered_from_the_headers_alone() -> None:
    """Whatever would refuse the upload from its headers refuses it before its body: the client
    here never sends one, so every answer below came from the headers alone."""
    authorized = f"Authorization: Bearer {KEY}"
    async with running_daemon(api_key=KEY, max_upload_mb=1) as daemon:
        answers = [
            await expect_continue_answer(daemon.http_port),
            await expect_continue_answer(daemon.http_port, "Authorization: Bearer wrong"),
            await expect_continue_answer(daemon.http_port, "Origin: http://evil.example", authorized),
            await expect_continue_answer(daemon.http_port, authorized, length=50 * 1024 * 1024),
            await expect_continue_answer(daemon.http_port, authorized),
        ]
    async with running_daemon(max_upload_mb=1) as daemon:
        answers.append(await expect_continue_answer(daemon.http_port, host="evil.example"))
    assert answers == [
        (401, "missing_api_key"),
        (401, "invalid_api_key"),
        (403, "origin_not_allowed"),
        (413, "file_too_large"),
        (100, ""),
        (403, "host_not_allowed"),
    ]


async def test_an_expectation_other_than_100_continue_is_refused_with_417() -> None:
    """HTTP defines only `100-continue`: another expectation gets 417 Expectation Failed from the
    headers alone (the client never sends the body), as aiohttp's own expect handler answers."""
    async with running_daemon() as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
        lines = [
            "POST /v1/audio/transcriptions HTTP/1.1",
            "Host: 127.0.0.1",
            "Content-Type: multipart/form-data; boundary=b",
            "Content-Length: 1024",
            "Expect: 200-ok",
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            status = await asyncio.wait_for(reader.readline(), 30)
        finally:
            writer.transport.abort()
    assert status.startswith(b"HTTP/1.1 417 "), status


# --- memory --------------------------------------------------------------------------------------


async def test_an_uploaded_file_is_held_in_memory_once(tmp_path: Any) -> None:
    """The file's bytes are read into one buffer that is handed on as they are, not copied. Measured
    with tracemalloc over the whole request: the daemon's Python allocations alone (curl is another
    process; FFmpeg's are C and not traced), deterministic for a given file. The file is not audio,
    so that the request ends once it is read and opened, and what is measured is the reading."""
    size = 25 * (1 << 20)
    file = bytes(size)
    async with running_daemon() as daemon:
        tracemalloc.start()
        try:
            status, _, body, trace = await curl_upload(daemon, tmp_path, file)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert status == 400 and body["error"]["code"] == "invalid_file", trace
    assert peak < 1.3 * size, f"{peak / size:.2f} times the file"


async def test_bytes_past_an_uploads_content_length_are_not_answered_as_a_request() -> None:
    """A raw client (a function, not a class) whose Content-Length is 1 MB short of its body:
    aiohttp reads the rest as a second request on the connection and would answer it with a
    plain-text 400 quoting about 250 KB of it back. The upload's answer closes the connection
    instead (every refusal does), and is the only answer."""
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + b"x" * (2 << 20)
    async with running_daemon() as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
        try:
            head = (
                "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {1 << 20}\r\n\r\n"
            )
            writer.write(head.encode() + body + b"\r\n--b--\r\n")
            answered = await asyncio.wait_for(reader.read(), 60)
        finally:
            writer.transport.abort()
    assert answered.count(b"HTTP/1.") == 1, answered[:2000]
    head, _, json_body = answered.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"\r\nConnection: close" in head, head
    assert json.loads(json_body)["error"]["code"] == "invalid_request"


async def test_an_answered_upload_keeps_its_connection_for_the_next() -> None:
    """Only a refusal closes the connection: the openai SDK's next upload reuses the one it has."""
    wav = (FIXTURES / "lights_on.wav").read_bytes()
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + wav + b"\r\n--b--\r\n"
    )
    head = (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    async with running_daemon() as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
        try:
            answers = []
            for _ in range(2):
                writer.write(head + body)
                status_and_headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
                length = int(re.search(rb"(?i)\r\ncontent-length: (\d+)", status_and_headers)[1])  # type: ignore[index]
                answers.append((status_and_headers, json.loads(await reader.readexactly(length))))
        finally:
            writer.transport.abort()
    for status_and_headers, answer in answers:
        assert status_and_headers.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in status_and_headers
        assert same_words(EXPECTED["lights_on.wav"], [answer["text"]]), answer


async def test_a_path_sent_for_the_file_says_to_send_the_file_itself() -> None:
    """curl's `-F file=meeting.m4a`, without the @, sends the name as text: it was answered "not an
    audio file FFmpeg can read", which sends a person looking at the file instead of the command."""
    async with running_daemon() as daemon, aiohttp.ClientSession() as http:
        form = aiohttp.FormData({"model": "whisper-1", "file": "/home/me/meeting.m4a"}, default_to_multipart=True)
        async with http.post(url(daemon), data=form) as response:
            status, body = response.status, await response.json()
        # the content without a file name (curl's -F file=<PATH) is still audio
        with aiohttp.MultipartWriter("form-data") as whole:
            part = whole.append((FIXTURES / "timer.wav").read_bytes())
            part.set_content_disposition("form-data", name="file")
        async with http.post(url(daemon), data=whole) as response:
            served = response.status, await response.json()
    assert status == 400
    assert body["error"]["code"] == "invalid_file" and body["error"]["param"] == "file"
    assert body["error"]["message"] == (
        "the file field holds the text '/home/me/meeting.m4a', not a file's content: send the file itself "
        "(with curl, -F file=@PATH: the @ reads the file)"
    )
    assert served[0] == 200 and word_error_rate(EXPECTED["timer.wav"][0], served[1]["text"]) <= WER_TOLERANCE
