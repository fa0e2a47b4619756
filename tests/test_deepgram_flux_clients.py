"""Deepgram's Flux API (`/v2/listen`) with the three real Flux clients, against the real daemon
(real Silero, real tiny.en): the official SDK (deepgram-sdk's `listen.v2`), LiveKit's
`deepgram.STTv2` stream and Pipecat's `DeepgramFluxSTTService`. Each is pointed at the daemon on
127.0.0.1 and fed three_commands.wav at microphone pace; each command must come back as one turn.
Pipecat's service also when the microphone stops mid-stream (its watchdog's silence must end the
turn) and on `flux-general-multi` (the turn's detected language)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from deepgram.listen.v2 import ListenV2Connected, ListenV2TurnInfo
from livekit.agents import stt as lk_stt
from livekit.plugins import deepgram as lk_deepgram
from pipecat.frames.frames import InputAudioRawFrame, TranscriptionFrame
from pipecat.services.deepgram.flux.stt import DeepgramFluxSTTService
from pipecat.transcriptions.language import Language

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.protocols import deepgram_flux
from tests.doubles import ContextRecordingEngineDouble
from tests.helpers import EXPECTED, fixture_16k, pcm16, running_daemon, same_words
from tests.livekit_events import stream_fixture
from tests.test_deepgram_clients import KEY, livekit_stream, sdk_client, sdk_stream, validated
from tests.test_pipecat import FRAME_S as PIPECAT_FRAME_S
from tests.test_pipecat import running_pipeline, speak

pytestmark = [
    pytest.mark.timeout(180),
    # deepgram-sdk 7.17 connects with websockets' legacy client, whose names websockets 16 deprecates
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:websockets.exceptions.InvalidStatusCode is deprecated:DeprecationWarning"),
]

FIXTURE = "three_commands.wav"
LAST_WORD_END_S = 8.4
"""Just after the fixture's last word ("door"): the rest of it is silence."""
SILENCE_AFTER_FIRST_COMMAND = 31
"""A 100 ms chunk of the fixture's between its first command (chunks 5-21) and its second (from 40)."""


async def test_sdk_gets_typed_connected_and_a_turn_per_command() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        options = {"encoding": "linear16", "sample_rate": 16000, "eot_threshold": 0.7}
        async with sdk_client(daemon).listen.v2.connect(model="flux-general-en", **options) as connection:
            messages = await sdk_stream(connection)  # the daemon closes after the last turn's EndOfTurn
    assert messages and all(message is not None for message in messages), "every message is one of the SDK's types"
    for message in messages:
        validated(message)
    assert isinstance(messages[0], ListenV2Connected), "Connected first"
    assert [m.sequence_id for m in messages] == list(range(len(messages)))
    assert {m.request_id for m in messages} == {messages[0].request_id}
    turns = messages[1:]
    assert all(isinstance(m, ListenV2TurnInfo) for m in turns), [type(m).__name__ for m in turns]
    ends = [m for m in turns if m.event == "EndOfTurn"]
    assert same_words(EXPECTED[FIXTURE], [m.transcript for m in ends])
    assert [m.turn_index for m in ends] == [0, 1, 2]
    assert all(m.trigger == "model" and m.end_of_turn_confidence == 1.0 for m in ends)
    assert messages[-1] is ends[-1], "the stream ends with the last turn's EndOfTurn"
    for index in range(3):
        events = [m.event for m in turns if m.turn_index == index]
        assert events[0] == "StartOfTurn" and events[-1] == "EndOfTurn" and set(events[1:-1]) <= {"Update"}
    for info in turns:
        assert [w.word for w in info.words] == info.transcript.split()
        assert 0.0 <= info.audio_window_start <= info.audio_window_end


async def test_livekit_stt_v2_with_its_defaults() -> None:
    """LiveKit's defaults: flux-general-en, 50 ms messages, `mip_opt_out=false`, CloseStream at the
    end of input. Its parser makes transcripts from `words` only."""
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{daemon.http_port}{deepgram_flux.PATH}"
        events = await livekit_stream(lk_deepgram.STTv2(api_key=KEY, base_url=url, http_session=http))
    kinds = lk_stt.SpeechEventType
    finals = [e.alternatives[0].text for e in events if e.type == kinds.FINAL_TRANSCRIPT]
    assert same_words(EXPECTED[FIXTURE], finals)
    turns = [e.type for e in events if e.type in (kinds.START_OF_SPEECH, kinds.FINAL_TRANSCRIPT, kinds.END_OF_SPEECH)]
    assert turns == [kinds.START_OF_SPEECH, kinds.FINAL_TRANSCRIPT, kinds.END_OF_SPEECH] * 3
    final_events = [e for e in events if e.type == kinds.FINAL_TRANSCRIPT]
    # the turn's confidence, from its words: 0 where the engine does not say (a decode that wrote its text twice)
    assert all(0.0 <= e.alternatives[0].confidence <= 1.0 for e in final_events)
    assert any(e.type == kinds.INTERIM_TRANSCRIPT for e in events), "StartOfTurn and Updates as interims"


async def test_livekit_stt_v2_update_options_language_hint_between_commands() -> None:
    """LiveKit's `update_options(language_hint=...)` mid-call on `flux-general-multi` (an agent
    switching language), sent between the first command and the second as `Configure`'s
    `language_hints`: the first is decoded in the hint the stream began with, the others with the new
    (`[]`: the engine detects); every final comes, with its language."""
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine, api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{daemon.http_port}{deepgram_flux.PATH}"
        model = deepgram_flux.MULTILINGUAL_MODEL
        stt = lk_deepgram.STTv2(api_key=KEY, base_url=url, http_session=http, model=model, language_hint=["en"])

        async def switch(index: int) -> None:
            if index == SILENCE_AFTER_FIRST_COMMAND:
                stt.update_options(language_hint=[])

        events = await stream_fixture(stt, FIXTURE, finals=3, after_chunk=switch)
    assert engine.languages == ["en", None, None], engine.languages
    assert same_words(EXPECTED[FIXTURE], [final.text for final in events.finals()]), events.turns()
    assert [final.language for final in events.finals()] == ["en"] * 3


async def test_pipecat_flux_service_reports_turns_and_transcripts() -> None:
    """Pipecat's Flux service waits for `Connected` before it counts the connection up, reports
    Flux's turns through its own events and ends each with a finalized TranscriptionFrame."""
    async with running_daemon(api_key=KEY) as daemon:
        stt = DeepgramFluxSTTService(api_key=KEY, url=f"ws://127.0.0.1:{daemon.http_port}{deepgram_flux.PATH}")
        turn_events: list[tuple[str, str]] = []
        connected: list[bool] = []

        @stt.event_handler("on_connected")  # type: ignore[untyped-decorator]
        async def on_connected(_service: DeepgramFluxSTTService) -> None:
            connected.append(True)

        @stt.event_handler("on_start_of_turn")  # type: ignore[untyped-decorator]
        async def on_start(_service: DeepgramFluxSTTService, transcript: str) -> None:
            turn_events.append(("start", transcript))

        @stt.event_handler("on_end_of_turn")  # type: ignore[untyped-decorator]
        async def on_end(_service: DeepgramFluxSTTService, transcript: str) -> None:
            turn_events.append(("end", transcript))

        async with running_pipeline(stt) as (worker, frames):
            await speak(worker, FIXTURE)
            await frames.wait_for(finals=3)
    assert frames.errors == []
    assert connected == [True], "Connected confirmed the connection once"
    assert same_words(EXPECTED[FIXTURE], frames.finals)
    transcripts = [frame for frame in frames.frames if isinstance(frame, TranscriptionFrame)]
    assert all(frame.finalized for frame in transcripts), "each final is an EndOfTurn"
    assert [kind for kind, _ in turn_events] == ["start", "end"] * 3
    assert [text for kind, text in turn_events if kind == "end"] == frames.finals
    assert frames.interims, "Updates reach Pipecat as interim transcripts"


async def test_pipecat_flux_watchdog_silence_ends_the_last_turn() -> None:
    """The microphone stops right after the last word, the connection stays open: Pipecat's
    watchdog sends half a second of silence at a time while a turn is open, and that silence (not a
    CloseStream, which comes only at the pipeline's end) must end the last turn."""
    audio = pcm16(fixture_16k(FIXTURE), SAMPLE_RATE)[: int(LAST_WORD_END_S * SAMPLE_RATE) * 2]
    step = int(PIPECAT_FRAME_S * SAMPLE_RATE) * 2
    async with running_daemon(api_key=KEY) as daemon:
        stt = DeepgramFluxSTTService(api_key=KEY, url=f"ws://127.0.0.1:{daemon.http_port}{deepgram_flux.PATH}")
        async with running_pipeline(stt) as (worker, frames):
            for offset in range(0, len(audio), step):
                await worker.queue_frame(InputAudioRawFrame(audio[offset : offset + step], SAMPLE_RATE, 1))
                await asyncio.sleep(PIPECAT_FRAME_S)
            await frames.wait_for(finals=3)
    assert frames.errors == []
    assert same_words(EXPECTED[FIXTURE], frames.finals)


async def test_pipecat_flux_multi_model_gets_the_detected_language() -> None:
    """With `flux-general-multi` the engine detects the language, and Pipecat reads it from the
    turn's `languages` (on `flux-general-en` it assumes English): the TranscriptionFrame says it."""
    async with running_daemon(api_key=KEY) as daemon:
        stt = DeepgramFluxSTTService(
            api_key=KEY,
            url=f"ws://127.0.0.1:{daemon.http_port}{deepgram_flux.PATH}",
            settings=DeepgramFluxSTTService.Settings(model=deepgram_flux.MULTILINGUAL_MODEL),
        )
        async with running_pipeline(stt) as (worker, frames):
            await speak(worker, "lights_on.wav")
            await frames.wait_for(finals=1)
    assert frames.errors == []
    assert same_words(EXPECTED["lights_on.wav"], frames.finals)
    [final] = [frame for frame in frames.frames if isinstance(frame, TranscriptionFrame)]
    assert final.language == Language.EN
