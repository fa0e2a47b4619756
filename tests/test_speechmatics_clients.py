"""Speechmatics' APIs with the three real Speechmatics clients, against the real daemon (real Silero,
real tiny.en): the `speechmatics-rt` SDK's AsyncClient on `/v2`, LiveKit's `speechmatics.STT`
stream and Pipecat's `SpeechmaticsSTTService` on `/v2/agent` (both speak the Agent STT API through
`speechmatics-agent-stt`). Each is pointed at the daemon by its URL alone, with the key as it sends
it (`Authorization: Bearer`), and fed three_commands.wav at microphone pace."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from livekit.agents import APIError, inference
from livekit.agents import stt as lk_stt
from livekit.plugins import speechmatics as lk_speechmatics  # installed by scripts/bootstrap.sh (pyproject.toml)
from pipecat.frames.frames import TranscriptionFrame
from pipecat.services.speechmatics.stt import SpeechmaticsSTTService
from speechmatics.rt import (
    AsyncClient,
    AudioEncoding,
    AudioFormat,
    ConversationConfig,
    ServerMessageType,
    TranscriptionConfig,
    TranscriptionError,
)
from speechmatics.rt import ConnectionError as SMConnectionError

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.protocols import speechmatics
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble, FailsOnAWordEngineDouble
from tests.helpers import EXPECTED, microphone_chunks, normalise, running_daemon, same_words
from tests.livekit_events import stream_fixture
from tests.test_pipecat import running_pipeline, transcribed

pytestmark = pytest.mark.timeout(180)

KEY = "speechmatics-test-key"
FIXTURE = "three_commands.wav"
FRAME_S = 0.1


def ws_url(daemon: Daemon, path: str = speechmatics.PATH) -> str:
    return f"ws://127.0.0.1:{daemon.http_port}{path}"


async def sdk_session(
    daemon: Daemon, config: TranscriptionConfig, api_key: str = KEY, force_at: int | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The SDK's session: the fixture at microphone pace (`ForceEndOfUtterance` after chunk
    `force_at`), then `stop_session` (EndOfStream, until EndOfTranscript); every message by type."""
    client = AsyncClient(api_key=api_key, url=ws_url(daemon))
    received: dict[str, list[dict[str, Any]]] = {}
    for kind in ServerMessageType:
        client.on(kind, lambda message, kind=kind: received.setdefault(kind.value, []).append(message))
    try:
        await client.start_session(
            transcription_config=config,
            audio_format=AudioFormat(encoding=AudioEncoding.PCM_S16LE, sample_rate=SAMPLE_RATE),
        )
        for index, chunk in enumerate(microphone_chunks(FIXTURE, FRAME_S)):
            await client.send_audio(chunk)
            if index == force_at:
                await client.force_end_of_utterance()
            await asyncio.sleep(FRAME_S)
        async with asyncio.timeout(60):
            await client.stop_session()
    finally:
        await client.close()
    return received


def transcripts(received: dict[str, list[dict[str, Any]]]) -> list[str]:
    texts = [m["metadata"]["transcript"].strip() for m in received.get("AddTranscript", [])]
    return [text for text in texts if text]


async def test_sdk_streams_partials_finals_end_of_utterance_and_end_of_transcript() -> None:
    """The SDK with partials, end-of-utterance detection and a vocabulary: one AddTranscript and one
    EndOfUtterance per command, partials, the words in `additional_vocab` reaching the engine."""
    engine = ContextRecordingEngineDouble()
    config = TranscriptionConfig(
        language="en",
        enable_partials=True,
        max_delay=1.0,
        conversation_config=ConversationConfig(end_of_utterance_silence_trigger=0.5),
        additional_vocab=[{"content": "Aoife", "sounds_like": ["ee fa"]}],
    )
    async with running_daemon(engine, api_key=KEY) as daemon:
        received = await sdk_session(daemon, config)
    said = transcripts(received)
    assert same_words(EXPECTED[FIXTURE], said), said
    assert len(received["EndOfUtterance"]) == 3 and received["AddPartialTranscript"]
    assert received["EndOfTranscript"] == [{"message": "EndOfTranscript"}]
    assert received["AudioAdded"][-1]["seq_no"] == len(microphone_chunks(FIXTURE, FRAME_S))
    assert engine.names and all(names[:1] == ("Aoife",) for names in engine.names)


async def test_sdk_force_end_of_utterance_ends_the_first_command_early() -> None:
    config = TranscriptionConfig(language="en")
    async with running_daemon(api_key=KEY) as daemon:
        received = await sdk_session(daemon, config, force_at=12)
    said = transcripts(received)
    assert normalise(said[0]).startswith("turn off"), said
    assert "what time is it" in normalise(" ".join(said[1:])), said
    assert len(received["EndOfUtterance"]) == 1


async def test_sdk_reads_a_refused_configuration_and_a_wrong_key() -> None:
    """A refused config: the SDK raises TranscriptionError with the daemon's reason; a wrong key:
    its ConnectionError with the upgrade's 401."""
    async with running_daemon(api_key=KEY) as daemon:
        with pytest.raises(TranscriptionError, match="diarization"):
            await sdk_session(daemon, TranscriptionConfig(language="en", diarization="speaker"))
        with pytest.raises(SMConnectionError, match="401"):
            await sdk_session(daemon, TranscriptionConfig(language="en"), api_key="wrong")


def livekit_stt(daemon: Daemon, api_key: str = KEY, **options: Any) -> Any:
    return lk_speechmatics.STT(api_key=api_key, base_url=ws_url(daemon, speechmatics.AGENT_PATH), **options)


async def test_livekit_stream_with_its_defaults_gets_a_final_per_command() -> None:
    """LiveKit's defaults (external turns): interims, then one FINAL_TRANSCRIPT per command. Its
    default VAD, which would send ForceEndOfUtterance at each stop, is Silero's plugin, not installed
    here: the daemon's own turn detection ends each command (Speechmatics' would not)."""
    async with running_daemon(api_key=KEY) as daemon:
        events = await stream_fixture(livekit_stt(daemon), FIXTURE, finals=3)
    finals = [final.text for final in events.finals() if final.text]
    assert same_words(EXPECTED[FIXTURE], finals), finals
    assert events.of(lk_stt.SpeechEventType.INTERIM_TRANSCRIPT)


async def test_livekit_with_a_vad_finalizes_and_gets_end_of_speech() -> None:
    """External turns with a VAD (LiveKit's bundled one): ForceEndOfUtterance at each stop of speech,
    answered by the segment, then EndOfTurn as Speechmatics answers it, which LiveKit reports as
    END_OF_SPEECH (none came before: the daemon sent EndOfTurn only with the service's turns)."""
    async with running_daemon(api_key=KEY) as daemon:
        events = await stream_fixture(livekit_stt(daemon, vad=inference.VAD()), FIXTURE, finals=3)
    finals = [final.text for final in events.finals() if final.text]
    assert same_words(EXPECTED[FIXTURE], finals), finals
    assert len(events.of(lk_stt.SpeechEventType.END_OF_SPEECH)) >= 2, events.events


async def test_livekit_get_speaker_ids_is_empty_and_the_stream_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """LiveKit's diarization is on by default, so its `get_speaker_ids()` sends GetSpeakers: the
    daemon, naming no speakers, answers an empty SpeakersResult, and the stream goes on to every
    final (an Error would have failed it). LiveKit gives [] too when no answer came within its 5 s,
    but then it logs "GetSpeakers timed-out": the test tells the two apart by that warning, not by
    the wall-clock time the answer took (under 2 s, it was: a loaded machine's loop can lag that)."""
    caplog.set_level(logging.WARNING, logger="livekit.plugins.speechmatics")
    answers: list[Any] = []

    async def ask(index: int) -> None:
        if index == 25:
            answers.append(await stt.get_speaker_ids())

    async with running_daemon(api_key=KEY) as daemon:
        stt = livekit_stt(daemon)
        events = await stream_fixture(stt, FIXTURE, finals=3, after_chunk=ask)
    assert answers == [[]], answers
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("livekit.plugins.speechmatics")]
    assert warnings == [], warnings  # "GetSpeakers timed-out": LiveKit's [] for no answer
    finals = [final.text for final in events.finals() if final.text]
    assert same_words(EXPECTED[FIXTURE], finals), finals


async def test_livekit_stream_with_the_services_turns_gets_start_and_end_of_speech() -> None:
    mode = lk_speechmatics.TurnDetectionMode.VAD
    async with running_daemon(api_key=KEY) as daemon:
        events = await stream_fixture(livekit_stt(daemon, turn_detection_mode=mode), FIXTURE, finals=3)
    kinds = lk_stt.SpeechEventType
    assert len(events.of(kinds.START_OF_SPEECH)) == 3
    assert same_words(EXPECTED[FIXTURE], [final.text for final in events.finals() if final.text])


async def test_livekit_stream_outlives_a_failed_decode() -> None:
    """The engine fails the first command's decode: a Warning, which LiveKit logs; an Error would have
    failed its stream and lost the next commands' finals."""
    async with running_daemon(FailsOnAWordEngineDouble("bedroom"), api_key=KEY) as daemon:
        events = await stream_fixture(livekit_stt(daemon), FIXTURE, finals=2)
    finals = [normalise(final.text) for final in events.finals() if final.text]
    assert "what time is it" in finals and "open the garage door" in finals, finals


async def test_livekit_stream_fails_on_a_wrong_key_and_on_refused_diarization() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        with pytest.raises(APIError, match="401"):
            await stream_fixture(livekit_stt(daemon, api_key="wrong"), FIXTURE, finals=1)
        with pytest.raises(APIError, match="diarization"):
            await stream_fixture(livekit_stt(daemon, enable_diarization=True, max_speakers=2), FIXTURE, finals=1)


def pipecat_service(daemon: Daemon, api_key: str = KEY, **options: Any) -> SpeechmaticsSTTService:
    return SpeechmaticsSTTService(api_key=api_key, base_url=ws_url(daemon, speechmatics.AGENT_PATH), **options)


async def test_pipecat_service_finalizes_at_its_vads_stops() -> None:
    """Pipecat's default (external turns): a ForceEndOfUtterance at each stop of its VAD, answered by
    the command's AddSegment: one finalized transcript per command."""
    async with running_daemon(api_key=KEY) as daemon:
        frames = await transcribed(pipecat_service(daemon), FIXTURE)
    transcripts = [frame for frame in frames.frames if isinstance(frame, TranscriptionFrame)]
    assert all(frame.finalized for frame in transcripts), "each final confirms the finalize it answers"
    assert frames.interims, "AddPartialSegment reaches Pipecat as interim transcripts"


async def test_pipecat_service_with_a_wrong_key_or_refused_diarization_reports_it() -> None:
    settings = SpeechmaticsSTTService.Settings(enable_diarization=True, max_speakers=2)
    async with running_daemon(api_key=KEY) as daemon:
        async with running_pipeline(pipecat_service(daemon, "wrong")) as (_worker, frames):
            await frames.wait_for(errors=1)
        assert "401" in frames.errors[0] and frames.finals == [], frames.errors
        async with running_pipeline(pipecat_service(daemon, settings=settings)) as (_worker, frames):
            await frames.wait_for(errors=1)
        assert "diarization" in frames.errors[0], frames.errors
