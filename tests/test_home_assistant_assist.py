"""Home Assistant's own `wyoming` integration and Assist pipeline with our daemon as their
speech-to-text, in a real Home Assistant core (tests/home_assistant_core.py).

tests/test_wyoming.py follows Home Assistant's client with the `wyoming` package; here Home
Assistant's code is the client, at the `wyoming` version its manifest pins. The daemon is added
as a user adds a service discovery did not find (the integration's config flow, host and port),
and a pipeline run is fed as Home Assistant's frontend feeds it from a microphone.

What Home Assistant 2026.11 does as a client: `transcribe` with the pipeline's language only (no
context, names or vad_sensitivity), `audio-start`, then it uploads the audio and reads at once,
ending the round at the first `transcript`. Since this daemon's info says it needs no external VAD,
the pipeline runs no VAD of its own: our endpointing ends the command (releases before 2026.10 read
only after their own VAD had sent `audio-stop`; docs/benchmarks.md, "Through a real Home
Assistant").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble
from tests.helpers import EXPECTED, fixture_16k, pcm16, running_daemon, same_words
from tests.home_assistant_core import (
    EXPECTED_NAMES,
    RealHomeAssistant,
    assist_pipeline,
    furnished_home_assistant,
    run_speech_to_text,
    wyoming_speech_to_text,
)

pytestmark = pytest.mark.timeout(300)

WYOMING = "tcp://127.0.0.1:0"
FIXTURE = "lights_on.wav"


@pytest.fixture(scope="module")
def home_assistant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealHomeAssistant]:
    """A furnished Home Assistant for the module's tests; each test removes what it added."""
    with furnished_home_assistant(tmp_path_factory) as home_assistant:
        yield home_assistant


async def assist_transcript(home_assistant: RealHomeAssistant, daemon: Daemon) -> list[dict[str, Any]]:
    """The events of a run whose speech-to-text is `daemon`, added to Home Assistant for it."""
    assert daemon.wyoming_port is not None
    pcm = pcm16(fixture_16k(FIXTURE), SAMPLE_RATE)
    async with (
        wyoming_speech_to_text(home_assistant, daemon.wyoming_port) as stt_engine,
        assist_pipeline(home_assistant, stt_engine) as pipeline_id,
    ):
        return [event for _, event in await run_speech_to_text(home_assistant, pipeline_id, pcm)]


def transcripts(events: list[dict[str, Any]]) -> list[str]:
    """The texts of a run's `stt-end` events; fails the test on an `error` event."""
    assert not [e for e in events if e["type"] == "error"], events
    return [e["data"]["stt_output"]["text"] for e in events if e["type"] == "stt-end"]


def wyoming_sessions(daemon: Daemon) -> float | None:
    return daemon.core.metrics.registry.get_sample_value("satellite_asr_sessions_total", {"protocol": "wyoming"})


def endpoints(daemon: Daemon, reason: str) -> float | None:
    """Utterances the daemon ended for `reason` (forced: the client's audio-stop ended one in speech)."""
    return daemon.core.metrics.registry.get_sample_value("satellite_asr_endpoints_total", {"reason": reason})


async def test_home_assistant_hears_a_command_through_our_wyoming_service(home_assistant: RealHomeAssistant) -> None:
    """Our endpointing ends the command, not Home Assistant's VAD: it runs none for this service."""
    async with running_daemon(wyoming_uri=WYOMING) as daemon:
        events = await assist_transcript(home_assistant, daemon)
        assert wyoming_sessions(daemon) == 1, "one Wyoming round: the pipeline's"
        heard_end = [endpoints(daemon, reason) for reason in ("complete", "silence", "forced")]
    assert heard_end in ([1, None, None], [None, 1, None]), f"the daemon heard the command end: {heard_end}"
    assert same_words(EXPECTED[FIXTURE], transcripts(events)), events
    started = next(event for event in events if event["type"] == "stt-start")
    processing = started["data"]["audio_processing"]
    assert processing["requires_external_vad"] is False, started
    # both False: an ESPHome satellite with a second, unprocessed microphone channel sends that one
    assert processing["prefers_auto_gain_enabled"] is False, started
    assert processing["prefers_noise_reduction_enabled"] is False, started
    # Home Assistant's VAD, had it run, would have said when it heard the speech start
    assert "stt-vad-start" not in [event["type"] for event in events], events


async def test_with_the_homes_names_the_command_is_still_heard(home_assistant: RealHomeAssistant) -> None:
    """The daemon reads its names from the same Home Assistant: the pipeline's round reaches the
    engine with them (tiny.en is not relied on to hear an unusual one, only not to lose the command)."""
    engine = ContextRecordingEngineDouble()
    async with running_daemon(
        engine, wyoming_uri=WYOMING, ha_url=home_assistant.url, ha_token=home_assistant.token
    ) as daemon:
        assert daemon.core.home_assistant is not None
        await asyncio.wait_for(daemon.core.home_assistant.wait_loaded(), 30)
        events = await assist_transcript(home_assistant, daemon)
        home_names = tuple(daemon.core.household_names())
        url = f"http://127.0.0.1:{daemon.http_port}/health"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            status = json.loads(await response.text())["home_assistant"]
    assert status["state"] == "loaded" and status["names"] == EXPECTED_NAMES, status
    assert engine.names == [home_names], "one round, with the home's names"
    assert same_words(EXPECTED[FIXTURE], transcripts(events)), events
