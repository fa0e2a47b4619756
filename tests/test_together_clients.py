"""Together AI's real-time transcription dialect of `/v1/realtime` with the real client: Pipecat's
`TogetherSTTService` in a pipeline behind its own Silero VAD, against the real daemon (real Silero,
real tiny.en). The service connects to `{base_url}/realtime?intent=transcription&model=...&
turn_detection=none&input_audio_format=pcm_s16le_16000` with `Authorization: Bearer` and
`OpenAI-Beta: realtime=v1`, and commits at each stop of Pipecat's VAD (docs/together.md)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from pipecat.frames.frames import InterimTranscriptionFrame
from pipecat.services.together.stt import TogetherSTTService

from satellite_asr.server import Daemon
from tests.helpers import EXPECTED, running_daemon, same_words
from tests.test_pipecat import across_a_pause, first_error, transcribed

pytestmark = pytest.mark.timeout(180)

KEY = "together-test-key"
FIXTURE = "three_commands.wav"


def pipecat_service(daemon: Daemon, api_key: str = KEY) -> TogetherSTTService:
    return TogetherSTTService(api_key=api_key, base_url=f"ws://127.0.0.1:{daemon.http_port}/v1")


async def test_pipecat_service_gets_a_transcript_per_command_and_whole_text_interims() -> None:
    """Pipecat's defaults (openai/whisper-large-v3, English, turn detection off): each commit's
    `completed` is a `TranscriptionFrame`; each delta is an interim frame holding the item's whole
    text so far (Together's deltas replace each other), so the interims of a command grow."""
    async with running_daemon(api_key=KEY) as daemon:
        frames = await transcribed(pipecat_service(daemon), FIXTURE)
    by_item: dict[str, list[str]] = {}
    for frame in frames.frames:
        if isinstance(frame, InterimTranscriptionFrame):
            by_item.setdefault(frame.result["item_id"], []).append(frame.text)
    assert any(len(texts) > 1 for texts in by_item.values()), by_item
    for texts in by_item.values():  # each the item's whole text so far, never a fragment to add up
        assert all(later.startswith(earlier) and later != earlier for earlier, later in pairwise(texts)), texts


async def test_pipecat_service_with_a_wrong_key_gets_an_error_frame_with_the_401() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        frames = await first_error(pipecat_service(daemon, "wrong"))
    assert "401" in frames.errors[0] and frames.finals == [], frames.errors


async def test_pipecat_service_reconnects_after_the_idle_timeout_closes_its_connection() -> None:
    """When the daemon's idle timeout closes the connection (1001, its reason naming the setting),
    Pipecat's receive loop ends, the service connects again and the next commands are transcribed.
    The timeout is over Pipecat's 5 s quick-failure window. An audio frame Pipecat sends between
    the Close and its reconnect is an error frame naming the close ("Error sending audio: received
    1001 ... idle_timeout"), or none when no frame falls there: a race of the client's, so the test
    asks only that any error be that one."""
    connections = 0
    async with running_daemon(api_key=KEY, idle_timeout_s=6) as daemon:
        stt = pipecat_service(daemon)

        @stt.event_handler("on_connected")  # type: ignore[untyped-decorator]
        async def on_connected(_stt: TogetherSTTService) -> None:
            nonlocal connections
            connections += 1

        frames = await across_a_pause(stt, "lights_on.wav", "three_commands.wav", 8)
    assert same_words([*EXPECTED["lights_on.wav"], *EXPECTED["three_commands.wav"]], frames.finals), frames.finals
    assert connections == 2 and all("idle_timeout" in error for error in frames.errors), (connections, frames.errors)
