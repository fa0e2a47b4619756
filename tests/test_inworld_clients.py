"""Inworld's streaming speech-to-text API (`/stt/v1/transcribe:streamBidirectional`) with its one real
client on PyPI, LiveKit's `inworld.STT` stream, against the real daemon (real Silero, real tiny.en),
pointed at it by its `base_url` (plain `http://`: the plugin makes it `ws://`). The key goes as
`Authorization: Basic KEY`, as the plugin sends it. No Pipecat service speaks Inworld's STT (its
Inworld services are TTS and realtime LLM), and Inworld's own Python SDK (`inworld-sdk`) is TTS only.
three_commands.wav at microphone pace: these tests are where a field the daemon leaves out or
mistypes shows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from livekit.agents import APIConnectOptions, APIStatusError
from livekit.plugins import inworld as lk_inworld

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.server import Daemon
from tests.helpers import EXPECTED, microphone_chunks, normalise, running_daemon, same_words
from tests.livekit_events import FRAME_S, LiveKitEvents, pushed, stream_fixture

pytestmark = pytest.mark.timeout(180)

KEY = "inworld-test-key"
FIXTURE = "three_commands.wav"


@asynccontextmanager
async def serving(**settings: object) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession]]:
    """The daemon (with a key), and the aiohttp session handed to the plugin."""
    async with running_daemon(api_key=KEY, **settings) as daemon, aiohttp.ClientSession() as http:
        yield daemon, http


def livekit_stt(daemon: Daemon, http: aiohttp.ClientSession, api_key: str = KEY, **options: object) -> lk_inworld.STT:
    base_url = f"http://127.0.0.1:{daemon.http_port}/"
    return lk_inworld.STT(api_key=api_key, base_url=base_url, http_session=http, **options)  # type: ignore[arg-type]


def errors(daemon: Daemon, code: str) -> float:
    return float(daemon.core.metrics.errors.labels(code)._value.get())


async def pushed_until_it_ends(stt: lk_inworld.STT, fixture: str, silence_s: float = 0) -> tuple[LiveKitEvents, bool]:
    """`fixture` (then `silence_s` of silence) through the plugin's stream at microphone pace until it
    takes no more; the stream's events until it ends (30 s at most after the audio), and whether it
    ended before all of the audio was pushed."""
    stream = stt.stream(conn_options=APIConnectOptions(max_retry=3, retry_interval=0.1, timeout=10))
    events = LiveKitEvents(stream)
    silence = [bytes(int(FRAME_S * SAMPLE_RATE) * 2)] * round(silence_s / FRAME_S)
    early = False
    try:
        for chunk in [*microphone_chunks(fixture, FRAME_S), *silence]:
            if not pushed(stream, chunk) or events.reading.done():
                early = True
                break
            await asyncio.sleep(FRAME_S)
        async with asyncio.timeout(30):
            await asyncio.shield(events.reading)
    finally:
        await stream.aclose()
        await stt.aclose()
    return events, early


async def test_livekit_stream_gets_a_final_per_command() -> None:
    """The plugin's defaults (inworld-stt-1, en-US, 16 kHz, a voice profile asked for, its turn-taking
    settings: checked, not applied): a final per command, each between its START_OF_SPEECH and
    END_OF_SPEECH, partials as interims; `end_input` sends `closeStream` and the daemon's Close 1000
    ends the stream cleanly."""
    async with serving() as (daemon, http):
        events = await stream_fixture(livekit_stt(daemon, http), FIXTURE, finals=3)
        await events.reading
    finals = [final.text for final in events.finals() if final.text]
    assert same_words(EXPECTED[FIXTURE], finals), finals
    assert events.turns().replace("i", "") == "SFE" * 3, events.turns()
    assert "i" in events.turns(), "partials reach LiveKit as interim transcripts"
    assert all(final.language == "en-US" for final in events.finals())


async def test_livekit_stream_with_a_wrong_key_fails_with_the_401() -> None:
    """The daemon refuses the upgrade with 401: the plugin raises its status error, not retried."""
    async with serving() as (daemon, http):
        with pytest.raises(APIStatusError) as refused:
            await stream_fixture(livekit_stt(daemon, http, "wrong"), FIXTURE, finals=1)
    assert refused.value.status_code == 401 and not refused.value.retryable


async def test_livekit_stream_with_a_language_the_engine_lacks_ends_with_nothing() -> None:
    """`language="fr-FR"`, which tiny.en cannot honour: the daemon's error answers the config, then the
    Close 1008. The plugin reads no error message and takes a Close for the end of its stream: the
    stream ends with no event and no error (docs/inworld.md: look in the daemon's log and metrics)."""
    async with serving() as (daemon, http):
        events, _ = await pushed_until_it_ends(livekit_stt(daemon, http, language="fr-FR"), "lights_on.wav")
        refusals = errors(daemon, "unsupported_language")
    assert events.events == [] and events.reading.exception() is None, events.turns()
    assert refusals == 1


async def test_livekit_stream_of_silence_past_the_idle_timeout_still_hears_the_next_command() -> None:
    """The plugin takes the idle timeout's Close for the end of its stream and does not reconnect
    (docs/inworld.md), so Inworld's idle clock measures audio missing, not silence: 5 s of silence
    at microphone pace (over twice idle_timeout_s), then a command, whose final comes on the one
    connection."""
    async with serving(idle_timeout_s=2) as (daemon, http):
        events = await stream_fixture(livekit_stt(daemon, http), "lights_on.wav", finals=1, lead_silence_s=5)
        streams = daemon.core.metrics.sessions.labels("inworld")._value.get()
        idle = errors(daemon, "idle_timeout")
    finals = [final.text for final in events.finals() if final.text]
    assert same_words(EXPECTED["lights_on.wav"], finals), (finals, events.turns())
    assert streams == 1 and idle == 0, (streams, idle)


async def test_livekit_flush_is_an_end_turn_whose_final_comes_with_no_more_audio() -> None:
    """The plugin's `flush()` (LiveKit's manual turn commit, push-to-talk) sends `endTurn`: 1.5 s into
    the first command (it ends at 2.1 s) and with no more audio pushed, the daemon ends the turn and
    the plugin emits its final and END_OF_SPEECH; `end_input` then ends the stream cleanly."""
    async with serving() as (daemon, http):
        stt = livekit_stt(daemon, http)
        stream = stt.stream(conn_options=APIConnectOptions(max_retry=0, timeout=10))
        events = LiveKitEvents(stream)
        try:
            for chunk in microphone_chunks(FIXTURE, FRAME_S)[:15]:
                assert pushed(stream, chunk)
                await asyncio.sleep(FRAME_S)
            stream.flush()
            await events.wait_for(lambda: any(final.text for final in events.finals()))
            stream.end_input()
            async with asyncio.timeout(30):
                await asyncio.shield(events.reading)
        finally:
            await stream.aclose()
            await stt.aclose()
    (final,) = [final.text for final in events.finals() if final.text]
    assert normalise(final).startswith("turn off the bedroom"), final
    assert events.turns().replace("i", "") == "SFE" and events.reading.exception() is None, events.turns()
