"""Meta's real-time speech recognition API (`/v1/asr/realtime`) with the two real Meta clients,
against the real daemon (real Silero, real tiny.en): Pipecat's `MetaSTTService` in a pipeline behind
its own Silero VAD, and LiveKit's `meta.STT` stream (24 kHz). Each is pointed at the daemon by its
`url`; LiveKit's must be `wss://`, so its tests run the daemon with TLS on a certificate of their
own, which the plugin's aiohttp session trusts (docs/meta.md says how). The key goes in the
handshake, as both send it; three_commands.wav at microphone pace: these tests are where a field
the daemon leaves out or mistypes shows."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from livekit.agents import APIConnectOptions, APIStatusError
from livekit.plugins import meta as lk_meta
from pipecat.services.meta.stt import MetaSTTService

from satellite_asr.protocols import meta
from satellite_asr.server import Daemon
from tests.certificates import self_signed
from tests.doubles import ContextRecordingEngineDouble
from tests.helpers import EXPECTED, eventually, microphone_chunks, running_daemon, same_words
from tests.livekit_events import FRAME_S, LiveKitEvents, pushed, stream_fixture
from tests.test_pipecat import across_a_pause, first_error, transcribed

pytestmark = pytest.mark.timeout(180)

KEY = "meta-test-key"
FIXTURE = "three_commands.wav"


def pipecat_service(daemon: Daemon, api_key: str = KEY, **settings: object) -> MetaSTTService:
    url = f"ws://127.0.0.1:{daemon.http_port}{meta.PATH}"
    return MetaSTTService(api_key=api_key, url=url, settings=MetaSTTService.Settings(**settings))


async def test_pipecat_service_gets_a_transcript_per_command() -> None:
    """Pipecat's defaults (ENDPOINTING, English, 16 kHz from its pipeline, `?sessionId=`): each
    command's `speechComplete` is a `TranscriptionFrame`, its partials interim frames."""
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine, api_key=KEY) as daemon:
        frames = await transcribed(pipecat_service(daemon, keywords=["Aoife"]), FIXTURE)
    assert frames.interims, "partials reach Pipecat as interim transcripts"
    assert engine.names and all(names[:1] == ("Aoife",) for names in engine.names), engine.names
    assert set(engine.languages) == {"en"}


async def test_pipecat_service_with_a_wrong_key_gets_an_error_frame_with_the_daemons_sentence() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        frames = await first_error(pipecat_service(daemon, "wrong"))
    assert "the API key is not valid" in frames.errors[0] and frames.finals == [], frames.errors


async def test_pipecat_service_reports_the_daemons_sentence_for_diarization() -> None:
    """`mode="DIARIZATION"` is refused in the handshake's error: Pipecat's error frame carries the sentence."""
    async with running_daemon(api_key=KEY) as daemon:
        frames = await first_error(pipecat_service(daemon, mode="DIARIZATION"))
    assert "speaker diarization" in frames.errors[0], frames.errors


async def test_pipecat_service_streaming_silence_past_the_idle_timeout_is_not_closed() -> None:
    """Pipecat's service streams its pipeline's audio, silence too, at microphone pace: Meta's idle
    clock measures audio missing, not silence (LiveKit's plugin could not outlive an idle close), so
    5 s of silence (over twice idle_timeout_s) between two commands closes nothing: no error frame,
    and both are transcribed."""
    async with running_daemon(api_key=KEY, idle_timeout_s=2) as daemon:
        frames = await across_a_pause(pipecat_service(daemon), "lights_on.wav", "timer.wav", 5)
        streams = daemon.core.metrics.sessions.labels("meta")._value.get()
    assert same_words([*EXPECTED["lights_on.wav"], *EXPECTED["timer.wav"]], frames.finals), frames.finals
    assert frames.errors == [] and streams == 1, (frames.errors, streams)


@asynccontextmanager
async def tls_daemon(
    tmp_path: Path, engine: ContextRecordingEngineDouble | None = None, **settings: object
) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession]]:
    """The daemon serving TLS with a certificate of its own for 127.0.0.1, and the aiohttp session
    given to the plugin, which trusts it: aiohttp reads `SSL_CERT_FILE` once, when it is imported,
    so a test (already running) hands the plugin a session with its own SSL context instead."""
    cert = self_signed(tmp_path, ["localhost"], ["127.0.0.1"])
    trusting = ssl.create_default_context(cafile=str(cert.cert))
    async with (
        running_daemon(engine, api_key=KEY, tls_cert=str(cert.cert), tls_key=str(cert.key), **settings) as daemon,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting)) as http,
    ):
        yield daemon, http


def livekit_stt(daemon: Daemon, http: aiohttp.ClientSession, api_key: str = KEY, **options: object) -> lk_meta.STT:
    url = f"wss://127.0.0.1:{daemon.http_port}{meta.PATH}"
    return lk_meta.STT(api_key=api_key, url=url, http_session=http, **options)  # type: ignore[arg-type]


async def test_livekit_stream_over_wss_gets_a_final_per_command(tmp_path: Path) -> None:
    """LiveKit's stream (24 kHz, ENDPOINTING, audio progress on) with keywords and a language bias:
    a final per command, each between its START_OF_SPEECH and END_OF_SPEECH; the keywords and the
    language reach the engine; `end_input` sends `endStream`, and the daemon's Close 1000 ends the
    stream cleanly (the plugin fails a stream that ends with a turn not completed)."""
    engine = ContextRecordingEngineDouble()
    async with tls_daemon(tmp_path, engine) as (daemon, http):
        stt = livekit_stt(daemon, http, keywords=["Aoife", "Calloway"], language_bias=["English"])
        events = await stream_fixture(stt, FIXTURE, finals=3)
        await events.reading
    finals = [final.text for final in events.finals() if final.text]
    assert same_words(EXPECTED[FIXTURE], finals), finals
    assert events.turns().replace("i", "") == "SFE" * 3, events.turns()
    assert "i" in events.turns(), "partials reach LiveKit as interim transcripts"
    assert engine.names and all(names[:2] == ("Aoife", "Calloway") for names in engine.names), engine.names
    assert set(engine.languages) == {"en"}


async def test_livekit_stream_with_a_wrong_key_fails_at_the_handshake(tmp_path: Path) -> None:
    """The daemon's 401 comes as Meta's error in answer to the handshake: the plugin raises its
    handshake error (status 400, its only one for a refused handshake), not retried."""
    async with tls_daemon(tmp_path) as (daemon, http):
        with pytest.raises(APIStatusError, match="handshake error") as refused:
            await stream_fixture(livekit_stt(daemon, http, "wrong"), FIXTURE, finals=1)
    assert refused.value.status_code == 400 and not refused.value.retryable


async def test_livekit_stream_with_a_language_the_engine_lacks_fails_at_the_handshake(tmp_path: Path) -> None:
    """`language_bias=["French"]`, which tiny.en cannot honour: refused in the handshake's answer."""
    async with tls_daemon(tmp_path) as (daemon, http):
        with pytest.raises(APIStatusError, match="handshake error"):
            await stream_fixture(livekit_stt(daemon, http, language_bias=["French"]), FIXTURE, finals=1)


async def test_livekit_stream_of_silence_past_the_idle_timeout_still_hears_the_next_command(tmp_path: Path) -> None:
    """The plugin does not reconnect once audio was sent (docs/meta.md), so Meta's idle clock measures
    audio missing, not silence: 5 s of silence at microphone pace (over twice idle_timeout_s), then a
    command, whose turn completes on the one connection."""
    async with tls_daemon(tmp_path, idle_timeout_s=2) as (daemon, http):
        events = await stream_fixture(livekit_stt(daemon, http), "lights_on.wav", finals=1, lead_silence_s=5)
        streams = daemon.core.metrics.sessions.labels("meta")._value.get()
    finals = [final.text for final in events.finals() if final.text]
    assert same_words(EXPECTED["lights_on.wav"], finals), (finals, events.turns())
    assert streams == 1, streams


async def test_livekit_stream_refused_at_max_sessions_retries_and_is_served_once_a_slot_frees(tmp_path: Path) -> None:
    """At `max_sessions` the handshake is refused with the Close 1013 alone, which the plugin retries
    (1013 is its retryable close code); an error event first would be its handshake error (status
    400, not retried), and Pipecat's "rejected the session", which leaves its service unusable. Once
    the session holding the slot ends, the plugin's retry is served and transcribes."""
    async with tls_daemon(tmp_path, max_sessions=1, wyoming_reserved_sessions=0) as (daemon, http):
        busy = daemon.core.metrics.errors.labels("server_busy")
        url = f"wss://127.0.0.1:{daemon.http_port}{meta.PATH}"
        handshake = {"authorization": {"accessToken": KEY}, "audioEncoding": "PCM_16KHZ"}
        async with http.ws_connect(url) as holder:
            await holder.send_json(handshake)
            assert "sessionId" in await holder.receive_json()
            stt = livekit_stt(daemon, http)
            stream = stt.stream(conn_options=APIConnectOptions(max_retry=5, retry_interval=1, timeout=10))
            events = LiveKitEvents(stream)
            await eventually(lambda: busy._value.get() > 0 or events.reading.done())
            await holder.send_json({"type": "endStream"})
            async for _ in holder:  # until the daemon's Close: the slot is free
                pass
        try:
            for chunk in microphone_chunks("lights_on.wav", FRAME_S):
                if not pushed(stream, chunk):
                    break
                await asyncio.sleep(FRAME_S)
            await events.wait_for(lambda: any(final.text for final in events.finals()))
            stream.end_input()
        finally:
            await stream.aclose()
            await stt.aclose()
    assert busy._value.get() >= 1
    finals = [final.text for final in events.finals() if final.text]
    assert same_words(EXPECTED["lights_on.wav"], finals), (finals, events.turns())
