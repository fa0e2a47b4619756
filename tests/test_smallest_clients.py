"""Smallest AI's Pulse API (`/waves/v1/stt/live` and `POST /waves/v1/stt/`) with the real clients,
against the real daemon (real Silero, real tiny.en): Pipecat's `SmallestSTTService` behind its own
Silero VAD (a `finalize` at each of its stops) and LiveKit's `smallestai.STT`, its stream (with the
server's `vad_events`, its end of turn) and its `recognize` upload. Each is pointed at the daemon on
127.0.0.1 by its base URL alone, with the key as it sends it (`Authorization: Bearer`): these tests
are where a field the daemon leaves out or mistypes shows."""

from __future__ import annotations

import aiohttp
import pytest
from livekit import rtc
from livekit.agents import APIConnectOptions, APIStatusError
from livekit.plugins import smallestai as lk_smallest
from pipecat.services.smallest.stt import SmallestSTTService

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble
from tests.helpers import EXPECTED, fixture_16k, pcm16, running_daemon, same_words
from tests.livekit_events import stream_fixture
from tests.test_pipecat import refused, transcribed

pytestmark = pytest.mark.timeout(180)

KEY = "smallest-test-key"
FIXTURE = "three_commands.wav"


def pipecat_service(daemon: Daemon, api_key: str = KEY) -> SmallestSTTService:
    return SmallestSTTService(api_key=api_key, base_url=f"ws://127.0.0.1:{daemon.http_port}")


async def test_pipecat_service_gets_a_transcript_per_command() -> None:
    """Pipecat's default query (every flag it has, `pulse`, English) opens the stream; interims as the
    commands are heard, a final per command (its VAD's `finalize` or the daemon's endpointing)."""
    async with running_daemon(api_key=KEY) as daemon:
        frames = await transcribed(pipecat_service(daemon), FIXTURE)
    assert frames.interims, "interim transcripts reach Pipecat"


async def test_pipecat_service_with_a_wrong_key_gets_an_error_frame_with_the_401() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        frames = await refused(pipecat_service(daemon, "wrong"))
    assert "401" in frames.errors[0], frames.errors


def livekit_stt(daemon: Daemon, http: aiohttp.ClientSession, api_key: str = KEY, **options: object) -> lk_smallest.STT:
    base_url = f"http://127.0.0.1:{daemon.http_port}/waves/v1"
    return lk_smallest.STT(api_key=api_key, base_url=base_url, http_session=http, **options)  # type: ignore[arg-type]


async def test_livekit_stream_gets_a_final_per_command_and_the_servers_turns() -> None:
    """LiveKit's stream with its defaults (`vad_events`, keywords with weights): interims, a final per
    command, each turn opened by `speech_started` and closed by `speech_ended`; the keywords reach
    the engine without their weights."""
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine, api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        stt = livekit_stt(daemon, http, keywords=[("Zigbee", 2.0)])
        events = await stream_fixture(stt, FIXTURE, finals=3)
    finals = [final.text for final in events.finals() if final.text]
    assert same_words(EXPECTED[FIXTURE], finals), finals
    assert all(final.language == "en" for final in events.finals())
    assert events.turns().replace("i", "").startswith("SFE" * 3), events.turns()
    assert "i" in events.turns(), events.turns()
    assert engine.names and all(names[:1] == ("Zigbee",) for names in engine.names), engine.names


async def test_livekit_stream_with_a_wrong_key_gets_the_401() -> None:
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        with pytest.raises(APIStatusError) as refused:
            await stream_fixture(livekit_stt(daemon, http, "wrong"), FIXTURE, finals=1)
    assert refused.value.status_code == 401


async def test_livekit_recognize_uploads_the_buffer() -> None:
    """`recognize` posts a WAV to `/waves/v1/stt/?model=pulse`: the transcript, its language and its
    span from the daemon's words; a wrong key: the 401."""
    samples = pcm16(fixture_16k("lights_on.wav"), SAMPLE_RATE)
    frame = rtc.AudioFrame(samples, SAMPLE_RATE, 1, len(samples) // 2)
    options = APIConnectOptions(max_retry=0, timeout=20)
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        event = await livekit_stt(daemon, http).recognize([frame], conn_options=options)
        with pytest.raises(APIStatusError) as refused:
            await livekit_stt(daemon, http, "wrong").recognize([frame], conn_options=options)
    [speech] = event.alternatives
    assert same_words(EXPECTED["lights_on.wav"], [speech.text]) and speech.language == "en", speech
    assert 0 <= speech.start_time < speech.end_time <= len(samples) / 2 / SAMPLE_RATE, speech
    assert refused.value.status_code == 401
