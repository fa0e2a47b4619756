"""Telnyx's speech-to-text WebSocket (`/v2/speech-to-text/transcription`) with the two real Telnyx
clients, against the real daemon (real Silero, real tiny.en): LiveKit's `telnyx.STT` (its stream and
its `recognize`), pointed at the daemon by `base_url`, and the Telnyx SDK's `AsyncSpeechToTextWS`
and `SpeechToTextWS`, by theirs. The key goes as `Authorization: Bearer`, as both send it; the
fixtures at microphone pace. No message ends a Telnyx stream: LiveKit's plugin, its input ended,
waits for the server to close, which the daemon's idle timeout does once the finals are out."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import aiohttp
import pytest
import websockets
from livekit import rtc
from livekit.agents import APIConnectOptions, APIError
from livekit.plugins import telnyx as lk_telnyx
from telnyx.lib import AsyncSpeechToTextWS, SpeechToTextStreamParams, SpeechToTextWS, SpeechToTextWSError

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.protocols import telnyx
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble
from tests.helpers import EXPECTED, fixture_16k, microphone_chunks, pcm16, running_daemon, same_words
from tests.livekit_events import FRAME_S, LiveKitEvents, pushed, stream_fixture

pytestmark = pytest.mark.timeout(180)

KEY = "telnyx-test-key"
FIXTURE = "three_commands.wav"


def livekit_stt(daemon: Daemon, api_key: str = KEY, **options: object) -> lk_telnyx.STT:
    base_url = f"ws://127.0.0.1:{daemon.http_port}{telnyx.PATH}"
    return lk_telnyx.STT(api_key=api_key, base_url=base_url, **options)  # type: ignore[arg-type]


async def test_livekit_stream_gets_a_final_per_command() -> None:
    """LiveKit's stream (its WAV header, then 50 ms frames; `transcription_engine=telnyx`,
    `language=en`): a final per command, each between its START_OF_SPEECH and END_OF_SPEECH, partials
    as interims; the language reaches the engine."""
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine, api_key=KEY) as daemon:
        events = await stream_fixture(livekit_stt(daemon), FIXTURE, finals=3)
    finals = [final.text for final in events.finals() if final.text]
    assert same_words(EXPECTED[FIXTURE], finals), finals
    assert events.turns().replace("i", "") == "SFE" * 3, events.turns()
    assert "i" in events.turns(), "partials reach LiveKit as interim transcripts"
    assert set(engine.languages) == {"en"}


async def test_livekit_recognize_returns_the_text_once_the_idle_timeout_closes_the_stream() -> None:
    """`recognize` streams the buffer, ends its input and waits for the server to close: the
    daemon's idle timeout does, after the final, and the text is the command's."""
    frames = [
        rtc.AudioFrame(chunk, SAMPLE_RATE, 1, len(chunk) // 2) for chunk in microphone_chunks("lights_on.wav", 0.1)
    ]
    async with running_daemon(api_key=KEY, idle_timeout_s=2) as daemon:
        stt = livekit_stt(daemon)
        try:
            async with asyncio.timeout(60):
                event = await stt.recognize(frames)
        finally:
            await stt.aclose()
    assert same_words(EXPECTED["lights_on.wav"], [event.alternatives[0].text]), event


async def test_livekit_stream_with_a_wrong_key_fails_with_the_upgrades_401() -> None:
    """The daemon's 401 at the upgrade: the plugin raises aiohttp's handshake error, not retried."""
    async with running_daemon(api_key=KEY) as daemon:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await stream_fixture(livekit_stt(daemon, "wrong"), FIXTURE, finals=1)
    assert refused.value.status == 401


async def test_livekit_stream_with_a_language_the_engine_lacks_fails_after_its_retries() -> None:
    """`language="fr"`, which tiny.en cannot honour: refused in band (Telnyx's error, then the Close
    1008). The plugin reads no error message and takes the Close for a connection lost, so it retries,
    each attempt refused the same, and the stream fails."""
    async with running_daemon(api_key=KEY) as daemon:
        refusals = daemon.core.metrics.errors.labels("invalid_query_parameter")
        stt = livekit_stt(daemon, language="fr")
        stream = stt.stream(conn_options=APIConnectOptions(max_retry=2, retry_interval=0.1, timeout=10))
        events = LiveKitEvents(stream)
        try:
            for chunk in microphone_chunks("lights_on.wav", FRAME_S):
                if not pushed(stream, chunk):
                    break
                await asyncio.sleep(FRAME_S)
            async with asyncio.timeout(30):
                with pytest.raises(APIError, match="after 2 attempts"):
                    await events.reading
        finally:
            await stream.aclose()
            await stt.aclose()
        assert refusals._value.get() == 3
    assert events.finals() == []


async def test_livekit_stream_reconnects_each_time_the_idle_timeout_closes_its_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The daemon's idle timeout closes the connection (its error, then 1001) while the plugin is
    still sending: it takes that for a lost connection and reconnects (a new WAV header). A
    connection that lived longer than the connect timeout starts the retry budget over, so a pause
    of several idle timeouts (each a reconnection) is survived with `max_retry=1`, and the command
    after it is transcribed."""
    async with running_daemon(api_key=KEY, idle_timeout_s=2) as daemon:
        stt = livekit_stt(daemon)
        stream = stt.stream(conn_options=APIConnectOptions(max_retry=1, retry_interval=0.1, timeout=1.5))
        events = LiveKitEvents(stream)
        silence = [bytes(int(FRAME_S * SAMPLE_RATE) * 2)] * 80
        try:
            for chunk in [
                *microphone_chunks("lights_on.wav", FRAME_S),
                *silence,
                *microphone_chunks("timer.wav", FRAME_S),
            ]:
                assert pushed(stream, chunk), events.turns()
                await asyncio.sleep(FRAME_S)
            await events.wait_for(lambda: len([final for final in events.finals() if final.text]) >= 2)
        finally:
            await stream.aclose()
            await stt.aclose()
    retries = [record for record in caplog.records if "retrying" in record.getMessage()]
    assert len(retries) >= 2, "a reconnection per idle timeout in the pause"
    finals = [final.text for final in events.finals() if final.text]
    assert same_words([*EXPECTED["lights_on.wav"], *EXPECTED["timer.wav"]], finals), finals


def sdk_params(**overrides: object) -> SpeechToTextStreamParams:
    settings: dict[str, object] = {"transcription_engine": "Deepgram", "input_format": "wav", "language": "en-US"}
    return SpeechToTextStreamParams(**{**settings, **overrides})  # type: ignore[arg-type]


def base_url(daemon: Daemon) -> str:
    """The SDK's `base_url`, to which it adds `/speech-to-text/transcription`."""
    return f"http://127.0.0.1:{daemon.http_port}/v2"


def wav_file(tmp_path: Path, name: str, rate: int = SAMPLE_RATE) -> bytes:
    """The fixture as a WAV file, header and all, at `rate`."""
    path = tmp_path / name
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm16(fixture_16k(name), rate))
    return path.read_bytes()


async def test_sdk_async_client_streams_a_wav_file_and_reads_each_commands_transcripts(tmp_path: Path) -> None:
    """The SDK's async client with a WAV file at 24 kHz sent in 100 ms chunks at microphone pace
    (its header in the first): `transcript` events, interim and final, with `confidence`,
    `start_time` and `duration`; keywords reach the engine; the idle timeout ends its events with
    the `error` event naming it."""
    engine = ContextRecordingEngineDouble()
    data = wav_file(tmp_path, FIXTURE, 24000)
    async with running_daemon(engine, api_key=KEY, idle_timeout_s=5) as daemon:
        params = sdk_params(keywords="Aoife,Calloway", interim_results=True)
        async with AsyncSpeechToTextWS(KEY, params, base_url=base_url(daemon)) as ws:
            for offset in range(0, len(data), 4800):
                await ws.send(data[offset : offset + 4800])
                await asyncio.sleep(0.1)
            events = [event async for event in ws.events()]
    finals = [event for event in events if event.type == "transcript" and event.is_final and event.transcript]
    assert same_words(EXPECTED[FIXTURE], [str(event.transcript) for event in finals]), events
    assert all(event.start_time is not None and event.duration and event.confidence is not None for event in finals)
    assert any(event.type == "transcript" and not event.is_final for event in events)
    assert events[-1].type == "error" and "idle_timeout_s" in str(events[-1].error), events[-1]
    assert engine.names and all(names[:2] == ("Aoife", "Calloway") for names in engine.names), engine.names


async def test_sdk_async_client_gets_the_daemons_sentence_for_a_refused_setting() -> None:
    """`input_format="mp3"`: the SDK's events give Telnyx's error with the sentence, then end with
    the Close 1008 (which its iterator raises)."""
    seen = []
    async with running_daemon(api_key=KEY) as daemon:
        client = AsyncSpeechToTextWS(KEY, sdk_params(input_format="mp3"), base_url=base_url(daemon))
        async with client as ws:
            with pytest.raises(websockets.ConnectionClosedError, match="1008"):
                async for event in ws.events():
                    seen.append(event)
    assert [event.type for event in seen] == ["error"] and "MP3" in str(seen[0].error), seen


async def test_sdk_async_client_with_a_wrong_key_fails_to_connect() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        client = AsyncSpeechToTextWS("wrong", sdk_params(), base_url=base_url(daemon))
        with pytest.raises(SpeechToTextWSError, match="401"):
            await client.connect()


# the SDK's receiver thread keeps `websockets.sync.client.connect()`'s connection without its context
# manager, which websockets warns of on the first receive: an error under this suite's filters, which
# the thread takes for the connection's end (no events at all)
@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
async def test_sdk_sync_client_linear16_in_a_thread(tmp_path: Path) -> None:
    """The SDK's synchronous client (its receiver thread) with headerless 16 kHz PCM (`linear16`)."""
    pcm = pcm16(fixture_16k("lights_on.wav"), SAMPLE_RATE)
    async with running_daemon(api_key=KEY, idle_timeout_s=2) as daemon:
        params = sdk_params(input_format="linear16", sample_rate=SAMPLE_RATE)

        def run() -> list[str]:
            with SpeechToTextWS(KEY, params, base_url=base_url(daemon)) as ws:
                for offset in range(0, len(pcm), 3200):
                    ws.send(pcm[offset : offset + 3200])
                seen = list(ws.events(timeout=30))
                return [str(e.transcript) for e in seen if e.type == "transcript" and e.is_final]

        finals = await asyncio.to_thread(run)
    assert same_words(EXPECTED["lights_on.wav"], [text for text in finals if text]), finals
