"""Azure AI Speech's real-time protocol with the real Azure clients, against the real daemon (real
Silero, real tiny.en): Microsoft's Speech SDK (`azure-cognitiveservices-speech`, native) single-shot
and continuous, LiveKit's `azure.STT` stream and Pipecat's `AzureSTTService`, each built on the SDK
and pointed at the daemon by its host or endpoint alone, the key in `Ocp-Apim-Subscription-Key`."""

from __future__ import annotations

import asyncio
import threading

import azure.cognitiveservices.speech as speechsdk
import pytest

from satellite_asr.server import Daemon
from tests.helpers import EXPECTED, FIXTURES, normalise, running_daemon, same_words

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
    assert result.reason == speechsdk.ResultReason.RecognizedSpeech, result.cancellation_details
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
