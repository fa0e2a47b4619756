"""Zoom's Scribe Live API (`/v2/aiservices/scribe/live`) with the real client, Pipecat's
`ZoomAISTTService`, in a pipeline behind Pipecat's own Silero VAD, against the real daemon (real
Silero, real tiny.en). It is pointed at the daemon by its `url` alone (plaintext `ws://` to loopback),
with the key as it sends it (`Authorization: Bearer`), and fed the fixtures at microphone pace:
these tests are where a field the daemon leaves out or mistypes shows."""

from __future__ import annotations

import json

import pytest
import websockets
from pipecat.frames.frames import TranscriptionFrame
from pipecat.services.zoom_ai.stt import ZoomAISTTService
from pipecat.transcriptions.language import Language

from satellite_asr.protocols import zoom
from satellite_asr.server import Daemon
from tests.helpers import EXPECTED, running_daemon, same_words
from tests.test_pipecat import across_a_pause, first_error, transcribed

pytestmark = pytest.mark.timeout(180)

KEY = "zoom-test-key"
FIXTURE = "three_commands.wav"


def pipecat_service(daemon: Daemon, api_key: str = KEY, **settings: object) -> ZoomAISTTService:
    url = f"ws://127.0.0.1:{daemon.http_port}{zoom.PATH}"
    return ZoomAISTTService(api_key=api_key, url=url, settings=ZoomAISTTService.Settings(**settings))


async def test_pipecat_service_gets_a_transcript_per_command_in_its_language() -> None:
    """The daemon's endpointing ends each turn (`speech_started`, then `transcription.completed`):
    one TranscriptionFrame per command, finalized, in the locale the service asked for."""
    async with running_daemon(api_key=KEY) as daemon:
        frames = await transcribed(pipecat_service(daemon), FIXTURE)
    finals = [frame for frame in frames.frames if isinstance(frame, TranscriptionFrame)]
    assert all(frame.finalized and frame.language == Language.EN_US for frame in finals), finals
    assert all(frame.result["type"] == "transcription.completed" for frame in finals)


async def test_pipecat_service_settings_it_sends_are_taken() -> None:
    """Model, vocabulary, silence and language detection reach the daemon in `session.update` and
    are taken: the commands are transcribed, each in the language the engine heard."""
    async with running_daemon(api_key=KEY) as daemon:
        service = pipecat_service(
            daemon,
            model="zoom-scribe-multilingual",
            vocabulary=["garage door"],
            silence_duration_ms=600,
            language_detection="auto",
        )
        frames = await transcribed(service, FIXTURE)
    languages = {frame.language for frame in frames.frames if isinstance(frame, TranscriptionFrame)}
    assert languages == {Language.EN}, languages


async def test_pipecat_service_with_a_wrong_key_gets_an_error_frame_with_the_daemons_sentence() -> None:
    """The 401's JSON `message` is what the service reports ("Zoom refused the connection (HTTP 401): …")."""
    async with running_daemon(api_key=KEY) as daemon:
        frames = await first_error(pipecat_service(daemon, "wrong"))
    assert "HTTP 401" in frames.errors[0] and "api key" in frames.errors[0].lower(), frames.errors


@pytest.mark.parametrize(
    ("settings", "words"),
    [({"diarization": True}, "speaker labels"), ({"text_polishing": True}, "text polishing")],
)
async def test_pipecat_service_asking_for_what_the_daemon_cannot_do_gets_the_refusal(
    settings: dict[str, object], words: str
) -> None:
    """Diarization and text polishing are refused with Scribe's fatal error before `session.updated`:
    the service pushes an error frame with the daemon's sentence, and no transcript comes."""
    async with running_daemon(api_key=KEY) as daemon:
        frames = await first_error(pipecat_service(daemon, **settings))
    assert words in frames.errors[0] and "invalid_session_update" in frames.errors[0], frames.errors
    assert frames.finals == []


async def test_pipecat_service_reconnects_after_the_idle_timeout_closes_its_connection() -> None:
    """When the daemon's idle timeout ends the session (the fatal error, `session.closed`, 1001), the
    service reports the error, reconnects with a new `session.update` and the next commands are
    transcribed. The timeout is over Pipecat's 5 s: a shorter connection is a quick failure, and
    after three in a row Pipecat stops reconnecting."""
    async with running_daemon(api_key=KEY, idle_timeout_s=6) as daemon:
        frames = await across_a_pause(pipecat_service(daemon), "lights_on.wav", FIXTURE, 8)
    assert same_words([*EXPECTED["lights_on.wav"], *EXPECTED[FIXTURE]], frames.finals), frames.finals
    assert frames.errors and all("idle_timeout_s" in error for error in frames.errors), frames.errors


async def test_pipecat_service_refused_as_busy_stays_usable() -> None:
    """`max_sessions` full when the service connects: it reports `server_busy`, and stays usable (its
    reconnect may get a place once one frees), as a busy server is not a refused `session.update`:
    Pipecat's service takes a fatal error before `session.updated` for settings refused, marks itself
    unusable and from then on drops every frame of audio."""
    async with (
        running_daemon(api_key=KEY, max_sessions=1, wyoming_reserved_sessions=0) as daemon,
        websockets.connect(
            f"ws://127.0.0.1:{daemon.http_port}{zoom.PATH}", additional_headers={"Authorization": f"Bearer {KEY}"}
        ) as holder,
    ):
        await holder.send(json.dumps({"type": "session.update", "language": "en-US"}))
        assert json.loads(await holder.recv())["type"] == "session.updated"
        service = pipecat_service(daemon)
        frames = await first_error(service)
    assert "server_busy" in frames.errors[0], frames.errors
    assert service.is_usable, frames.errors
