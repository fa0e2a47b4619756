"""AssemblyAI's Universal-Streaming API (`/v3/ws`) with the three real AssemblyAI clients, against the
real daemon (real Silero, real tiny.en): the official SDK (assemblyai's async streaming client),
LiveKit's `assemblyai.STT` stream and Pipecat's `AssemblyAISTTService` behind its own Silero VAD.
Each is pointed at the daemon on 127.0.0.1 and fed three_commands.wav at microphone pace, with the
key in `Authorization` alone, as they send it. Each client parses the messages its own way and sends
the query parameters it sends: these tests are where a field the daemon leaves out or mistypes, or
a parameter it refuses, shows."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from assemblyai.streaming.v3 import (
    AsyncStreamingClient,
    BeginEvent,
    Encoding,
    NoiseSuppressionModel,
    SpeechModel,
    SpeechStartedEvent,
    StreamingClientOptions,
    StreamingError,
    StreamingEvents,
    StreamingMode,
    StreamingParameters,
    StreamingSessionParameters,
    TerminationEvent,
    TurnEvent,
    WarningEvent,
)
from assemblyai.streaming.v3.models import StreamingDomain
from livekit.agents import stt as lk_stt
from livekit.plugins import assemblyai as lk_assemblyai
from pipecat.frames.frames import TranscriptionFrame
from pipecat.services.assemblyai.stt import AssemblyAISTTService
from pipecat.transcriptions.language import Language

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.protocols import assemblyai
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble
from tests.helpers import EXPECTED, fixture_16k, pcm16, running_daemon, same_words
from tests.livekit_events import stream_fixture
from tests.test_deepgram_clients import FIXTURE, FRAME_S, livekit_stream
from tests.test_deepgram_flux_clients import SILENCE_AFTER_FIRST_COMMAND
from tests.test_pipecat import running_pipeline, settings_changed_between_commands, speak

pytestmark = [
    pytest.mark.timeout(180),
    # assemblyai 1.8 reads a ConnectionClosed's code and reason, which websockets 13.1 deprecated
    pytest.mark.filterwarnings("ignore:ConnectionClosed.code is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:ConnectionClosed.reason is deprecated:DeprecationWarning"),
]

KEY = "assemblyai-test-key"
FORCED_AT_S = 1.2
"""Where the SDK's `ForceEndpoint` is sent: in the first command ("turn off the bedroom lights"),
which the daemon would end at about 2 s."""


def sdk_client(daemon: Daemon, api_key: str = KEY) -> tuple[AsyncStreamingClient, list[Any]]:
    """The SDK's async client on the daemon (no retry), and the list its handlers fill: every event
    in order, as the SDK typed it (a `StreamingError` for an error)."""
    options = StreamingClientOptions(
        api_key=api_key,
        api_host=f"ws://127.0.0.1:{daemon.http_port}",
        connect_timeout=10,
        max_connection_retries=0,
    )
    client = AsyncStreamingClient(options)
    events: list[Any] = []
    for kind in StreamingEvents:
        client.on(kind, lambda _client, event: events.append(event))
    return client, events


async def sdk_stream(
    client: AsyncStreamingClient, fixture: str = FIXTURE, force_endpoint_at: float | None = None
) -> None:
    """A fixture through a connected SDK client in 100 ms frames at microphone pace (a
    `ForceEndpoint` after `force_endpoint_at` seconds of it, if asked), then `Terminate`: the SDK
    waits for `Termination`."""
    audio = pcm16(fixture_16k(fixture), SAMPLE_RATE)
    step = int(FRAME_S * SAMPLE_RATE) * 2
    for offset in range(0, len(audio), step):
        await client.stream(audio[offset : offset + step])
        await asyncio.sleep(FRAME_S)
        if force_endpoint_at is not None and offset + step == int(force_endpoint_at * SAMPLE_RATE) * 2:
            await client.force_endpoint()
    await terminate(client)


async def terminate(client: AsyncStreamingClient) -> None:
    """`Terminate`, and the SDK waits for `Termination` (5 s at most) and closes; a message its read
    loop failed on (one that does not validate as its model: the SDK loses the rest) fails the test."""
    await client.disconnect(terminate=True)
    reading = client._read_task  # the SDK leaves the failure in its task, unreported
    if reading is not None and reading.done() and not reading.cancelled() and reading.exception() is not None:
        raise AssertionError(f"the SDK failed on a message: {reading.exception()}") from reading.exception()


def shape(events: list[Any]) -> str:
    """The events as letters: B Begin, S SpeechStarted, p a partial Turn, F a final Turn, W Warning,
    T Termination, E an error, ? anything else."""
    letters = {BeginEvent: "B", SpeechStartedEvent: "S", WarningEvent: "W", TerminationEvent: "T", StreamingError: "E"}
    return "".join(
        ("F" if event.end_of_turn else "p") if isinstance(event, TurnEvent) else letters.get(type(event), "?")
        for event in events
    )


def check_turns(turns: list[TurnEvent], format_turns: bool) -> None:
    """Each Turn's `turn_order` is the count of finals before it; its words are its transcript's,
    final in a final; only a final is formatted, with `format_turns`."""
    finals_before = 0
    for turn in turns:
        assert turn.turn_order == finals_before, turn
        finals_before += turn.end_of_turn
        assert [word.text for word in turn.words] == turn.transcript.split()
        assert all(word.word_is_final == turn.end_of_turn for word in turn.words)
        assert all(0.0 <= word.confidence <= 1.0 and word.start <= word.end for word in turn.words)
        assert turn.turn_is_formatted == (turn.end_of_turn and format_turns)


async def test_sdk_streams_typed_begin_speech_started_turns_and_termination(caplog: pytest.LogCaptureFixture) -> None:
    """Every message parses into its typed model (the SDK logs a type it does not know, or a warning
    or error, and its read loop dies on a model that fails to validate, losing `Termination`):
    Begin, then per command SpeechStarted, partial Turns and one final, then Termination."""
    caplog.set_level(logging.WARNING, logger="assemblyai")
    async with running_daemon(api_key=KEY) as daemon:
        client, events = sdk_client(daemon)
        await client.connect(StreamingParameters(sample_rate=SAMPLE_RATE, format_turns=True))
        await sdk_stream(client)
    assert [record.getMessage() for record in caplog.records if record.name.startswith("assemblyai")] == []
    assert re.fullmatch(r"B(Sp+F){3}T", shape(events)), shape(events)
    begin, termination = events[0], events[-1]
    assert begin.id and begin.expires_at > datetime.now(UTC)
    seconds = fixture_16k(FIXTURE).size / SAMPLE_RATE
    assert termination.audio_duration_seconds == pytest.approx(seconds, abs=0.5)
    assert termination.session_duration_seconds is not None and termination.session_duration_seconds >= 0
    turns = [event for event in events if isinstance(event, TurnEvent)]
    check_turns(turns, format_turns=True)
    finals = [turn for turn in turns if turn.end_of_turn]
    assert same_words(EXPECTED[FIXTURE], [turn.transcript for turn in finals])
    assert [turn.end_of_turn_confidence for turn in finals] == [1.0] * 3
    starts = [event.timestamp for event in events if isinstance(event, SpeechStartedEvent)]
    assert starts == sorted(starts) and all(
        start <= turn.words[0].start for start, turn in zip(starts, finals, strict=True)
    ), "each command's SpeechStarted is at or before its first word"


async def test_sdk_reports_a_wrong_key_as_the_handshakes_401() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        client, events = sdk_client(daemon, "wrong")
        await client.connect(StreamingParameters(sample_rate=SAMPLE_RATE))
        await terminate(client)
    [error] = events
    assert isinstance(error, StreamingError) and error.code == 401, error


@pytest.mark.parametrize(
    ("parameters", "parameter"),
    [
        (StreamingParameters(sample_rate=SAMPLE_RATE, encoding=Encoding.aac), "encoding"),
        (StreamingParameters(sample_rate=SAMPLE_RATE, speaker_labels=True), "speaker_labels"),
        (StreamingParameters(sample_rate=SAMPLE_RATE, webhook_url="http://127.0.0.1:1/hook"), "webhook_url"),
    ],
    ids=["encoding aac", "speaker_labels", "webhook_url"],
)
async def test_sdk_reports_a_refused_parameter_as_error_3006_naming_it(
    parameters: StreamingParameters, parameter: str
) -> None:
    """The upgrade succeeds and `Error` (3006) comes first, as from AssemblyAI: the SDK's on_error
    gets it once (the Close after it is not reported again) and no session begins."""
    async with running_daemon(api_key=KEY) as daemon:
        client, events = sdk_client(daemon)
        await client.connect(parameters)
        await terminate(client)
    [error] = events
    assert isinstance(error, StreamingError) and error.code == assemblyai.INPUT_INVALID, error
    assert str(error).startswith(f"{parameter}: "), error


async def test_sdk_every_parameter_it_sends_is_accepted() -> None:
    """Each of the SDK's connection parameters this server can take, given a value: the session
    begins, and ends with Termination, no error or warning."""
    parameters = StreamingParameters(
        sample_rate=SAMPLE_RATE,
        encoding=Encoding.pcm_s16le,
        speech_model=SpeechModel.universal_3_6_pro,
        language_codes=["en"],
        language_detection=False,
        domain=StreamingDomain.medical,
        inactivity_timeout=30,
        speaker_labels=False,
        speaker_labels_revision_interval_ms=1000,
        max_speakers=2,
        voice_focus=NoiseSuppressionModel.near_field,
        voice_focus_threshold=0.5,
        continuous_partials=True,
        include_partial_turns=True,
        customer_support_audio_capture=False,
        redact_pii=False,
        mode=StreamingMode.balanced,
        end_of_turn_confidence_threshold=0.4,
        min_turn_silence=100,
        max_turn_silence=1000,
        vad_threshold=0.5,
        format_turns=True,
        keyterms_prompt=["Aoife"],
        filter_profanity=False,
        prompt="A home assistant's voice commands.",
        agent_context="Which lights?",
        interruption_delay=500,
        turn_left_pad_ms=0,
        session_heartbeat=False,
        acknowledge_silence=False,
    )
    async with running_daemon(api_key=KEY) as daemon:
        client, events = sdk_client(daemon)
        await client.connect(parameters)
        await terminate(client)
    assert shape(events) == "BT", events


async def test_sdk_force_endpoint_ends_the_turn_there_and_the_stream_goes_on() -> None:
    """`ForceEndpoint` mid-command: that turn's final ends where the audio sent had got to (not at
    the command's end), and the rest of the stream is transcribed as before."""
    async with running_daemon(api_key=KEY) as daemon:
        client, events = sdk_client(daemon)
        await client.connect(StreamingParameters(sample_rate=SAMPLE_RATE, format_turns=True))
        await sdk_stream(client, force_endpoint_at=FORCED_AT_S)
    turns = [event for event in events if isinstance(event, TurnEvent)]
    check_turns(turns, format_turns=True)
    finals = [turn for turn in turns if turn.end_of_turn]
    forced = finals[0]
    assert forced.words and forced.words[-1].end <= FORCED_AT_S * 1000 + FRAME_S * 1000, forced
    assert same_words(EXPECTED[FIXTURE][1:], [turn.transcript for turn in finals[-2:]])
    assert isinstance(events[-1], TerminationEvent) and "E" not in shape(events) and "W" not in shape(events)


async def test_sdk_update_configuration_replaces_keyterms_and_languages_and_applies_format_turns() -> None:
    """`UpdateConfiguration` with keyterms replaces them for the next utterance, and so does one with
    languages (`multi`: the engine detects, and the final says its language); a KeepAlive is taken
    silently; `format_turns` then applies to the command's final. No warning."""
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine, api_key=KEY) as daemon:
        client, events = sdk_client(daemon)
        await client.connect(StreamingParameters(sample_rate=SAMPLE_RATE, keyterms_prompt=["Calloway"]))
        await client.set_params(StreamingSessionParameters(keyterms_prompt=["Aoife"]))
        await client.set_params(StreamingSessionParameters(language_codes=["multi"]))
        await client.keep_alive()
        await client.set_params(StreamingSessionParameters(format_turns=True))
        await sdk_stream(client, "lights_on.wav")
    assert re.fullmatch(r"BSp+FT", shape(events)), shape(events)
    assert [names[:1] for names in engine.names] == [("Aoife",)] and engine.languages == [None]
    [final] = [event for event in events if isinstance(event, TurnEvent) and event.end_of_turn]
    assert final.turn_is_formatted and final.language_code == "en"
    assert same_words(EXPECTED["lights_on.wav"], [final.transcript])


async def test_livekit_update_options_language_codes_between_commands() -> None:
    """LiveKit's `update_options(language_codes=...)` mid-call (an agent switching language), sent
    between the first command and the second: the first is decoded in the language the stream began
    with, the others with the new (`multi`: the engine detects); every final comes, no error."""
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine, api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        url = f"ws://127.0.0.1:{daemon.http_port}"
        stt = lk_assemblyai.STT(api_key=KEY, base_url=url, http_session=http, language_codes=["en"])

        async def switch(index: int) -> None:
            if index == SILENCE_AFTER_FIRST_COMMAND:
                stt.update_options(language_codes=["multi"])

        events = await stream_fixture(stt, FIXTURE, finals=3, after_chunk=switch)
    assert engine.languages == ["en", None, None], engine.languages
    assert same_words(EXPECTED[FIXTURE], [final.text for final in events.finals()]), events.turns()
    assert [final.language for final in events.finals()] == ["en"] * 3


@pytest.mark.parametrize("options", [{}, {"format_turns": True}], ids=["defaults", "format_turns"])
async def test_livekit_stream_gets_a_turn_per_command(options: dict[str, Any]) -> None:
    """LiveKit's defaults: universal-3-6-pro, language_detection, min and max_turn_silence 100, 50 ms
    messages, Terminate at the end of input; interims from each Turn's `words`, a final and
    END_OF_SPEECH from `end_of_turn`. With `format_turns` it takes only a formatted final."""
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        url = f"ws://127.0.0.1:{daemon.http_port}"
        events = await livekit_stream(lk_assemblyai.STT(api_key=KEY, base_url=url, http_session=http, **options))
    kinds = lk_stt.SpeechEventType
    finals = [e.alternatives[0] for e in events if e.type == kinds.FINAL_TRANSCRIPT]
    assert same_words(EXPECTED[FIXTURE], [final.text for final in finals])
    assert all(0.0 <= final.confidence <= 1.0 and final.start_time <= final.end_time for final in finals)
    turns = [e.type for e in events if e.type in (kinds.START_OF_SPEECH, kinds.FINAL_TRANSCRIPT, kinds.END_OF_SPEECH)]
    assert turns == [kinds.START_OF_SPEECH, kinds.FINAL_TRANSCRIPT, kinds.END_OF_SPEECH] * 3
    assert any(e.type == kinds.INTERIM_TRANSCRIPT for e in events)


def pipecat_service(daemon: Daemon, vad_force_turn_endpoint: bool = True) -> tuple[AssemblyAISTTService, list[str]]:
    """Pipecat's service on the daemon with its defaults (universal-3-6-pro, format_turns,
    formatted_finals, continuous_partials), and the transcripts its `on_end_of_turn` reports."""
    stt = AssemblyAISTTService(
        api_key=KEY,
        api_endpoint_base_url=f"ws://127.0.0.1:{daemon.http_port}{assemblyai.PATH}",
        vad_force_turn_endpoint=vad_force_turn_endpoint,
    )
    ends: list[str] = []

    @stt.event_handler("on_end_of_turn")  # type: ignore[untyped-decorator]
    async def on_end(_service: AssemblyAISTTService, transcript: str) -> None:
        ends.append(transcript)

    return stt, ends


@pytest.mark.parametrize("rate", [SAMPLE_RATE, 8000], ids=["16 kHz", "8 kHz"])
async def test_pipecat_service_sends_force_endpoint_at_its_vads_stops(rate: int) -> None:
    """Pipecat's default mode: min and max_turn_silence 100, its pipeline's rate, a ForceEndpoint at
    each stop of its VAD; it takes only formatted finals (format_turns), any other message type
    (a Warning) is an ErrorFrame."""
    async with running_daemon(api_key=KEY) as daemon:
        stt, ends = pipecat_service(daemon)
        async with running_pipeline(stt, rate) as (worker, frames):
            await speak(worker, FIXTURE, rate)
            await frames.wait_for(finals=3)
    assert frames.errors == []
    assert same_words(EXPECTED[FIXTURE], frames.finals)
    assert ends == frames.finals
    assert frames.interims, "partial Turns reach Pipecat as interim transcripts"


async def test_pipecat_service_with_the_daemons_turn_detection() -> None:
    """`vad_force_turn_endpoint=False` (U3 Pro models only): no ForceEndpoint, the daemon's turn
    detection ends each turn; SpeechStarted proposes the user's turn and each final ends it."""
    async with running_daemon(api_key=KEY) as daemon:
        stt, ends = pipecat_service(daemon, vad_force_turn_endpoint=False)
        async with running_pipeline(stt) as (worker, frames):
            await speak(worker, FIXTURE)
            await frames.wait_for(finals=3)
    assert frames.errors == []
    assert same_words(EXPECTED[FIXTURE], frames.finals)
    assert ends == frames.finals
    transcripts = [frame for frame in frames.frames if isinstance(frame, TranscriptionFrame)]
    assert all(frame.finalized for frame in transcripts)


async def test_pipecat_language_codes_settings_update_applies_from_the_next_command() -> None:
    """Pipecat's `STTUpdateSettingsFrame` of `language_codes` between two commands, which it sends as
    `UpdateConfiguration` without reconnecting: no error frame; the first command is decoded as the
    call began (`language_detection`: detected), the second in the language declared."""
    engine = ContextRecordingEngineDouble()
    delta = AssemblyAISTTService.Settings(language_codes=[Language.EN])
    async with running_daemon(engine, api_key=KEY) as daemon:
        stt = AssemblyAISTTService(
            api_key=KEY,
            api_endpoint_base_url=f"ws://127.0.0.1:{daemon.http_port}{assemblyai.PATH}",
            settings=AssemblyAISTTService.Settings(language_detection=True),
        )
        await settings_changed_between_commands(stt, delta)
    assert engine.languages == [None, "en"], engine.languages
