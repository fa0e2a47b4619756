"""Fireworks AI's streaming transcription API (`/v1/audio/transcriptions/streaming`) with the real
client, LiveKit's `fireworksai.STT`, against the real daemon (real Silero, real tiny.en): pointed at
the daemon by its `base_url` (`ws://HOST:PORT/v1`), the key in its `Authorization` header as it
sends it, the fixtures pushed at microphone pace. The plugin ends a turn where a segment's last word
is final, and ends its stream with the checkpoint `final`: these tests are where a field the daemon
leaves out or mistypes shows. Fireworks' own SDK (`fireworks-ai` 1.2.30) has no audio client at
all, and the plugin has no upload path (its `recognize` raises), so this is the one client."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import aiohttp
import pytest
from livekit.agents import APIConnectionError, APIConnectOptions, APIStatusError
from livekit.agents import stt as lk_stt
from livekit.plugins import fireworksai

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble, FirstFinalIsEmptyEngineDouble
from tests.helpers import EXPECTED, microphone_chunks, running_daemon, same_words
from tests.livekit_events import FRAME_S, LiveKitEvents, pushed, stream_fixture

pytestmark = pytest.mark.timeout(180)

KEY = "fireworks-test-key"
FIXTURE = "three_commands.wav"


def livekit_stt(daemon: Daemon, api_key: str = KEY, **options: object) -> fireworksai.STT:
    """The plugin pointed at the daemon; its own aiohttp session (it needs one outside a LiveKit job)."""
    base_url = f"ws://127.0.0.1:{daemon.http_port}/v1"
    http = aiohttp.ClientSession()
    return fireworksai.STT(api_key=api_key, base_url=base_url, http_session=http, **options)  # type: ignore[arg-type]


async def closed(stt: fireworksai.STT) -> None:
    await stt.session.close()


async def test_livekit_stream_gets_a_final_per_command_and_ends_cleanly() -> None:
    """The plugin's defaults (verbose_json, text_timeout_seconds 1.0) with a language, a prompt and
    both timestamp granularities: a final per command, interims before each, one START_OF_SPEECH
    and, once `end_input` sent the checkpoint `final` and the daemon closed 1000, one END_OF_SPEECH
    (the plugin's own turn shape); the prompt and the language reach the engine."""
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine, api_key=KEY) as daemon:
        stt = livekit_stt(daemon, language="en", prompt="Aoife's lights", timestamp_granularities=["word", "segment"])
        try:
            events = await stream_fixture(stt, FIXTURE, finals=3, until_end=True)
        finally:
            await closed(stt)
    finals = [final.text for final in events.finals() if final.text]
    assert same_words(EXPECTED[FIXTURE], finals), finals
    assert events.turns().replace("i", "") == "SFFFE", events.turns()
    assert "iF" in events.turns(), "partials reach LiveKit as interim transcripts"
    assert set(engine.languages) == {"en"}
    assert engine.contexts and all("Aoife's lights" in context for context in engine.contexts), engine.contexts


async def test_livekit_stream_with_a_wrong_key_fails_at_the_upgrade_and_is_not_retried() -> None:
    """The daemon's 401 before the upgrade: aiohttp's handshake error, which the plugin does not retry."""
    async with running_daemon(api_key=KEY) as daemon:
        stt = livekit_stt(daemon, "wrong")
        try:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await stream_fixture(stt, FIXTURE, finals=1)
        finally:
            await closed(stt)
    assert refused.value.status == 401


@pytest.mark.parametrize("options", [{"skip_vad": True}, {"language": "fr"}, {"temperature": 2.0}])
async def test_livekit_stream_with_a_refused_setting_fails_at_the_upgrade(options: dict[str, object]) -> None:
    """A setting the daemon cannot honour (no VAD; a language tiny.en lacks; a temperature out of
    range) is the 400 before the upgrade, not retried; nothing reaches the engine."""
    async with running_daemon(api_key=KEY) as daemon:
        stt = livekit_stt(daemon, **options)
        try:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await stream_fixture(stt, FIXTURE, finals=1)
        finally:
            await closed(stt)
        assert daemon.core.metrics.errors.labels("invalid_query_parameter")._value.get() == 1
    assert refused.value.status == 400


async def pause_between(
    stt: fireworksai.STT, before: str, pause_s: float, after: str, retries: int, connect_timeout: float
) -> tuple[LiveKitEvents, list[lk_stt.STTError]]:
    """`before`, `pause_s` of silence, `after` through the plugin's stream at microphone pace, until
    the finals of both (or the stream fails); the events and the errors the plugin emitted."""
    errors: list[lk_stt.STTError] = []
    stt.on("error", errors.append)
    options = APIConnectOptions(max_retry=retries, retry_interval=0.1, timeout=connect_timeout)
    stream = stt.stream(conn_options=options)
    events = LiveKitEvents(stream)
    silence = [bytes(int(FRAME_S * SAMPLE_RATE) * 2)] * round(pause_s / FRAME_S)
    chunks = [*microphone_chunks(before, FRAME_S), *silence, *microphone_chunks(after, FRAME_S)]
    wanted = len(EXPECTED[before]) + len(EXPECTED[after])
    try:
        for chunk in chunks:
            if not pushed(stream, chunk):
                break
            await asyncio.sleep(FRAME_S)
        await events.wait_for(lambda: len([final for final in events.finals() if final.text]) >= wanted)
        stream.end_input()
        async with asyncio.timeout(30):  # read to its end: closed before, it leaves an exception unretrieved
            await events.reading
    finally:
        await stream.aclose()
        await stt.aclose()
        await closed(stt)
    return events, errors


async def test_livekit_stream_reconnects_after_the_idle_timeout_and_goes_on() -> None:
    """The daemon's idle timeout sends its error (which the plugin does not read: no segments) and
    closes 1001; the plugin takes the unexpected Close as a retryable error (recoverable), connects
    again, and the commands after the pause are transcribed on the new connection. The pause is
    shorter than two idle timeouts: the new connection hears speech before it times out too."""
    async with running_daemon(api_key=KEY, idle_timeout_s=4) as daemon:
        events, errors = await pause_between(livekit_stt(daemon), "lights_on.wav", 5, FIXTURE, 3, 3)
    finals = [final.text for final in events.finals() if final.text]
    assert same_words([*EXPECTED["lights_on.wav"], *EXPECTED[FIXTURE]], finals), (finals, events.turns())
    assert len(errors) == 1 and errors[0].recoverable, errors
    assert isinstance(errors[0].error, APIStatusError) and errors[0].error.status_code == 1001
    assert "idle_timeout" in str(errors[0].error.body), errors[0].error.body


async def test_livekit_stream_gives_up_when_a_silence_outlasts_its_retries() -> None:
    """A silence of several idle timeouts: each new connection hears nothing and is closed 1001
    again, each within the plugin's connect timeout, so its retries run out and the stream fails
    (docs/fireworks.md: set idle_timeout_s over the pauses a voice agent has)."""
    async with running_daemon(api_key=KEY, idle_timeout_s=1) as daemon:
        stt = livekit_stt(daemon)
        with pytest.raises(APIConnectionError, match="failed to recognize speech after 2 attempts"):
            await pause_between(stt, "lights_on.wav", 6, FIXTURE, 2, 10)


async def test_livekit_stream_with_vad_kwargs_is_taken() -> None:
    """The plugin's `vad_kwargs` dict goes through `urlencode(..., doseq=True)`, which iterates the
    dict: the URL carries its names alone, one `vad_kwargs` each (`vad_kwargs=threshold&vad_kwargs=
    min_silence_duration_ms`). Checked, not applied: the stream is served, not refused."""
    async with running_daemon(api_key=KEY) as daemon:
        stt = livekit_stt(daemon, vad_kwargs={"threshold": 0.15, "min_silence_duration_ms": 300})
        try:
            events = await stream_fixture(stt, "lights_on.wav", finals=1, until_end=True)
        finally:
            await closed(stt)
    finals = [final.text for final in events.finals() if final.text]
    assert same_words(EXPECTED["lights_on.wav"], finals), finals


async def test_livekit_stream_ended_by_end_input_leaves_no_exception_unretrieved() -> None:
    """`end_input`, then the stream read to its end (the daemon's echo of the checkpoint `final`
    and its Close 1000) as an agent reads it: the plugin's connection loop ends on its own. Closed
    before that, the plugin leaves its `gather` of a cancelled send and receive with an exception
    never retrieved, which asyncio logs with its traceback when the garbage collector frees it; on
    CPython 3.11 that traceback's `ast.parse`, inside a collection run by another `ast.parse`
    (pytest rewriting Hypothesis at the session's end), made pytest exit 1 after every test passed."""
    contexts: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    try:
        async with running_daemon(api_key=KEY) as daemon:
            stt = livekit_stt(daemon)
            try:
                turns = (await stream_fixture(stt, "lights_on.wav", finals=1, until_end=True)).turns()
            finally:
                await closed(stt)
            del stt
            gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert [context.get("message") for context in contexts] == []
    assert turns.replace("i", "") == "SFE", turns


async def test_livekit_final_after_an_utterance_whose_final_had_no_words_has_no_leading_space() -> None:
    """A first utterance whose partials had words but whose final has none: the plugin keeps each
    segment's text until a final segment clears it, and an empty final does not (no last word is
    final), so a segment of its own left "" that the next final was joined to: " Turn on ..."."""
    async with running_daemon(FirstFinalIsEmptyEngineDouble(), api_key=KEY) as daemon:
        stt = livekit_stt(daemon)
        try:
            events = await stream_fixture(stt, "three_commands.wav", finals=2, until_end=True)
        finally:
            await closed(stt)
    finals = [final.text for final in events.finals() if final.text]
    assert finals and all(text == text.strip() for text in finals), finals
    interims = [event.alternatives[0].text for event in events.of(lk_stt.SpeechEventType.INTERIM_TRANSCRIPT)]
    assert all(text == text.strip() for text in interims), interims
