"""ElevenLabs' realtime speech-to-text API (`/v1/speech-to-text/realtime`) with the three real
ElevenLabs clients, against the real daemon (real Silero, real tiny.en): the official SDK
(elevenlabs' `speech_to_text.realtime`), LiveKit's `elevenlabs.STT` stream and Pipecat's
`ElevenLabsRealtimeSTTService` behind its own Silero VAD. Each is pointed at the daemon on
127.0.0.1 and fed three_commands.wav at microphone pace, with the key in `xi-api-key`, as they send
it. Each client parses the messages its own way and sends the query parameters it sends: these
tests are where a field the daemon leaves out or mistypes, or a parameter it refuses, shows."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from elevenlabs import AsyncElevenLabs
from elevenlabs.realtime import AudioFormat, CommitStrategy, RealtimeConnection, RealtimeEvents
from elevenlabs.types import (
    CommittedTranscriptPayload,
    CommittedTranscriptWithTimestampsPayload,
    PartialTranscriptPayload,
    ScribeInputErrorPayload,
    SessionStartedPayload,
)
from livekit.agents import APIConnectionError, APIConnectOptions, APIStatusError
from livekit.agents import stt as lk_stt
from livekit.plugins import elevenlabs as lk_elevenlabs
from pipecat.frames.frames import TranscriptionFrame
from pipecat.services.elevenlabs.stt import ElevenLabsRealtimeSTTService
from pipecat.transcriptions.language import Language
from websockets.exceptions import InvalidStatus

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.engines.base import Engine
from satellite_asr.server import Daemon
from tests.certificates import self_signed
from tests.doubles import ContextRecordingEngineDouble, CrashingEngineDouble
from tests.helpers import EXPECTED, fixture_16k, normalise, pcm16, running_daemon, same_words
from tests.livekit_events import LiveKitEvents, pushed
from tests.test_pipecat import running_pipeline, speak, transcribed

pytestmark = pytest.mark.timeout(180)

KEY = "elevenlabs-test-key"
FIXTURE = "three_commands.wav"
FRAME_S = 0.1
"""100 ms of audio a message, sent as a microphone delivers it."""
COMMIT_AT_S = 1.2
"""Where the SDK's manual commit is sent: in the first command ("turn off the bedroom lights"),
which the daemon would end at about 2 s."""

Event = tuple[RealtimeEvents, dict[str, Any]]


class SdkEvents:
    """Every event the SDK's connection emitted, in order, with its payload (the CLOSE event's
    `{"code", "reason"}`)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.changed = asyncio.Event()

    def listen(self, connection: RealtimeConnection) -> None:
        for kind in RealtimeEvents:
            connection.on(kind, self.recorder(kind))

    def recorder(self, kind: RealtimeEvents) -> Callable[[dict[str, Any]], None]:
        def record(data: dict[str, Any]) -> None:
            self.events.append((kind, data))
            self.changed.set()

        return record

    def of(self, kind: RealtimeEvents) -> list[dict[str, Any]]:
        return [data for each, data in self.events if each is kind]

    @property
    def committed(self) -> list[str]:
        return [data["text"] for data in self.of(RealtimeEvents.COMMITTED_TRANSCRIPT)]

    async def wait_for(self, done: Callable[[], bool]) -> None:
        """Until `done()` (60 s at most: a hang fails)."""
        async with asyncio.timeout(60):
            while not done():
                self.changed.clear()
                await self.changed.wait()


def sdk_client(daemon: Daemon, api_key: str = KEY) -> AsyncElevenLabs:
    return AsyncElevenLabs(api_key=api_key, base_url=f"http://127.0.0.1:{daemon.http_port}")


async def sdk_connect(daemon: Daemon, api_key: str = KEY, **options: Any) -> tuple[RealtimeConnection, SdkEvents]:
    """An SDK connection (16 kHz PCM, scribe_v2_realtime, `options` on top) with every event recorded
    from the first; the SDK's default commit strategy is manual."""
    settings: Any = {"model_id": "scribe_v2_realtime", "audio_format": AudioFormat.PCM_16000, "sample_rate": 16000}
    connection = await sdk_client(daemon, api_key).speech_to_text.realtime.connect({**settings, **options})
    events = SdkEvents()
    events.listen(connection)
    return connection, events


async def sdk_stream(connection: RealtimeConnection, fixture: str = FIXTURE, commit_at: float | None = None) -> None:
    """A fixture through the connection in 100 ms base64 chunks at microphone pace, with a commit
    after `commit_at` seconds of it if asked."""
    audio = pcm16(fixture_16k(fixture), SAMPLE_RATE)
    step = int(FRAME_S * SAMPLE_RATE) * 2
    for offset in range(0, len(audio), step):
        await connection.send({"audio_base_64": base64.b64encode(audio[offset : offset + step]).decode()})
        await asyncio.sleep(FRAME_S)
        if commit_at is not None and offset + step == int(commit_at * SAMPLE_RATE) * 2:
            await connection.commit()


def shape(events: SdkEvents) -> str:
    """The events as letters: S session_started, p a partial, C a committed transcript, T its copy
    with timestamps, I input_error, R resource_exhausted, E the generic error, X the close, ? anything else."""
    letters = {
        RealtimeEvents.SESSION_STARTED: "S",
        RealtimeEvents.PARTIAL_TRANSCRIPT: "p",
        RealtimeEvents.COMMITTED_TRANSCRIPT: "C",
        RealtimeEvents.COMMITTED_TRANSCRIPT_WITH_TIMESTAMPS: "T",
        RealtimeEvents.INPUT_ERROR: "I",
        RealtimeEvents.RESOURCE_EXHAUSTED: "R",
        RealtimeEvents.ERROR: "E",
        RealtimeEvents.CLOSE: "X",
    }
    return "".join(letters.get(kind, "?") for kind, _data in events.events)


async def test_sdk_streams_typed_session_started_partials_and_commits_with_timestamps() -> None:
    """Every message validates as the SDK's model of it: session_started with the settings in
    effect, then per command partials and one commit, each followed by its copy with timestamps
    (the words spanning the utterance, in order, and the language in three letters)."""
    options = {
        "commit_strategy": CommitStrategy.VAD,
        "include_timestamps": True,
        "language_code": "en",
        "keyterms": ["Calloway"],
    }
    async with running_daemon(api_key=KEY) as daemon:
        connection, events = await sdk_connect(daemon, **options)
        await sdk_stream(connection)
        await events.wait_for(lambda: len(events.committed) >= 3)
        await connection.close()
    assert events.of(RealtimeEvents.ERROR) == []
    assert re.fullmatch(r"S(p+CT){3}X", shape(events)), shape(events)
    assert events.of(RealtimeEvents.CLOSE)[0]["code"] == 1000, "the SDK's own close, answered"
    [started] = events.of(RealtimeEvents.SESSION_STARTED)
    session = SessionStartedPayload.model_validate(started)
    assert session.session_id
    config = session.config
    assert (config.sample_rate, config.audio_format, config.model_id) == (16000, "pcm_16000", "scribe_v2_realtime")
    assert (config.commit_strategy, config.language_code, config.keyterms) == ("vad", "en", ["Calloway"])
    assert config.include_timestamps is True
    for partial in events.of(RealtimeEvents.PARTIAL_TRANSCRIPT):
        assert PartialTranscriptPayload.model_validate(partial).text.strip()
    commits = [CommittedTranscriptPayload.model_validate(c) for c in events.of(RealtimeEvents.COMMITTED_TRANSCRIPT)]
    assert same_words(EXPECTED[FIXTURE], [commit.text for commit in commits])
    copies = [
        CommittedTranscriptWithTimestampsPayload.model_validate(c)
        for c in events.of(RealtimeEvents.COMMITTED_TRANSCRIPT_WITH_TIMESTAMPS)
    ]
    assert [copy.text for copy in copies] == [commit.text for commit in commits]
    seconds = fixture_16k(FIXTURE).size / SAMPLE_RATE
    previous_end = 0.0
    for copy in copies:
        assert copy.language_code == "eng"
        assert copy.words is not None
        spoken = [word for word in copy.words if word.type == "word"]
        assert [word.text for word in spoken] == copy.text.split()
        assert all(word.text == " " for word in copy.words if word.type == "spacing")
        for word in copy.words:
            assert word.start is not None and word.end is not None
            assert previous_end <= word.start <= word.end <= seconds + 0.1, (previous_end, word)
        # the decode's mean log-probability on each word, or on none where the engine gave none
        assert len({word.logprob for word in spoken}) == 1 and (spoken[0].logprob or 0.0) <= 0.0
        assert all(word.logprob is None for word in copy.words if word.type == "spacing")
        previous_end = copy.words[-1].end or 0.0


async def test_sdk_manual_commit_ends_the_command_there_and_a_commit_with_none_in_progress_is_answered() -> None:
    """The SDK's default strategy (manual): a commit mid-command is answered by that command's
    commit, ending where the audio sent had got to; the rest of the stream is transcribed as
    before; a commit after the last command, with nothing in progress, gets an empty commit."""
    async with running_daemon(api_key=KEY) as daemon:
        connection, events = await sdk_connect(daemon, include_timestamps=True)
        await sdk_stream(connection, commit_at=COMMIT_AT_S)
        await events.wait_for(lambda: len(events.committed) >= 4)
        await connection.commit()
        await events.wait_for(lambda: len(events.committed) >= 5)
        await connection.close()
    assert events.of(RealtimeEvents.ERROR) == []
    [started] = events.of(RealtimeEvents.SESSION_STARTED)
    assert SessionStartedPayload.model_validate(started).config.commit_strategy == "manual"
    assert re.fullmatch(r"S(p+CT){4}CTX", shape(events)), shape(events)
    forced, *rest, answer = events.committed
    assert answer == "", "the commit with nothing in progress is answered"
    assert same_words(EXPECTED[FIXTURE][1:], rest[-2:])
    assert forced.lower().startswith("turn off") and len(rest) == 3, "the first command, cut where committed"
    copy = CommittedTranscriptWithTimestampsPayload.model_validate(
        events.of(RealtimeEvents.COMMITTED_TRANSCRIPT_WITH_TIMESTAMPS)[0]
    )
    assert copy.text == forced and copy.words and copy.words[-1].end is not None
    assert copy.words[-1].end <= COMMIT_AT_S + FRAME_S, "the forced commit ends where the audio sent had got to"


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"commit_strategy": CommitStrategy.VAD, "vad_threshold": 0.95}, "vad_threshold"),
        ({"entity_detection": "pii"}, "entity_detection"),
        ({"transcript_edit": "Capitalise names."}, "transcript_edit"),
        ({"token": "single-use"}, "token"),
    ],
    ids=["vad_threshold 0.95", "entity_detection", "transcript_edit", "token"],
)
async def test_sdk_gets_a_refused_query_parameter_as_input_error_then_the_close(
    options: dict[str, Any], parameter: str
) -> None:
    """A setting out of ElevenLabs' range, or a feature the daemon does not have: no session starts;
    the SDK emits the daemon's `input_error` naming the parameter (as INPUT_ERROR and the generic
    ERROR), then its own ERROR for the Close (websockets raises on a close that is not 1000), then
    CLOSE with 1008 and the daemon's reason. (A daemon without a key: with `token` the SDK sends
    none, and a daemon with one refuses the upgrade with 401 before reading the query.)"""
    async with running_daemon() as daemon:
        connection, events = await sdk_connect(daemon, **options)
        await events.wait_for(lambda: bool(events.of(RealtimeEvents.CLOSE)))
        await connection.close()
    assert shape(events) == "IEEX", events.events
    [refusal] = events.of(RealtimeEvents.INPUT_ERROR)
    error = ScribeInputErrorPayload.model_validate(refusal)
    assert error.error.startswith(f"{parameter}: "), error
    assert events.of(RealtimeEvents.ERROR)[0] == refusal
    assert "1008" in events.of(RealtimeEvents.ERROR)[1]["error"]
    assert events.of(RealtimeEvents.CLOSE) == [{"code": 1008, "reason": "invalid_query_parameter"}]


async def test_sdk_connect_raises_the_handshakes_401_for_a_wrong_key() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        with pytest.raises(InvalidStatus) as refused:
            await sdk_connect(daemon, "wrong")
    assert refused.value.response.status_code == 401


async def test_sdk_keyterms_and_a_three_letter_language_reach_the_engine() -> None:
    """keyterms (repeated in the query) bias every utterance's decode; `eng` is the engine's `en`,
    and the copy with the language names it as ElevenLabs does."""
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine, api_key=KEY) as daemon:
        options = {"keyterms": ["Aoife", "Calloway"], "language_code": "eng", "include_language_detection": True}
        connection, events = await sdk_connect(daemon, commit_strategy=CommitStrategy.VAD, **options)
        await sdk_stream(connection, "lights_on.wav")
        await events.wait_for(lambda: bool(events.of(RealtimeEvents.COMMITTED_TRANSCRIPT_WITH_TIMESTAMPS)))
        await connection.close()
    assert events.of(RealtimeEvents.ERROR) == []
    assert engine.names and all(names[:2] == ("Aoife", "Calloway") for names in engine.names), engine.names
    assert set(engine.languages) == {"en"}
    assert same_words(EXPECTED["lights_on.wav"], events.committed)
    [copy] = events.of(RealtimeEvents.COMMITTED_TRANSCRIPT_WITH_TIMESTAMPS)
    assert CommittedTranscriptWithTimestampsPayload.model_validate(copy).language_code == "eng"


async def livekit_stream(stt: lk_elevenlabs.STT, done: Callable[[LiveKitEvents], bool]) -> LiveKitEvents:
    """The fixture streamed through a LiveKit STT in 100 ms frames at microphone pace, then `flush`
    (LiveKit's commit, under manual commits), until `done`; then `end_input` and the stream closed:
    the daemon, like ElevenLabs, never ends the stream, so the stream's read loop waits on it until
    closed. No retries: an error from the stream, or an error event, fails the test."""
    audio = pcm16(fixture_16k(FIXTURE), SAMPLE_RATE)
    step = int(FRAME_S * SAMPLE_RATE) * 2
    errors: list[Any] = []
    stt.on("error", errors.append)
    stream = stt.stream(conn_options=APIConnectOptions(max_retry=0, timeout=10))
    events = LiveKitEvents(stream)
    try:
        for offset in range(0, len(audio), step):
            if not pushed(stream, audio[offset : offset + step]):  # the stream failed
                break
            await asyncio.sleep(FRAME_S)
        else:
            stream.flush()
        await events.wait_for(lambda: done(events))
        stream.end_input()
    finally:
        await stream.aclose()
        await stt.aclose()
    assert errors == []
    return events


def livekit_stt(daemon: Daemon, http: aiohttp.ClientSession, api_key: str = KEY, **options: Any) -> lk_elevenlabs.STT:
    base_url = f"http://127.0.0.1:{daemon.http_port}/v1"
    return lk_elevenlabs.STT(
        model="scribe_v2_realtime", base_url=base_url, api_key=api_key, http_session=http, **options
    )


def livekit_finals(events: LiveKitEvents) -> list[lk_stt.SpeechData]:
    return [event.alternatives[0] for event in events.of(lk_stt.SpeechEventType.FINAL_TRANSCRIPT)]


def livekit_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What LiveKit's ElevenLabs plugin logged at WARNING or above: an error message it got, a
    message type it does not know, a message it failed on."""
    return [record.getMessage() for record in caplog.records if record.name.startswith("livekit.plugins.elevenlabs")]


async def test_livekit_stream_with_its_defaults_commits_at_its_flush(caplog: pytest.LogCaptureFixture) -> None:
    """LiveKit's defaults: manual commits, language detection (no language given), 50 ms chunks.
    It takes the commits' copies with the language as its finals, one per command as the daemon's
    turn detection commits them, all in the one speech it began; its flush's commit, with nothing in
    progress, is answered by an empty commit, which ends that speech."""
    caplog.set_level(logging.WARNING, logger="livekit.plugins.elevenlabs")
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        kinds = lk_stt.SpeechEventType
        events = await livekit_stream(livekit_stt(daemon, http), lambda events: bool(events.of(kinds.END_OF_SPEECH)))
    assert livekit_log(caplog) == []
    assert re.fullmatch(r"S(i+F){3}E", events.turns()), events.turns()
    finals = livekit_finals(events)
    assert same_words(EXPECTED[FIXTURE], [final.text for final in finals])
    assert all(final.language == "en" for final in finals), "the detected language, from the copy's eng"
    confidences = [final.confidence for final in finals]
    assert all(0.0 <= c <= 1.0 for c in confidences) and any(c > 0.0 for c in confidences), confidences
    assert all(0.0 < final.start_time < final.end_time for final in finals), "the copies' words carry the times"


@pytest.mark.parametrize("rate", [SAMPLE_RATE, 48000], ids=["16 kHz", "48 kHz"])
async def test_livekit_stream_with_server_vad_gets_a_speech_per_command(
    caplog: pytest.LogCaptureFixture, rate: int
) -> None:
    """`server_vad` (commit_strategy vad) with every VAD setting LiveKit sends, and its other
    options (a secondary language as a three-letter code, no_verbatim, enable_logging, a
    `previous_text` chunk first): accepted; each commit ends a speech: START, interims, the final
    and END per command. At 48 kHz LiveKit resamples the frames and sends `pcm_48000`."""
    caplog.set_level(logging.WARNING, logger="livekit.plugins.elevenlabs")
    vad: Any = {"vad_silence_threshold_secs": 0.5, "vad_threshold": 0.4}
    vad |= {"min_speech_duration_ms": 100, "min_silence_duration_ms": 300}
    options = {"secondary_languages": ["eng"], "no_verbatim": True, "enable_logging": False, "sample_rate": rate}
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        stt = livekit_stt(
            daemon, http, server_vad=vad, language_code="en", previous_text="Turn on the lights.", **options
        )
        events = await livekit_stream(stt, lambda events: len(livekit_finals(events)) >= 3)
    assert livekit_log(caplog) == []
    assert events.turns() == "".join(f"S{'i' * interims}FE" for interims in interim_runs(events.turns()))
    finals = livekit_finals(events)
    assert same_words(EXPECTED[FIXTURE], [final.text for final in finals])
    assert all(final.language == "en" for final in finals)


def interim_runs(turns: str) -> list[int]:
    """How many interims in each run of them: at least one per command."""
    runs = [len(run) for run in re.findall(r"i+", turns)]
    assert runs and all(runs), turns
    return runs


async def test_livekit_stream_with_timestamps_gets_aligned_words_and_its_keyterms_reach_the_engine(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`include_timestamps` with a language given: each final is the commit's copy with its words,
    LiveKit's aligned transcript, each word with its times (within the stream's audio, in order);
    LiveKit's keyterms bias every utterance's decode."""
    caplog.set_level(logging.WARNING, logger="livekit.plugins.elevenlabs")
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine, api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        stt = livekit_stt(daemon, http, include_timestamps=True, language_code="en", keyterms=["Aoife", "Calloway"])
        assert stt.capabilities.aligned_transcript == "word"
        kinds = lk_stt.SpeechEventType
        events = await livekit_stream(stt, lambda events: bool(events.of(kinds.END_OF_SPEECH)))
    assert livekit_log(caplog) == []
    assert re.fullmatch(r"S(i+F){3}E", events.turns()), events.turns()
    finals = livekit_finals(events)
    assert same_words(EXPECTED[FIXTURE], [final.text for final in finals])
    seconds = fixture_16k(FIXTURE).size / SAMPLE_RATE
    previous_end = events.offset
    for final in finals:
        assert final.words is not None
        assert [str(word) for word in final.words if str(word).strip()] == final.text.split()
        for word in final.words:
            assert previous_end <= word.start_time <= word.end_time, (previous_end, word)
        assert final.start_time == final.words[0].start_time and final.end_time == final.words[-1].end_time
        previous_end = final.end_time
    assert previous_end <= events.offset + seconds + 0.1
    assert engine.names and all(names[:2] == ("Aoife", "Calloway") for names in engine.names), engine.names
    assert set(engine.languages) == {"en"}


@asynccontextmanager
async def tls_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: Engine | None = None
) -> AsyncIterator[Daemon]:
    """The daemon serving TLS with a certificate of its own for 127.0.0.1, which Pipecat trusts as
    an agent would: `SSL_CERT_FILE` names it (websockets makes Pipecat's `wss://` context with
    OpenSSL's default verify paths, which read it). Pipecat always connects with `wss://`."""
    cert = self_signed(tmp_path, ["localhost"], ["127.0.0.1"])
    monkeypatch.setenv("SSL_CERT_FILE", str(cert.cert))
    async with running_daemon(engine, api_key=KEY, tls_cert=str(cert.cert), tls_key=str(cert.key)) as daemon:
        yield daemon


def pipecat_service(daemon: Daemon, api_key: str = KEY, **options: Any) -> ElevenLabsRealtimeSTTService:
    """Pipecat's service on the daemon: a host and port, no scheme (it adds `wss://` and `/v1`)."""
    return ElevenLabsRealtimeSTTService(api_key=api_key, base_url=f"127.0.0.1:{daemon.http_port}", **options)


def pipecat_transcripts(frames: Any) -> list[TranscriptionFrame]:
    return [frame for frame in frames.frames if isinstance(frame, TranscriptionFrame)]


@pytest.mark.parametrize("rate", [SAMPLE_RATE, 8000], ids=["16 kHz", "8 kHz"])
async def test_pipecat_service_commits_at_its_vads_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rate: int
) -> None:
    """Pipecat's default: manual commits, one at each stop of its VAD (answered by the command's
    commit, or by an empty one when the daemon's turn detection committed it first, which Pipecat
    skips); its pipeline's rate as the audio format (`pcm_8000` at 8 kHz); no language (detected)."""
    async with tls_daemon(tmp_path, monkeypatch) as daemon:
        frames = await transcribed(pipecat_service(daemon), FIXTURE, rate)
    assert all(frame.finalized for frame in pipecat_transcripts(frames)), "manual commits are final"
    assert frames.interims, "partials reach Pipecat as interim transcripts"


async def test_pipecat_service_with_vad_commits_its_language_and_keyterms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`commit_strategy=vad`, with every VAD setting and other option Pipecat sends: accepted; the
    daemon's turn detection commits each command; Pipecat's
    `Language.EN` goes on the wire as `eng`, the engine's `en`; its keyterms bias each decode; with
    language detection it takes the copy, whose `eng` it puts on its frames. Its keyterms go in the
    query as its `urlencode` writes them (a space as `+`), and arrive whole."""
    engine = ContextRecordingEngineDouble()
    settings = ElevenLabsRealtimeSTTService.Settings(
        language=Language.EN,
        keyterms=["Aoife Calloway", "Zoë & Co"],
        vad_silence_threshold_secs=0.5,
        vad_threshold=0.4,
        min_speech_duration_ms=100,
        min_silence_duration_ms=300,
        no_verbatim=True,
        filter_background_audio=False,
    )
    async with tls_daemon(tmp_path, monkeypatch, engine) as daemon:
        stt = pipecat_service(
            daemon,
            commit_strategy=CommitStrategy.VAD,
            include_language_detection=True,
            enable_logging=True,
            settings=settings,
        )
        async with running_pipeline(stt) as (worker, frames):
            await speak(worker, FIXTURE)
            await frames.wait_for(finals=3)
    assert frames.errors == []
    assert same_words(EXPECTED[FIXTURE], frames.finals)
    transcripts = pipecat_transcripts(frames)
    assert [frame.language for frame in transcripts] == ["eng"] * 3
    assert not any(frame.finalized for frame in transcripts), "a server commit is not a finalized one"
    assert engine.names and all(names[:2] == ("Aoife Calloway", "Zoë & Co") for names in engine.names), engine.names
    assert set(engine.languages) == {"en"}


async def test_pipecat_service_gets_a_refused_setting_as_an_error_frame_with_the_daemons_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A VAD setting out of ElevenLabs' range: the daemon's `input_error` reaches the pipeline as an
    ErrorFrame with its sentence (Pipecat then reconnects, and is refused again)."""
    settings = ElevenLabsRealtimeSTTService.Settings(vad_threshold=0.95)
    async with tls_daemon(tmp_path, monkeypatch) as daemon:
        stt = pipecat_service(daemon, commit_strategy=CommitStrategy.VAD, settings=settings)
        async with running_pipeline(stt) as (_worker, frames):
            await frames.wait_for(errors=1)
    assert frames.errors[0].startswith("Error: vad_threshold: "), frames.errors
    assert frames.finals == []


async def test_pipecat_service_with_a_wrong_key_gets_an_error_frame_with_the_401(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        tls_daemon(tmp_path, monkeypatch) as daemon,
        running_pipeline(pipecat_service(daemon, "wrong")) as (_worker, frames),
    ):
        await frames.wait_for(errors=1)
    assert "HTTP 401" in frames.errors[0], frames.errors
    assert frames.finals == []


async def test_livekit_stream_fails_on_a_refused_setting_and_logs_the_daemons_sentence(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server VAD setting out of ElevenLabs' range: LiveKit logs the daemon's `input_error`, with
    its sentence, and ends the stream with a non-retryable APIConnectionError."""
    caplog.set_level(logging.WARNING, logger="livekit.plugins.elevenlabs")
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        stt = livekit_stt(daemon, http, server_vad={"vad_threshold": 0.95})
        with pytest.raises(APIConnectionError) as failed:
            await livekit_stream(stt, lambda events: False)
    assert not failed.value.retryable
    records = [record for record in caplog.records if record.name.startswith("livekit.plugins.elevenlabs")]
    record = records[0]  # then its recv_task's failure
    assert record.getMessage() == "ElevenLabs STT error [input_error]"
    assert getattr(record, "lk.pii.data")["error"].startswith("vad_threshold: ")


async def test_livekit_stream_fails_with_the_handshakes_401_for_a_wrong_key() -> None:
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        stt = livekit_stt(daemon, http, "wrong")
        with pytest.raises(APIStatusError) as refused:
            await livekit_stream(stt, lambda events: False)
    assert refused.value.status_code == 401


async def test_pipecat_service_reads_past_an_engine_failures_warning_and_keeps_its_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine whose every final decode fails: each failure is a `warning`, which Pipecat reads
    past (no ErrorFrame), and a command's commit still comes with the text its partials were sure
    of ("Turn off the"), on the one connection (no reconnect)."""
    settings = ElevenLabsRealtimeSTTService.Settings(language=Language.EN, keyterms=["crash"])
    async with tls_daemon(tmp_path, monkeypatch, CrashingEngineDouble()) as daemon:
        stt = pipecat_service(daemon, settings=settings)
        connections: list[str] = []

        @stt.event_handler("on_connected")  # type: ignore[untyped-decorator]
        async def on_connected(_service: ElevenLabsRealtimeSTTService) -> None:
            connections.append("connected")

        async with running_pipeline(stt) as (worker, frames):
            await speak(worker, FIXTURE)
            await frames.wait_for(finals=1)  # a failure's warning comes before its commit
    assert frames.errors == [], frames.errors
    assert frames.finals and "turn" in normalise(frames.finals[0]), frames.finals
    assert connections == ["connected"]


async def test_no_session_free_reaches_the_sdk_as_resource_exhausted_and_livekit_as_an_unknown_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The one session slot taken (by an SDK connection): the next SDK connection gets
    RESOURCE_EXHAUSTED (and the generic ERROR), then the Close 1013. LiveKit's plugin does not know
    `resource_exhausted` (not among the error types it reads): it logs it as an unknown message type,
    and fails on the Close after it, whose 1013 it reports as the status, and retries."""
    caplog.set_level(logging.WARNING, logger="livekit.plugins.elevenlabs")
    async with (
        running_daemon(api_key=KEY, max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        aiohttp.ClientSession() as http,
    ):
        holding, _held = await sdk_connect(daemon)
        connection, events = await sdk_connect(daemon)
        await events.wait_for(lambda: bool(events.of(RealtimeEvents.CLOSE)))
        await connection.close()
        with pytest.raises(APIStatusError) as failed:
            await livekit_stream(livekit_stt(daemon, http), lambda events: False)
        await holding.close()
    assert shape(events) == "REEX", events.events
    [busy] = events.of(RealtimeEvents.RESOURCE_EXHAUSTED)
    assert busy["error"], busy
    assert events.of(RealtimeEvents.CLOSE)[0]["code"] == 1013
    assert failed.value.status_code == 1013 and failed.value.retryable
    assert livekit_log(caplog)[0] == "ElevenLabs STT unknown message type: resource_exhausted"
