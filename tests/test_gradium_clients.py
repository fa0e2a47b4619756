"""Gradium's real-time speech-to-text API (`/api/speech/asr`) with the three real Gradium clients,
against the real daemon (real Silero, real tiny.en): Gradium's SDK (`gradium`: `stt_stream` and the
`stt_realtime` connection), LiveKit's `gradium.STT` stream (24 kHz, its turns from the daemon's
steps) and Pipecat's `GradiumSTTService` behind its own Silero VAD. Each is pointed at the daemon on
127.0.0.1 by its URL alone, with the key as each sends it (`x-api-key`), and fed three_commands.wav
at microphone pace: these tests are where a field the daemon leaves out or mistypes shows."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from gradium.client import GradiumClient
from livekit.plugins import gradium as lk_gradium
from pipecat.services.gradium.stt import GradiumSTTService

from satellite_asr.server import Daemon
from tests.helpers import EXPECTED, PCM_FRAME_BYTES, microphone_chunks, normalise, running_daemon, same_words
from tests.livekit_events import stream_fixture
from tests.test_pipecat import first_error, transcribed

pytestmark = pytest.mark.timeout(180)

KEY = "gradium-test-key"
FIXTURE = "three_commands.wav"
FRAME_S = 0.1
SETUP = {"model_name": "default", "input_format": "pcm_16000", "json_config": {"language": "en"}}


def client(daemon: Daemon, api_key: str = KEY) -> GradiumClient:
    return GradiumClient(base_url=f"http://127.0.0.1:{daemon.http_port}/api/", api_key=api_key)


async def microphone(fixture: str = FIXTURE, lead_silence_s: float = 0) -> AsyncIterator[bytes]:
    """`fixture` at microphone pace, after `lead_silence_s` of silence."""
    silence = [bytes(PCM_FRAME_BYTES)] * round(lead_silence_s / FRAME_S)
    for chunk in [*silence, *microphone_chunks(fixture, FRAME_S)]:
        yield chunk
        await asyncio.sleep(FRAME_S)


async def test_sdk_stt_stream_gets_the_words_with_their_start_times() -> None:
    """The SDK's `stt_stream` (setup with `json_config` sent as JSON text, `end_of_stream` after the
    audio): `ready` read, the words with start and stop times, the stream over at the Close 1000."""
    async with running_daemon(api_key=KEY) as daemon:
        stream = await client(daemon).stt_stream(dict(SETUP), microphone())
        words = [segment async for segment in stream.iter_text()]
    assert stream.request_id and stream.delay_in_frames == 10
    said = " ".join(word.text for word in words)
    assert same_words([" ".join(EXPECTED[FIXTURE])], [said]), said
    assert all(0 <= word.start_s <= word.stop_s for word in words)


async def test_sdk_stt_stream_of_silence_past_the_idle_timeout_still_hears_the_next_command() -> None:
    """The SDK's stream is one connection, which it does not reopen (an idle timeout's error would
    raise), so Gradium's idle clock measures audio missing, not silence: 5 s of silence at microphone
    pace (over twice idle_timeout_s), then a command, whose words come on the one stream."""
    async with running_daemon(api_key=KEY, idle_timeout_s=2) as daemon:
        stream = await client(daemon).stt_stream(dict(SETUP), microphone("lights_on.wav", lead_silence_s=5))
        words = [segment async for segment in stream.iter_text()]
    said = " ".join(word.text for word in words)
    assert same_words([" ".join(EXPECTED["lights_on.wav"])], [said]), said


async def test_sdk_realtime_connection_flush_is_answered_per_command() -> None:
    """The SDK's `stt_realtime` connection, flushing after each command as a client's VAD would:
    each `flushed` (with its id) after that command's words; steps carry the VAD at index 2."""
    chunks = microphone_chunks(FIXTURE, FRAME_S)
    pauses = {22: 1, 48: 2}  # silence after the first and second commands
    async with (
        running_daemon(api_key=KEY) as daemon,
        client(daemon).stt_realtime(wait_for_ready_on_start=True, **SETUP) as stt,
    ):
        assert stt.ready["type"] == "ready"
        messages: list[dict] = []

        async def read() -> None:
            async for message in stt:
                messages.append(message)

        reading = asyncio.create_task(read())
        for index, chunk in enumerate(chunks):
            await stt.send_audio(chunk)
            if index in pauses:
                await stt.send_flush(pauses[index])
            await asyncio.sleep(FRAME_S)
        await stt.send_eos()
        async with asyncio.timeout(60):
            await reading
    cuts = [at for at, m in enumerate(messages) if m["type"] == "flushed"]
    assert [messages[at]["flush_id"] for at in cuts] == [1, 2]
    pieces = [messages[: cuts[0]], messages[cuts[0] : cuts[1]], messages[cuts[1] :]]
    said = [" ".join(m["text"] for m in piece if m["type"] == "text") for piece in pieces]
    assert same_words(EXPECTED[FIXTURE], said), said
    assert all(0 <= m["vad"][2]["inactivity_prob"] <= 1 for m in messages if m["type"] == "step")
    assert messages[-1]["type"] == "end_of_stream"


async def test_sdk_raises_the_daemons_sentence_for_a_bad_setup_and_the_401_for_a_wrong_key() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        with pytest.raises(Exception, match=r"raw PCM.*\(1008\)"):
            await client(daemon).stt_stream({**SETUP, "input_format": "opus"}, microphone())
        with pytest.raises(aiohttp.WSServerHandshakeError) as wrong:
            await client(daemon, "wrong").stt_stream(dict(SETUP), microphone())
    assert wrong.value.status == 401


def livekit_stt(daemon: Daemon, http: aiohttp.ClientSession, api_key: str = KEY) -> lk_gradium.STT:
    endpoint = f"ws://127.0.0.1:{daemon.http_port}/api/speech/asr"
    return lk_gradium.STT(api_key=api_key, model_endpoint=endpoint, http_session=http)


async def test_livekit_stream_gets_a_final_per_command_at_the_daemons_steps() -> None:
    """LiveKit's stream (24 kHz `pcm`) closes a turn when the steps' inactivity crosses its
    threshold: a FINAL_TRANSCRIPT per command, with the words as interims before it."""
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        events = await stream_fixture(livekit_stt(daemon, http), FIXTURE, finals=3)
    finals = [final.text for final in events.finals() if final.text]
    assert same_words(EXPECTED[FIXTURE], finals), finals
    assert re.fullmatch(r"(Si+FE){3}", events.turns()), events.turns()


async def test_livekit_stream_with_a_wrong_key_fails_with_the_401() -> None:
    """The plugin lets aiohttp's refused handshake through, with the upgrade's status."""
    async with running_daemon(api_key=KEY) as daemon, aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as wrong:
            await stream_fixture(livekit_stt(daemon, http, "wrong"), FIXTURE, finals=1)
    assert wrong.value.status == 401


def pipecat_service(daemon: Daemon, api_key: str = KEY, *, turns: bool = False) -> GradiumSTTService:
    endpoint = f"ws://127.0.0.1:{daemon.http_port}/api/speech/asr"
    return GradiumSTTService(api_key=api_key, api_endpoint_base_url=endpoint, enable_turn_detection=turns)


async def test_pipecat_service_gets_a_transcript_per_command_at_its_vads_flushes() -> None:
    """Pipecat's service flushes at each stop of its VAD and finalizes at `flushed`: one transcript
    per command, the words as interims."""
    async with running_daemon(api_key=KEY) as daemon:
        frames = await transcribed(pipecat_service(daemon), FIXTURE)
    assert frames.interims, "words reach Pipecat as interim transcripts"
    assert all(normalise(final) for final in frames.finals)


async def test_pipecat_service_with_a_wrong_key_gets_an_error_frame_with_the_401() -> None:
    async with running_daemon(api_key=KEY) as daemon:
        frames = await first_error(pipecat_service(daemon, "wrong"))
    assert "401" in frames.errors[0], frames.errors


async def test_pipecat_service_with_turn_detection_ends_each_turn_on_the_daemons_steps() -> None:
    """With `enable_turn_detection=True` Pipecat ignores its VAD: the steps' inactivity (the entry
    nearest 3 s) opens and ends each turn, its flush answered by `flushed`: one transcript per command."""
    async with running_daemon(api_key=KEY) as daemon:
        await transcribed(pipecat_service(daemon, turns=True), FIXTURE)
