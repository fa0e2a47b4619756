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
import re
from collections.abc import Callable
from typing import Any

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
from websockets.exceptions import InvalidStatus

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble
from tests.helpers import EXPECTED, fixture_16k, pcm16, running_daemon, same_words

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
    with timestamps, I input_error, E the generic error, X the close, ? anything else."""
    letters = {
        RealtimeEvents.SESSION_STARTED: "S",
        RealtimeEvents.PARTIAL_TRANSCRIPT: "p",
        RealtimeEvents.COMMITTED_TRANSCRIPT: "C",
        RealtimeEvents.COMMITTED_TRANSCRIPT_WITH_TIMESTAMPS: "T",
        RealtimeEvents.INPUT_ERROR: "I",
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


async def test_sdk_gets_a_bad_query_parameter_as_input_error_then_the_close() -> None:
    """vad_threshold out of ElevenLabs' range: no session starts; the SDK emits the daemon's
    `input_error` (as INPUT_ERROR and the generic ERROR), then its own ERROR for the Close (websockets
    raises on a close that is not 1000), then CLOSE with 1008 and the daemon's reason."""
    async with running_daemon(api_key=KEY) as daemon:
        connection, events = await sdk_connect(daemon, commit_strategy=CommitStrategy.VAD, vad_threshold=0.95)
        await events.wait_for(lambda: bool(events.of(RealtimeEvents.CLOSE)))
        await connection.close()
    assert shape(events) == "IEEX", events.events
    [refusal] = events.of(RealtimeEvents.INPUT_ERROR)
    error = ScribeInputErrorPayload.model_validate(refusal)
    assert error.error.startswith("vad_threshold: "), error
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
