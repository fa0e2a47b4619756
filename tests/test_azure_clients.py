"""Azure AI Speech's real-time protocol with the real Azure clients, against the real daemon (real
Silero, real tiny.en): Microsoft's Speech SDK (`azure-cognitiveservices-speech`, native) single-shot
and continuous, LiveKit's `azure.STT` stream and Pipecat's `AzureSTTService`, each built on the SDK
and pointed at the daemon by its host or endpoint alone, the key in `Ocp-Apim-Subscription-Key`."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import wave
from typing import Any

import azure.cognitiveservices.speech as speechsdk
import pytest
import websockets
from livekit.agents import APIError
from livekit.agents import stt as lk_stt
from livekit.plugins import azure as lk_azure  # installed by scripts/bootstrap.sh (pyproject.toml)
from pipecat.services.azure.stt import AzureSTTService

from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble, FailsOnAWordEngineDouble
from tests.helpers import EXPECTED, FIXTURES, normalise, running_daemon, same_words
from tests.livekit_events import stream_fixture
from tests.test_azure import CONVERSATION, USP, audio_message, connections_counted, wav_header
from tests.test_pipecat import running_pipeline, speak, transcribed

pytestmark = pytest.mark.timeout(180)

KEY = "azure-test-key"
FIXTURE = "three_commands.wav"


def host(daemon: Daemon) -> str:
    return f"ws://127.0.0.1:{daemon.http_port}"


def recognizer(daemon: Daemon, fixture: str, key: str = KEY, detailed: bool = False) -> speechsdk.SpeechRecognizer:
    config = speechsdk.SpeechConfig(host=host(daemon), subscription=key)
    if detailed:
        config.output_format = speechsdk.OutputFormat.Detailed
    audio = speechsdk.audio.AudioConfig(filename=str(FIXTURES / fixture))
    return speechsdk.SpeechRecognizer(speech_config=config, audio_config=audio)


def continuous(
    recognizer: speechsdk.SpeechRecognizer,
) -> tuple[list[str], list[str], list[speechsdk.CancellationDetails]]:
    """The file through continuous recognition until the session stops: partials, finals, cancellations."""
    partials: list[str] = []
    finals: list[str] = []
    cancelled: list[speechsdk.CancellationDetails] = []
    stopped = threading.Event()
    recognizer.recognizing.connect(lambda event: partials.append(event.result.text))
    recognizer.recognized.connect(lambda event: finals.append(event.result.text) if event.result.text else None)
    recognizer.canceled.connect(lambda event: cancelled.append(event.cancellation_details))
    recognizer.session_stopped.connect(lambda event: stopped.set())
    recognizer.start_continuous_recognition()
    try:
        assert stopped.wait(60), "the session did not stop"
    finally:
        recognizer.stop_continuous_recognition()
    return partials, finals, cancelled


async def test_sdk_recognize_once_returns_the_first_command() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        result = await asyncio.to_thread(recognizer(daemon, "lights_on.wav").recognize_once)
    assert result.reason == speechsdk.ResultReason.RecognizedSpeech, result.cancellation_details.error_details
    assert normalise(result.text) == normalise(EXPECTED["lights_on.wav"][0])


async def test_sdk_continuous_recognition_gives_each_command_as_a_phrase() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        partials, finals, cancelled = await asyncio.to_thread(continuous, recognizer(daemon, FIXTURE))
    assert not [c for c in cancelled if c.reason == speechsdk.CancellationReason.Error], cancelled[0].error_details
    assert same_words(EXPECTED[FIXTURE], finals)
    assert partials


async def test_sdk_wrong_key_is_cancelled_with_the_authentication_failure() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        result = await asyncio.to_thread(recognizer(daemon, "lights_on.wav", key="wrong").recognize_once)
    assert result.reason == speechsdk.ResultReason.Canceled
    details = result.cancellation_details
    assert details.code == speechsdk.CancellationErrorCode.AuthenticationFailure, details.error_details


async def test_sdk_detailed_format_gives_nbest_and_a_phrase_list_reaches_the_engine() -> None:
    """`OutputFormat.Detailed` asks for `format=detailed`: the result's JSON holds an `NBest`; the
    SDK's phrase list (`speech.context`'s `dgi`) is the session's terms."""
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine, api_key=KEY) as daemon:
        once = recognizer(daemon, "lights_on.wav", detailed=True)
        speechsdk.PhraseListGrammar.from_recognizer(once).addPhrase("Ziggy lamp")
        result = await asyncio.to_thread(once.recognize_once)
    assert result.reason == speechsdk.ResultReason.RecognizedSpeech, result.cancellation_details.error_details
    best = json.loads(result.json)["NBest"][0]
    assert best["Display"] == result.text and best["Lexical"]
    assert any("Ziggy lamp" in terms for terms in engine.names), engine.names


def livekit_stt(daemon: Daemon, key: str = KEY, **options: Any) -> Any:
    return lk_azure.STT(speech_host=host(daemon), speech_key=key, language="en-US", **options)


async def test_livekit_stream_gets_interims_and_a_final_per_command() -> None:
    """With TrueText post-processing asked for (`postprocessing=TrueText`: checked, not applied)."""
    async with running_daemon(api_key=KEY) as daemon:
        events = await stream_fixture(livekit_stt(daemon, true_text_post_processing=True), FIXTURE, finals=3)
    finals = [final.text for final in events.finals() if final.text]
    assert same_words(EXPECTED[FIXTURE], finals), finals
    assert events.of(lk_stt.SpeechEventType.INTERIM_TRANSCRIPT)


async def test_livekit_stream_outlives_a_failed_decode() -> None:
    """The engine fails the first command's decode: its phrase is NoMatch, which LiveKit skips, and
    the next commands' finals come."""
    async with running_daemon(FailsOnAWordEngineDouble("bedroom"), api_key=KEY) as daemon:
        events = await stream_fixture(livekit_stt(daemon), FIXTURE, finals=2)
    finals = [normalise(final.text) for final in events.finals() if final.text]
    assert "what time is it" in finals and "open the garage door" in finals, finals


async def test_livekit_stream_fails_on_a_wrong_key() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        with pytest.raises(APIError):
            await stream_fixture(livekit_stt(daemon, key="wrong"), FIXTURE, finals=1)


def pipecat_service(daemon: Daemon, key: str = KEY) -> AzureSTTService:
    endpoint = f"{host(daemon)}/speech/recognition/conversation/cognitiveservices/v1"
    return AzureSTTService(api_key=key, private_endpoint=endpoint)


async def test_pipecat_service_transcribes_each_command() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        frames = await transcribed(pipecat_service(daemon), FIXTURE)
    assert frames.interims, "speech.hypothesis reaches Pipecat as interim transcripts"


async def test_pipecat_service_with_a_wrong_key_reports_it() -> None:
    async with (
        running_daemon(api_key=KEY) as daemon,
        running_pipeline(pipecat_service(daemon, "wrong")) as (worker, frames),
    ):
        await speak(worker, "lights_on.wav")
        await frames.wait_for(errors=1)
    assert frames.finals == [] and "401" in frames.errors[0], frames.errors


async def test_sdk_recognize_once_twice_on_one_recognizer_on_one_connection() -> None:
    """The daemon keeps the connection after a turn, as Azure does: the SDK's next `recognize_once`
    on the same recognizer is a new turn on it and recognizes the next command of the file."""
    async with running_daemon(api_key=KEY) as daemon:
        opened = connections_counted(daemon)
        once = recognizer(daemon, FIXTURE)
        first = await asyncio.to_thread(once.recognize_once)
        second = await asyncio.to_thread(once.recognize_once)
    assert first.reason == second.reason == speechsdk.ResultReason.RecognizedSpeech, second.cancellation_details
    assert [normalise(first.text), normalise(second.text)] == [normalise(t) for t in EXPECTED[FIXTURE][:2]]
    assert len(opened) == 1, opened


async def test_sdk_bad_request_and_server_busy_are_cancellations_with_the_sentence() -> None:
    """The daemon's Close reaches the SDK as Azure's: 1007 (a query it refuses) as `BadRequest`, 1011
    (`max_sessions` taken) as `ServiceError`, each with the code and sentence in `error_details`."""
    async with running_daemon(api_key=KEY, max_sessions=1, wyoming_reserved_sessions=0) as daemon:
        config = speechsdk.SpeechConfig(endpoint=f"{host(daemon)}{CONVERSATION}?cid=mine", subscription=KEY)
        audio = speechsdk.audio.AudioConfig(filename=str(FIXTURES / "lights_on.wav"))
        refused = speechsdk.SpeechRecognizer(speech_config=config, audio_config=audio)
        bad = (await asyncio.to_thread(refused.recognize_once)).cancellation_details
        keyed = {"Ocp-Apim-Subscription-Key": KEY}
        async with websockets.connect(
            f"{host(daemon)}{CONVERSATION}", additional_headers=keyed, subprotocols=[USP]
        ) as taken:
            await taken.send(audio_message(wav_header()))
            await taken.recv()  # turn.start: the one session is open
            busy = (await asyncio.to_thread(recognizer(daemon, "lights_on.wav").recognize_once)).cancellation_details
    assert bad.code == speechsdk.CancellationErrorCode.BadRequest, bad.error_details
    assert "1007" in bad.error_details and "cid: this server does not do custom speech models" in bad.error_details
    assert busy.code == speechsdk.CancellationErrorCode.ServiceError, busy.error_details
    assert "1011" in busy.error_details and "server_busy: the server has 1 sessions open" in busy.error_details


async def test_sdk_on_the_universal_endpoint_sends_its_settings_in_speech_context() -> None:
    """`SpeechConfig(endpoint=".../speech/universal/v2")`: the SDK sends no query, its mode, language
    and format in speech.context. recognize_once with `OutputFormat.Detailed` is one phrase with an
    NBest; a language the engine lacks (de-DE) is refused (BadRequest), not decoded as English."""
    async with running_daemon(api_key=KEY) as daemon:
        endpoint = f"{host(daemon)}/speech/universal/v2"
        config = speechsdk.SpeechConfig(endpoint=endpoint, subscription=KEY)
        config.output_format = speechsdk.OutputFormat.Detailed
        audio = speechsdk.audio.AudioConfig(filename=str(FIXTURES / FIXTURE))
        result = await asyncio.to_thread(
            speechsdk.SpeechRecognizer(speech_config=config, audio_config=audio).recognize_once
        )
        german = speechsdk.SpeechConfig(endpoint=endpoint, subscription=KEY)
        german.speech_recognition_language = "de-DE"
        audio = speechsdk.audio.AudioConfig(filename=str(FIXTURES / "lights_on.wav"))
        refused = await asyncio.to_thread(
            speechsdk.SpeechRecognizer(speech_config=german, audio_config=audio).recognize_once
        )
    assert result.reason == speechsdk.ResultReason.RecognizedSpeech, result.cancellation_details.error_details
    assert normalise(result.text) == normalise(EXPECTED[FIXTURE][0]) and json.loads(result.json)["NBest"]
    details = refused.cancellation_details
    assert details.code == speechsdk.CancellationErrorCode.BadRequest and "de-DE" in details.error_details


def pcm_of(fixture: str) -> bytes:
    with wave.open(str(FIXTURES / fixture)) as recording:
        return recording.readframes(recording.getnframes())


def sessions_opened(daemon: Daemon) -> float:
    """The USP sessions the daemon opened: one a turn."""
    metrics = daemon.core.metrics.render().decode()
    return float(metrics.split('satellite_asr_sessions_total{protocol="azure"} ', 1)[1].split()[0])


def continuous_through_a_silence(daemon: Daemon) -> tuple[list[str], list[speechsdk.CancellationDetails]]:
    """A command, 3 s of silence, another, at microphone pace into continuous recognition. With an
    idle_timeout_s of 2 the idle timeout ends the turn once, within the silence (2 to 2.5 s into
    it: the idle check runs every 0.5 s), and the next turn hears the next command from its start
    (a longer silence would put a second turn end near the command's start, cutting it)."""
    config = speechsdk.SpeechConfig(host=host(daemon), subscription=KEY)
    pushed = speechsdk.audio.PushAudioInputStream()
    sdk = speechsdk.SpeechRecognizer(speech_config=config, audio_config=speechsdk.audio.AudioConfig(stream=pushed))
    finals: list[str] = []
    cancelled: list[speechsdk.CancellationDetails] = []
    sdk.recognized.connect(lambda event: finals.append(event.result.text) if event.result.text else None)
    sdk.canceled.connect(lambda event: cancelled.append(event.cancellation_details))
    sdk.start_continuous_recognition()
    audio = pcm_of("lights_on.wav") + bytes(32000 * 3) + pcm_of("weather.wav") + bytes(32000)
    for offset in range(0, len(audio), 3200):
        pushed.write(audio[offset : offset + 3200])
        time.sleep(0.1)
    sdk.stop_continuous_recognition()
    return finals, cancelled


async def test_sdk_continuous_recognition_outlives_the_idle_timeout() -> None:
    """Silence past idle_timeout_s ends the turn (turn.end), as Azure ends one: the SDK goes on with
    a new turn on the same connection and the next command's phrase comes, with no cancellation."""
    async with running_daemon(api_key=KEY, idle_timeout_s=2) as daemon:
        opened = connections_counted(daemon)
        finals, cancelled = await asyncio.to_thread(continuous_through_a_silence, daemon)
    assert not cancelled, cancelled[0].error_details
    assert len(opened) == 1, opened
    turns = sessions_opened(daemon)
    assert turns >= 2, f"{turns} turn: the idle timeout ended none"
    assert same_words(EXPECTED["lights_on.wav"] + EXPECTED["weather.wav"], finals), finals
