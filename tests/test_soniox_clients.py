"""Soniox's real-time API (`/transcribe-websocket`) with the three real Soniox clients, against the
real daemon (real Silero, real tiny.en): Soniox's SDK (`soniox`' realtime client), LiveKit's
`soniox.STT` stream and Pipecat's `SonioxSTTService` behind its own Silero VAD. Each is pointed at
the daemon on 127.0.0.1 by its URL alone, with the key as it sends it (`Authorization: Bearer`),
and fed three_commands.wav at microphone pace. Each sends its own configuration and rebuilds the
transcript from the tokens its own way: these tests are where a field the daemon leaves out or
mistypes, or a default it refuses, shows."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from livekit.agents import APIStatusError
from livekit.agents import stt as lk_stt
from livekit.plugins import soniox as lk_soniox
from pipecat.frames.frames import TranscriptionFrame
from pipecat.services.soniox.stt import SonioxContextObject, SonioxSTTService
from pipecat.transcriptions.language import Language
from soniox import AsyncSonioxClient
from soniox.types import RealtimeEvent, RealtimeSTTConfig

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.protocols import soniox
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble
from tests.helpers import EXPECTED, microphone_chunks, normalise, running_daemon, same_words
from tests.livekit_events import stream_fixture
from tests.test_pipecat import running_pipeline, speak, transcribed

pytestmark = pytest.mark.timeout(180)

KEY = "soniox-test-key"
FIXTURE = "three_commands.wav"
FRAME_S = 0.1
"""100 ms of audio a message, sent as a microphone delivers it."""


def ws_url(daemon: Daemon) -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{soniox.PATH}"


async def sdk_session(
    daemon: Daemon,
    config: RealtimeSTTConfig,
    act: Callable[[Any, int], Any] | None = None,
    api_key: str = KEY,
    speak: bool = True,
) -> list[RealtimeEvent]:
    """The SDK's realtime session: the fixture at microphone pace if `speak` (`act(session, index)`
    after each chunk), then `finish`; every event until the server closes."""
    client = AsyncSonioxClient(api_key=api_key, websocket_base_url=ws_url(daemon))
    events: list[RealtimeEvent] = []
    async with client.realtime.stt.connect(config=config) as session:

        async def read() -> None:
            async for event in session.receive_events():
                events.append(event)

        reading = asyncio.create_task(read())
        for index, chunk in enumerate(microphone_chunks(FIXTURE, FRAME_S) if speak else []):
            await session.send_byte_chunk(chunk)
            if act is not None:
                await act(session, index)
            await asyncio.sleep(FRAME_S)
        if speak:
            await session.finish()
        async with asyncio.timeout(60):
            await reading
    return events


def sdk_config(**options: Any) -> RealtimeSTTConfig:
    return RealtimeSTTConfig(
        model="stt-rt-v5", audio_format="pcm_s16le", sample_rate=SAMPLE_RATE, num_channels=1, **options
    )


def final_tokens(events: list[RealtimeEvent]) -> list[Any]:
    return [token for event in events for token in event.tokens if token.is_final]


async def test_sdk_streams_tokens_endpoints_and_finished() -> None:
    """The SDK's typed events: non-final tokens as the commands are heard, final tokens once each
    with `<end>` after each command, the final tokens joined being the transcript, `finished` last."""
    async with running_daemon(api_key=KEY) as daemon:
        events = await sdk_session(
            daemon, sdk_config(enable_endpoint_detection=True, enable_language_identification=True)
        )
    assert events[-1].finished and all(event.error_code is None for event in events)
    finals = final_tokens(events)
    words = [token for token in finals if token.text != "<end>"]
    assert [token.text for token in finals].count("<end>") == 3
    transcript = "".join(token.text for token in words)
    assert same_words([" ".join(EXPECTED[FIXTURE])], [transcript]), transcript
    assert transcript == transcript.strip() and "  " not in transcript
    assert all(token.language == "en" and token.start_ms is not None for token in words)
    assert any(not token.is_final for event in events for token in event.tokens), "partials as non-final tokens"


async def test_sdk_finalize_gets_the_command_so_far_with_fin() -> None:
    """`finalize` midway through the first command: its words so far come final (the last maybe cut
    in two), then `<fin>`; the rest of the stream goes on."""

    async def finalize_once(session: Any, index: int) -> None:
        if index == 12:
            await session.finalize()

    async with running_daemon(api_key=KEY) as daemon:
        events = await sdk_session(daemon, sdk_config(), finalize_once)
    texts = [token.text for token in final_tokens(events)]
    assert texts.count("<fin>") == 1 and texts.index("<fin>") > 0, texts
    first = normalise("".join(texts[: texts.index("<fin>")]))
    assert first.startswith("turn off"), first
    rest = normalise("".join(texts[texts.index("<fin>") + 1 :]))
    assert "what time is it" in rest and "garage door" in rest, rest


async def test_sdk_reads_a_refused_configuration_as_an_error_event() -> None:
    """`audio_format` `auto` (the SDK's default): Soniox's 400 with the daemon's sentence."""
    config = RealtimeSTTConfig(model="stt-rt-v5")
    async with running_daemon(api_key=KEY) as daemon:
        events = await sdk_session(daemon, config, speak=False)
    [error] = [event for event in events if event.error_code is not None]
    assert error.error_code == 400 and "audio_format 'auto'" in (error.error_message or "")


async def test_sdk_with_a_wrong_key_reads_the_401() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        events = await sdk_session(daemon, sdk_config(), api_key="wrong", speak=False)
    assert [(event.error_code, event.error_message) for event in events] == [(401, "the API key is not valid")]


def livekit_stt(daemon: Daemon, http: aiohttp.ClientSession, api_key: str = KEY, **options: Any) -> lk_soniox.STT:
    return lk_soniox.STT(
        api_key=api_key, base_url=ws_url(daemon), http_session=http, params=lk_soniox.STTOptions(**options)
    )


async def test_livekit_stream_with_its_defaults_gets_a_speech_per_command() -> None:
    """LiveKit's defaults (endpoint detection, language identification, its endpoint delay):
    START_OF_SPEECH, interims, then a FINAL_TRANSCRIPT and END_OF_SPEECH for each command, whose
    text, times and language come from the tokens."""
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        events = await stream_fixture(livekit_stt(daemon, http), FIXTURE, finals=3)
    finals = [final.text for final in events.finals()]
    assert same_words(EXPECTED[FIXTURE], finals), finals
    kinds = lk_stt.SpeechEventType
    assert len(events.of(kinds.START_OF_SPEECH)) == 3 and len(events.of(kinds.END_OF_SPEECH)) == 3
    assert events.of(kinds.INTERIM_TRANSCRIPT)
    for event in events.of(kinds.FINAL_TRANSCRIPT):
        data = event.alternatives[0]
        assert data.language == "en" and 0 <= data.start_time < data.end_time


async def test_livekit_context_and_hints_reach_the_engine() -> None:
    engine = ContextRecordingEngineDouble()
    context = lk_soniox.ContextObject(terms=["Aoife", "Calloway"], text="the bedroom")
    async with running_daemon(engine, api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        stt = livekit_stt(daemon, http, language_hints=["en"], language_hints_strict=True, context=context)
        events = await stream_fixture(stt, FIXTURE, finals=3)
    assert same_words(EXPECTED[FIXTURE], [final.text for final in events.finals()])
    assert engine.names and all(names[:2] == ("Aoife", "Calloway") for names in engine.names)
    assert set(engine.languages) == {"en"} and all("the bedroom" in context for context in engine.contexts)


async def test_livekit_stream_fails_with_the_daemons_401() -> None:
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        with pytest.raises(APIStatusError) as failure:
            await stream_fixture(livekit_stt(daemon, http, api_key="wrong"), FIXTURE, finals=1)
    assert failure.value.status_code == 401 and "the API key is not valid" in str(failure.value)


async def test_livekit_stream_fails_on_refused_diarization_with_the_daemons_sentence() -> None:
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        with pytest.raises(APIStatusError) as failure:
            await stream_fixture(livekit_stt(daemon, http, enable_speaker_diarization=True), FIXTURE, finals=1)
    assert failure.value.status_code == 400 and "speaker diarization" in str(failure.value)


def pipecat_service(daemon: Daemon, api_key: str = KEY, **options: Any) -> SonioxSTTService:
    return SonioxSTTService(api_key=api_key, url=ws_url(daemon), **options)


def pipecat_transcripts(frames: Any) -> list[TranscriptionFrame]:
    return [frame for frame in frames.frames if isinstance(frame, TranscriptionFrame)]


async def test_pipecat_service_finalizes_at_its_vads_stops() -> None:
    """Pipecat's default: endpoint detection off, a `finalize` at each stop of its VAD, answered by
    the command's final tokens and `<fin>`: one finalized transcript per command."""
    async with running_daemon(api_key=KEY) as daemon:
        frames = await transcribed(pipecat_service(daemon), FIXTURE)
    assert all(frame.finalized for frame in pipecat_transcripts(frames))
    assert frames.interims, "non-final tokens reach Pipecat as interim transcripts"


async def test_pipecat_service_with_sonioxs_endpoints_its_language_and_context() -> None:
    """`vad_force_turn_endpoint=False`: the daemon's `<end>` ends each turn; `Language.EN` as a
    hint, the context's terms bias each decode; with language identification each transcript says
    its language."""
    engine = ContextRecordingEngineDouble()
    settings = SonioxSTTService.Settings(
        language_hints=[Language.EN],
        enable_language_identification=True,
        context=SonioxContextObject(terms=["Aoife", "Calloway"]),
        max_endpoint_delay_ms=1000,
    )
    async with running_daemon(engine, api_key=KEY) as daemon:
        stt = pipecat_service(daemon, vad_force_turn_endpoint=False, settings=settings)
        async with running_pipeline(stt) as (worker, frames):
            await speak(worker, FIXTURE)
            await frames.wait_for(finals=3)
    assert frames.errors == []
    assert same_words(EXPECTED[FIXTURE], frames.finals), frames.finals
    assert [frame.language for frame in pipecat_transcripts(frames)] == [Language.EN] * 3
    assert engine.names and all(names[:2] == ("Aoife", "Calloway") for names in engine.names)


async def test_pipecat_service_with_a_wrong_key_gets_an_error_frame_with_the_401() -> None:
    async with (
        running_daemon(api_key=KEY) as daemon,
        running_pipeline(pipecat_service(daemon, "wrong")) as (_worker, frames),
    ):
        await frames.wait_for(errors=1)
    assert frames.errors[0] == "Error: 401 (_receive_messages) - the API key is not valid", frames.errors
    assert frames.finals == []
