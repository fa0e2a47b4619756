"""Baseten's and Simplismart's APIs with the real LiveKit plugins, against the real daemon (real
Silero, real tiny.en), three_commands.wav at microphone pace.

`baseten.STT` is pointed at the daemon by `model_endpoint` (its `whisper` model and its `qwen3-asr`
model, which speak differently); `simplismart.STT` by `base_url`: with `streaming=True` it connects to
`wss://{host}/ws/audio` whatever the URL's scheme, so those tests run the daemon with TLS and a
certificate of its own, which the plugin trusts as an agent would: `SSL_CERT_FILE` names it (aiohttp
reads it once, when imported: the test makes aiohttp's default context again after setting it)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import aiohttp.connector
import pytest
from livekit import rtc
from livekit.agents import APIConnectOptions, APIStatusError
from livekit.plugins import baseten as lk_baseten
from livekit.plugins import simplismart as lk_simplismart

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.protocols import baseten, simplismart
from satellite_asr.server import Daemon
from tests.certificates import self_signed
from tests.helpers import EXPECTED, fixture_16k, microphone_chunks, pcm16, running_daemon, same_words
from tests.livekit_events import FRAME_S, LiveKitEvents, stream_fixture

pytestmark = pytest.mark.timeout(180)

KEY = "plugin-test-key"
FIXTURE = "three_commands.wav"


def endpoint(daemon: Daemon) -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{baseten.PATH}"


def baseten_stt(daemon: Daemon, http: aiohttp.ClientSession, key: str = KEY, **options: object) -> lk_baseten.STT:
    return lk_baseten.STT(api_key=key, model_endpoint=endpoint(daemon), http_session=http, **options)  # type: ignore[arg-type]


def texts(events: LiveKitEvents) -> list[str]:
    return [final.text for final in events.finals() if final.text]


@pytest.mark.parametrize("model", ["whisper", "qwen3-asr"])
async def test_baseten_stream_gets_a_final_per_command(model: str) -> None:
    """Either model's defaults (whisper: `en`, word timestamps; qwen3-asr: `auto`): a final per
    command, partials as interims, each final's span from its segment."""
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        events = await stream_fixture(baseten_stt(daemon, http, model=model), FIXTURE, finals=3)
    assert same_words(EXPECTED[FIXTURE], texts(events)), texts(events)
    assert "i" in events.turns(), events.turns()
    assert all(0 <= final.start_time < final.end_time for final in events.finals() if final.text), events.finals()
    if model == "qwen3-asr":
        assert events.turns().replace("i", "") == "SFE" * 3, events.turns()


async def test_baseten_qwen3_recognize_runs_over_the_stream() -> None:
    """The qwen3-asr model's `recognize`: the buffer streamed, then a commit, whose answer ends it."""
    samples = pcm16(fixture_16k("lights_on.wav"), SAMPLE_RATE)
    frame = rtc.AudioFrame(samples, SAMPLE_RATE, 1, len(samples) // 2)
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        stt = baseten_stt(daemon, http, model="qwen3-asr")
        event = await stt.recognize([frame], conn_options=APIConnectOptions(max_retry=0, timeout=20))
    [speech] = event.alternatives
    assert same_words(EXPECTED["lights_on.wav"], [speech.text]), speech


@pytest.mark.parametrize("model", ["whisper", "qwen3-asr"])
async def test_baseten_stream_with_a_wrong_key_fails_with_the_401(model: str) -> None:
    """The 401 at the upgrade: the qwen3-asr model raises it as an `APIStatusError`, the whisper model
    lets aiohttp's handshake error through as it is."""
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        with pytest.raises((APIStatusError, aiohttp.WSServerHandshakeError)) as refused:
            await stream_fixture(baseten_stt(daemon, http, "wrong", model=model), FIXTURE, finals=1)
    error = refused.value
    status = error.status_code if isinstance(error, APIStatusError) else error.status
    assert status == 401, error


async def test_baseten_qwen3_reports_the_daemons_sentence_for_a_language_it_cannot_do() -> None:
    """A language the engine does not have (tiny.en has English alone) is refused in the error
    message, which the qwen3-asr model's stream raises with the sentence."""
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        with pytest.raises(APIStatusError) as refused:
            await stream_fixture(baseten_stt(daemon, http, model="qwen3-asr", language="German"), FIXTURE, finals=1)
    assert "is not one of the languages of this engine" in refused.value.message, refused.value


async def test_baseten_whisper_fails_on_the_close_1008_of_a_refused_language() -> None:
    """The whisper model ignores the error message; the Close 1008 after it fails its stream."""
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        with pytest.raises(APIStatusError) as refused:
            await stream_fixture(baseten_stt(daemon, http, language="de"), FIXTURE, finals=1)
    assert refused.value.status_code == 1008, refused.value


async def speak_twice_across_the_idle_timeout(stt: object) -> LiveKitEvents:
    """lights_on.wav, 4 s of silence (over the daemon's 2 s idle timeout), three_commands.wav, all at
    microphone pace through one stream that may reconnect; until the four commands' finals."""
    stream = stt.stream(conn_options=APIConnectOptions(max_retry=3, retry_interval=0.1, timeout=10))  # type: ignore[attr-defined]
    events = LiveKitEvents(stream)
    silence = [bytes(int(FRAME_S * SAMPLE_RATE) * 2)] * 40
    try:
        for chunk in [*microphone_chunks("lights_on.wav", FRAME_S), *silence, *microphone_chunks(FIXTURE, FRAME_S)]:
            stream.push_frame(rtc.AudioFrame(chunk, SAMPLE_RATE, 1, len(chunk) // 2))
            await asyncio.sleep(FRAME_S)
        await events.wait_for(lambda: len(texts(events)) >= 4)
    finally:
        await stream.aclose()
        await stt.aclose()  # type: ignore[attr-defined]
    return events


@pytest.mark.parametrize("model", ["whisper", "qwen3-asr"])
async def test_baseten_stream_reconnects_after_the_idle_timeout(model: str) -> None:
    """LiveKit keeps one stream for a session: the daemon's idle timeout closes the connection (the
    error, then 1001), the plugin retries, and the next commands are transcribed."""
    async with running_daemon(api_key=KEY, idle_timeout_s=2) as daemon, aiohttp.ClientSession() as http:
        events = await speak_twice_across_the_idle_timeout(baseten_stt(daemon, http, model=model))
    assert same_words([*EXPECTED["lights_on.wav"], *EXPECTED[FIXTURE]], texts(events)), texts(events)


@asynccontextmanager
async def tls_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: object) -> AsyncIterator[Daemon]:
    """The daemon serving TLS with a certificate for 127.0.0.1, trusted through `SSL_CERT_FILE`
    (aiohttp's default context made again, as a process started with it set would have it)."""
    cert = self_signed(tmp_path, ["localhost"], ["127.0.0.1"])
    monkeypatch.setenv("SSL_CERT_FILE", str(cert.cert))
    monkeypatch.setattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED", aiohttp.connector._make_ssl_context(True))
    async with running_daemon(api_key=KEY, tls_cert=str(cert.cert), tls_key=str(cert.key), **settings) as daemon:
        yield daemon


def simplismart_stt(
    daemon: Daemon, key: str = KEY, streaming: bool = True, http: aiohttp.ClientSession | None = None, **options: object
) -> lk_simplismart.STT:
    """The plugin at the daemon: its stream makes a session of its own; `recognize` uses `http`."""
    scheme = "https" if streaming else "http"
    base_url = f"{scheme}://127.0.0.1:{daemon.http_port}{simplismart.PATH}"
    return lk_simplismart.STT(api_key=key, base_url=base_url, streaming=streaming, http_session=http, **options)  # type: ignore[arg-type]


async def test_simplismart_stream_over_wss_gets_a_final_per_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tls_daemon(tmp_path, monkeypatch) as daemon:
        events = await stream_fixture(simplismart_stt(daemon), FIXTURE, finals=3)
    assert same_words(EXPECTED[FIXTURE], texts(events)), texts(events)
    assert events.turns() == "FFF", events.turns()


async def test_simplismart_stream_with_a_wrong_key_fails_with_the_401(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tls_daemon(tmp_path, monkeypatch) as daemon:
        with pytest.raises(APIStatusError) as refused:
            await stream_fixture(simplismart_stt(daemon, "wrong"), FIXTURE, finals=1)
    assert refused.value.status_code == 401, refused.value


async def test_simplismart_stream_reconnects_after_the_idle_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plugin reconnects when the daemon's idle timeout closes its connection (1001)."""
    async with tls_daemon(tmp_path, monkeypatch, idle_timeout_s=2) as daemon:
        events = await speak_twice_across_the_idle_timeout(simplismart_stt(daemon))
    assert same_words([*EXPECTED["lights_on.wav"], *EXPECTED[FIXTURE]], texts(events)), texts(events)


async def test_simplismart_recognize_posts_the_buffer() -> None:
    """`streaming=False`: `recognize` posts the buffer as a base64 WAV with every option at the
    plugin's default; the transcript, its language and the request's id."""
    samples = pcm16(fixture_16k(FIXTURE), SAMPLE_RATE)
    frame = rtc.AudioFrame(samples, SAMPLE_RATE, 1, len(samples) // 2)
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        stt = simplismart_stt(daemon, streaming=False, http=http)
        try:
            event = await stt.recognize([frame], conn_options=APIConnectOptions(max_retry=0, timeout=30))
        finally:
            await stt.aclose()
    [speech] = event.alternatives
    assert same_words([" ".join(EXPECTED[FIXTURE])], [speech.text]) and speech.language == "en", speech
    assert event.request_id, event


@pytest.mark.parametrize(
    ("key", "options", "status", "words"),
    [
        ("wrong", {}, 401, "invalid_api_key"),
        (KEY, {"task": "translate"}, 400, "does not translate"),
        (KEY, {"num_speakers": 2}, 400, "speaker labels"),
        (KEY, {"language": "de"}, 400, "is not one of the languages of this engine"),
    ],
)
async def test_simplismart_recognize_refusals_carry_the_status_and_sentence(
    key: str, options: dict[str, object], status: int, words: str
) -> None:
    samples = pcm16(fixture_16k("lights_on.wav"), SAMPLE_RATE)
    frame = rtc.AudioFrame(samples, SAMPLE_RATE, 1, len(samples) // 2)
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        stt = simplismart_stt(daemon, key, streaming=False, http=http, **options)
        try:
            with pytest.raises(APIStatusError) as refused:
                await stt.recognize([frame], conn_options=APIConnectOptions(max_retry=0, timeout=30))
        finally:
            await stt.aclose()
    assert refused.value.status_code == status and words in str(refused.value.body), refused.value


async def test_baseten_qwen3_over_wss_trusts_the_daemon_through_its_http_session(tmp_path: Path) -> None:
    """docs/baseten.md: the qwen3-asr model checks the certificate, and connects through the
    `http_session` it is given, so a session whose connector trusts the daemon's certificate is enough
    (no `SSL_CERT_FILE`, no change to aiohttp's default context)."""
    cert = self_signed(tmp_path, ["localhost"], ["127.0.0.1"])
    context = ssl.create_default_context(cafile=str(cert.cert))
    connector = aiohttp.TCPConnector(ssl=context)
    settings = {"api_key": KEY, "tls_cert": str(cert.cert), "tls_key": str(cert.key)}
    async with running_daemon(**settings) as daemon, aiohttp.ClientSession(connector=connector) as http:
        wss = endpoint(daemon).replace("ws://", "wss://", 1)
        stt = lk_baseten.STT(api_key=KEY, model_endpoint=wss, http_session=http, model="qwen3-asr")
        events = await stream_fixture(stt, FIXTURE, finals=3)
    assert same_words(EXPECTED[FIXTURE], texts(events)), texts(events)
