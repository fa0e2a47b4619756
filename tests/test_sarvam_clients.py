"""Sarvam AI's speech-to-text APIs with the real Sarvam clients, against the real daemon (real
Silero, real tiny.en): the `sarvamai` SDK's streaming and REST clients (an environment at the
daemon), Pipecat's `SarvamSTTService` in a pipeline (it builds its SDK client with Sarvam's
environment: the tests hand it one at the daemon, docs/sarvam.md), and LiveKit's `sarvam.STT`
stream and `recognize` (which connect to the module constants `SARVAM_STT_STREAMING_URL` and
`SARVAM_STT_BASE_URL`: `recognize` ignores `base_url`, so the tests set both as a user must). The key goes
as all of them send it, `api-subscription-key`."""

from __future__ import annotations

import asyncio
import base64
import functools
import warnings

import aiohttp
import httpx
import livekit.plugins.sarvam.stt as lk_sarvam_stt
import pipecat.services.sarvam.stt as pipecat_sarvam
import pytest
from livekit import rtc
from livekit.agents import APIConnectOptions, APIStatusError
from livekit.plugins import sarvam as lk_sarvam
from pipecat.services.sarvam.stt import SarvamSTTService
from sarvamai import AsyncSarvamAI, SarvamAI
from sarvamai.core.api_error import ApiError
from sarvamai.environment import SarvamAIEnvironment

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.protocols import sarvam
from satellite_asr.server import Daemon
from tests.helpers import EXPECTED, FIXTURES, PCM_FRAME_BYTES, fixture_16k, pcm16, running_daemon, same_words
from tests.livekit_events import stream_fixture
from tests.test_pipecat import across_a_pause, first_error, transcribed

pytestmark = pytest.mark.timeout(180)

KEY = "sarvam-test-key"
FIXTURE = "three_commands.wav"


def environment(daemon: Daemon) -> SarvamAIEnvironment:
    """Sarvam's environment with the daemon for both hosts (REST and WebSocket)."""
    host = f"127.0.0.1:{daemon.http_port}"
    return SarvamAIEnvironment(base=f"http://{host}", creative=f"http://{host}/dubbing", production=f"ws://{host}")


async def test_sdk_streaming_gets_a_transcript_per_command() -> None:
    """The SDK's `connect` (language, model, vad_signals, flush_signal) then `transcribe` of 100 ms
    base64 chunks at microphone pace and a `flush`: each command's `data` parsed by the SDK's own
    models, the VAD events around them."""
    data = pcm16(fixture_16k(FIXTURE), SAMPLE_RATE)
    async with running_daemon(api_key=KEY) as daemon:
        client = AsyncSarvamAI(api_subscription_key=KEY, environment=environment(daemon))
        connecting = client.speech_to_text_streaming.connect(
            language_code="en-IN", model="saaras:v3", vad_signals="true", flush_signal="true", sample_rate="16000"
        )
        async with connecting as socket:
            for at in range(0, len(data), PCM_FRAME_BYTES):
                await socket.transcribe(audio=base64.b64encode(data[at : at + PCM_FRAME_BYTES]).decode())
                await asyncio.sleep(0.1)
            await socket.flush()
            received = []
            while len([r for r in received if r.type == "data"]) < len(EXPECTED[FIXTURE]):
                received.append(await asyncio.wait_for(socket.recv(), 30))
    said = [r.data.transcript for r in received if r.type == "data"]
    assert same_words(EXPECTED[FIXTURE], said), said
    assert [r.data.signal_type for r in received if r.type == "events"][:2] == ["START_SPEECH", "END_SPEECH"]
    assert all(
        r.data.language_code == "en-IN" and r.data.metrics.audio_duration > 0 for r in received if r.type == "data"
    )


async def test_sdk_rest_transcribes_a_file_and_a_wrong_key_is_its_api_error() -> None:
    """The SDK's `speech_to_text.transcribe` of a WAV: its `SpeechToTextResponse`; a wrong key: the
    SDK's `ApiError` with the 401 and Sarvam's error body."""
    async with running_daemon(api_key=KEY) as daemon:
        env = environment(daemon)

        def both() -> tuple[object, ApiError]:
            """On an HTTP client the test closes: the SDK never closes the one it would make itself."""
            with httpx.Client() as http, (FIXTURES / FIXTURE).open("rb") as file:
                answer = SarvamAI(
                    api_subscription_key=KEY, environment=env, httpx_client=http
                ).speech_to_text.transcribe(file=file, model="saaras:v3", language_code="en-IN")
                file.seek(0)
                with pytest.raises(ApiError) as refused:
                    SarvamAI(
                        api_subscription_key="wrong", environment=env, httpx_client=http
                    ).speech_to_text.transcribe(file=file)
            return answer, refused.value

        answer, refused = await asyncio.to_thread(both)
    assert same_words([" ".join(EXPECTED[FIXTURE])], [answer.transcript]) and answer.language_code == "en-IN"
    assert refused.status_code == 401 and refused.body["error"]["code"] == "invalid_api_key", refused.body


def pipecat_service(daemon: Daemon, monkeypatch: pytest.MonkeyPatch, api_key: str = KEY) -> SarvamSTTService:
    """Pipecat's service, whose SDK client is made with an environment at the daemon."""
    monkeypatch.setattr(
        pipecat_sarvam, "AsyncSarvamAI", functools.partial(AsyncSarvamAI, environment=environment(daemon))
    )
    return SarvamSTTService(api_key=api_key, settings=SarvamSTTService.Settings(model="saaras:v3"))


async def test_pipecat_service_gets_a_transcript_per_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipecat's defaults (saaras:v3, its VAD's stops sent as `flush`): a `TranscriptionFrame` per command."""
    async with running_daemon(api_key=KEY) as daemon:
        await transcribed(pipecat_service(daemon, monkeypatch), FIXTURE)


async def test_pipecat_service_streaming_silence_past_the_idle_timeout_still_hears_the_next_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pipecat's service does not reconnect after the idle timeout's Close (every later send fails,
    docs/sarvam.md), so the streaming API's idle clock measures audio missing, not silence: 5 s of
    silence at microphone pace (over twice idle_timeout_s) between two commands closes nothing."""
    async with running_daemon(api_key=KEY, idle_timeout_s=2) as daemon:
        frames = await across_a_pause(pipecat_service(daemon, monkeypatch), "lights_on.wav", "timer.wav", 5)
        streams = daemon.core.metrics.sessions.labels("sarvam")._value.get()
    assert same_words([*EXPECTED["lights_on.wav"], *EXPECTED["timer.wav"]], frames.finals), frames.finals
    assert frames.errors == [] and streams == 1, (frames.errors, streams)


async def test_pipecat_service_with_a_wrong_key_gets_an_error_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_daemon(api_key=KEY) as daemon:
        frames = await first_error(pipecat_service(daemon, monkeypatch, "wrong"))
    assert "401" in frames.errors[0] and frames.finals == [], frames.errors


def point_livekit(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """LiveKit's module constants (its URLs unless the model is a translating one) at the daemon."""
    host = f"127.0.0.1:{daemon.http_port}"
    monkeypatch.setattr(lk_sarvam_stt, "SARVAM_STT_STREAMING_URL", f"ws://{host}{sarvam.PATH}")
    monkeypatch.setattr(lk_sarvam_stt, "SARVAM_STT_BASE_URL", f"http://{host}/speech-to-text")


async def test_livekit_stream_gets_a_final_per_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """LiveKit's defaults (en-IN, saaras:v4, vad_signals on) and its flush at the end of input: a
    final per command between its START_OF_SPEECH and END_OF_SPEECH; `end_of_stream` ends it with
    the daemon's Close."""
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        point_livekit(daemon, monkeypatch)
        stt = lk_sarvam.STT(api_key=KEY, http_session=http, flush_signal=True)
        events = await stream_fixture(stt, FIXTURE, finals=3)
    finals = [final.text for final in events.finals() if final.text]
    assert same_words(EXPECTED[FIXTURE], finals), finals
    assert events.turns().replace("i", "") == "SFE" * 3, events.turns()


async def test_livekit_recognize_with_the_constant_set_posts_the_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = pcm16(fixture_16k("lights_on.wav"), SAMPLE_RATE)
    frame = rtc.AudioFrame(samples, SAMPLE_RATE, 1, len(samples) // 2)
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        point_livekit(daemon, monkeypatch)
        stt = lk_sarvam.STT(api_key=KEY, http_session=http)
        # Sarvam's plugin makes the timeout the POST's whole (aiohttp `total`), the decode included
        once = APIConnectOptions(max_retry=0, timeout=60)
        event = await stt.recognize([frame], conn_options=once)
    [speech] = event.alternatives
    assert same_words(EXPECTED["lights_on.wav"], [speech.text]) and speech.language == "en-IN", speech


async def test_livekit_stream_with_a_wrong_key_fails_naming_the_401(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        point_livekit(daemon, monkeypatch)
        with pytest.raises(APIStatusError) as refused:
            await stream_fixture(lk_sarvam.STT(api_key="wrong", http_session=http), FIXTURE, finals=1)
    assert "401" in str(refused.value), refused.value  # the plugin reports the status in its message alone


@pytest.mark.parametrize("name", ["websockets.WebSocketClientProtocol", "websockets.exceptions.InvalidStatusCode"])
def test_the_sdks_websockets_warnings_are_ignored_for_the_sdk_alone(name: str) -> None:
    """pyproject ignores the deprecation warnings of the SDK's legacy websockets client where the SDK
    imports it; the same warning from the daemon's own code (it uses websockets too) still fails."""
    sdk_module = "sarvamai.speech_to_text_streaming.socket_client"
    warnings.warn_explicit(f"{name} is deprecated", DeprecationWarning, "socket_client.py", 1, sdk_module)
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit(f"{name} is deprecated", DeprecationWarning, "cli.py", 1, "satellite_asr.cli")
