"""Home Assistant's own `wyoming` integration and Assist pipeline with our daemon as their
speech-to-text, in a real Home Assistant core (tests/home_assistant_core.py).

tests/test_wyoming.py follows Home Assistant's client with the `wyoming` package; here Home
Assistant's code is the client, at the `wyoming` version its manifest pins. The daemon is added
as a user adds a service discovery did not find (the integration's config flow, host and port),
and a pipeline run is fed as Home Assistant's frontend feeds it from a microphone.

What Home Assistant 2025.4.4 does as a client: `transcribe` with the pipeline's language only (no
context, names or vad_sensitivity), `audio-start`, the audio until its own VAD has heard 0.7 s of
silence after speech, `audio-stop`, and only then does it read, up to the first `transcript`. So
our transcript, sent when the daemon heard the command end, waits unread until then. Newer
releases (wyoming 1.10 in the integration) read while they upload to a service whose info says it
needs no external VAD, as this daemon's does: docs/benchmarks.md, "Home Assistant's own detector";
they need a newer Python 3.13 than this machine has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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
    admin_connection,
    furnished_home_assistant,
)

pytestmark = pytest.mark.timeout(300)

WYOMING = "tcp://127.0.0.1:0"
FIXTURE = "lights_on.wav"
CHUNK_S = 0.04
"""The microphone's chunk: the frontend sends each as it is recorded."""
SILENCE_AFTER_S = 5.0
"""How long the microphone goes on after the command (silence) if Home Assistant has not heard the
command end; its own VAD needs 0.7 s of it."""
PIPELINE = {
    "name": "Satellite ASR",
    "language": "en",
    "conversation_engine": "conversation.home_assistant",
    "conversation_language": "en",
    "stt_language": "en",
    "tts_engine": None,
    "tts_language": None,
    "tts_voice": None,
    "wake_word_entity": None,
    "wake_word_id": None,
}
"""An Assist pipeline as the voice assistants settings page makes it, but for its stt_engine."""


@pytest.fixture(scope="module")
def home_assistant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealHomeAssistant]:
    """A furnished Home Assistant for the module's tests; each test removes what it added."""
    with furnished_home_assistant(tmp_path_factory) as home_assistant:
        yield home_assistant


def bearer(home_assistant: RealHomeAssistant) -> dict[str, str]:
    """The header of an HTTP API request with the owner's token."""
    return {"Authorization": f"Bearer {home_assistant.token}"}


async def add_wyoming_service(home_assistant: RealHomeAssistant, port: int) -> dict[str, Any]:
    """What the "Add integration" dialog does for Wyoming Protocol: start its config flow, fill in
    its one form (host and port); the flow's last answer."""
    flows = f"{home_assistant.url}/api/config/config_entries/flow"
    async with aiohttp.ClientSession(headers=bearer(home_assistant)) as http:
        async with http.post(flows, json={"handler": "wyoming", "show_advanced_options": False}) as response:
            assert response.status == 200, await response.text()
            form = await response.json()
        assert form["type"] == "form" and form["step_id"] == "user", form
        async with http.post(f"{flows}/{form['flow_id']}", json={"host": "127.0.0.1", "port": port}) as response:
            assert response.status == 200, await response.text()
            return dict(await response.json())


@contextlib.asynccontextmanager
async def wyoming_speech_to_text(home_assistant: RealHomeAssistant, port: int) -> AsyncIterator[str]:
    """Our daemon's Wyoming server on `port` added to Home Assistant; the id of the speech-to-text
    entity it made, once its config entry has loaded. The entry is removed on exit."""
    result = await add_wyoming_service(home_assistant, port)
    assert result["type"] == "create_entry", result
    entry_id = result["result"]["entry_id"]
    try:
        assert result["result"]["state"] == "loaded", "Home Assistant sets an entry up before the flow ends"
        async with admin_connection(home_assistant.url, home_assistant.token) as admin:
            entities = await admin.command("config/entity_registry/list")
            made = [e["entity_id"] for e in entities if e["config_entry_id"] == entry_id]
            assert len(made) == 1 and made[0].startswith("stt."), made
        yield made[0]
    finally:
        entry = f"{home_assistant.url}/api/config/config_entries/entry/{entry_id}"
        async with aiohttp.ClientSession(headers=bearer(home_assistant)) as http, http.delete(entry) as response:
            assert response.status == 200, await response.text()


@contextlib.asynccontextmanager
async def assist_pipeline(home_assistant: RealHomeAssistant, stt_engine: str) -> AsyncIterator[str]:
    """An Assist pipeline with `stt_engine` as its speech-to-text; its id. Deleted on exit."""
    async with admin_connection(home_assistant.url, home_assistant.token) as admin:
        pipeline = await admin.command("assist_pipeline/pipeline/create", stt_engine=stt_engine, **PIPELINE)
        try:
            yield str(pipeline["id"])
        finally:
            await admin.command("assist_pipeline/pipeline/delete", pipeline_id=pipeline["id"])


async def microphone(
    send: Callable[[bytes], Awaitable[None]], handler_id: int, pcm: bytes, heard: asyncio.Event
) -> None:
    """The frontend's microphone: `pcm` then silence, each chunk sent once it would have been
    recorded, prefixed with the run's binary handler id, until Home Assistant has heard the command
    (`heard`); if it never does, the empty message that ends the stream."""
    chunk_bytes = round(CHUNK_S * SAMPLE_RATE) * 2
    audio = pcm + bytes(round(SILENCE_AFTER_S * SAMPLE_RATE) * 2)
    origin = time.monotonic()
    for offset in range(0, len(audio), chunk_bytes):
        recorded = origin + (offset + chunk_bytes) / 2 / SAMPLE_RATE
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(heard.wait(), max(0.0, recorded - time.monotonic()))
        if heard.is_set():
            return
        await send(bytes([handler_id]) + audio[offset : offset + chunk_bytes])
    await send(bytes([handler_id]))


async def run_speech_to_text(home_assistant: RealHomeAssistant, pipeline_id: str, pcm: bytes) -> list[dict[str, Any]]:
    """The events of an Assist pipeline run from speech to text (only), `pcm` its microphone."""
    async with admin_connection(home_assistant.url, home_assistant.token) as admin:
        run = {"start_stage": "stt", "end_stage": "stt", "input": {"sample_rate": SAMPLE_RATE}}
        await admin.command("assist_pipeline/run", pipeline=pipeline_id, **run)
        events = [await admin.event()]
        assert events[0]["type"] == "run-start", events
        heard = asyncio.Event()
        handler_id = events[0]["data"]["runner_data"]["stt_binary_handler_id"]
        speaking = asyncio.create_task(microphone(admin.send_bytes, handler_id, pcm, heard))
        try:
            while events[-1]["type"] not in ("run-end", "error"):
                events.append(await admin.event())
                if events[-1]["type"] in ("stt-end", "error"):
                    heard.set()
        finally:
            heard.set()
            await speaking
    return events


async def assist_transcript(home_assistant: RealHomeAssistant, daemon: Daemon) -> list[dict[str, Any]]:
    """The events of a run whose speech-to-text is `daemon`, added to Home Assistant for it."""
    assert daemon.wyoming_port is not None
    pcm = pcm16(fixture_16k(FIXTURE), SAMPLE_RATE)
    async with (
        wyoming_speech_to_text(home_assistant, daemon.wyoming_port) as stt_engine,
        assist_pipeline(home_assistant, stt_engine) as pipeline_id,
    ):
        return await run_speech_to_text(home_assistant, pipeline_id, pcm)


def transcripts(events: list[dict[str, Any]]) -> list[str]:
    """The texts of a run's `stt-end` events; fails the test on an `error` event."""
    assert not [e for e in events if e["type"] == "error"], events
    return [e["data"]["stt_output"]["text"] for e in events if e["type"] == "stt-end"]


def wyoming_sessions(daemon: Daemon) -> float | None:
    return daemon.core.metrics.registry.get_sample_value("satellite_asr_sessions_total", {"protocol": "wyoming"})


async def test_home_assistant_hears_a_command_through_our_wyoming_service(home_assistant: RealHomeAssistant) -> None:
    async with running_daemon(wyoming_uri=WYOMING) as daemon:
        events = await assist_transcript(home_assistant, daemon)
        assert wyoming_sessions(daemon) == 1, "one Wyoming round: the pipeline's"
    assert same_words(EXPECTED[FIXTURE], transcripts(events)), events


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
