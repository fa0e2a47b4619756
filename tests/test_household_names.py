"""The household's names end to end: a real daemon reads them from HomeAssistantDouble and every
Wyoming round and WebSocket session decodes with them (real Silero, real tiny.en, real clients)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import websockets
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient

from satellite_asr.biasing.correction import NameCorrector, corrector_for
from satellite_asr.clients import transcribe
from satellite_asr.clients.transcribe import OfflineTranscriber
from satellite_asr.clients.wav import read_wav
from satellite_asr.engines.whisper import REDECODE_SECOND_LOOK, WHISPER_CONTEXT_NAMES
from satellite_asr.homeassistant.client import State
from satellite_asr.server import Daemon
from tests.doubles import ContextRecordingEngineDouble, SlowLoadingEngineDouble
from tests.helpers import EXPECTED, FIXTURES, daemon_settings, running_daemon, word_error_rate, ws_url
from tests.home_assistant_double import EXPOSED_NAMES, HomeAssistantDouble, running_home_assistant
from tests.vllm_server_double import VllmServerDouble

pytestmark = pytest.mark.timeout(120)

TOKEN = "long-lived-token-e2e-8b41"  # must never show up in what the daemon says
NAMES = FIXTURES / "names"


@pytest.fixture
async def home_assistant() -> AsyncIterator[HomeAssistantDouble]:
    async with running_home_assistant(TOKEN) as double:
        yield double


async def health(daemon: Daemon) -> tuple[dict[str, Any], str]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{daemon.http_port}/health") as response:
        text = await response.text()
    return json.loads(text), text


async def wyoming_round(daemon: Daemon, wav_name: str, **transcribe: Any) -> str:
    """One round as Home Assistant runs it (transcribe, audio, audio-stop); the transcript's text."""
    wav = read_wav(NAMES / wav_name if (NAMES / wav_name).exists() else FIXTURES / wav_name)
    assert daemon.wyoming_port is not None
    async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
        await client.write_event(Transcribe(language="en", **transcribe).event())
        await client.write_event(AudioStart(rate=wav.sample_rate, width=2, channels=wav.channels).event())
        step = 2048 * wav.channels
        for offset in range(0, len(wav.pcm), step):
            chunk = wav.pcm[offset : offset + step]
            await client.write_event(
                AudioChunk(rate=wav.sample_rate, width=2, channels=wav.channels, audio=chunk).event()
            )
        await client.write_event(AudioStop().event())
        while (event := await client.read_event()) is not None:
            if Transcript.is_type(event.type):
                return Transcript.from_event(event).text
    raise AssertionError("the connection closed without a transcript")


async def websocket_session(daemon: Daemon, wav_name: str, **config: Any) -> tuple[dict[str, Any], str]:
    """One WebSocket session over a names fixture: its `session_created` config and its final's text."""
    audio = read_wav(NAMES / wav_name).to_16k_mono()
    async with websockets.connect(ws_url(daemon)) as ws:
        await ws.send(json.dumps({"type": "config", "language": "en", **config}))
        created = json.loads(await ws.recv())
        await ws.send(audio.astype("<f4").tobytes())
        await ws.send(json.dumps({"type": "end"}))
        finals = [message async for raw in ws if (message := json.loads(raw))["type"] == "final"]
    return created["config"], " ".join(final["text"] for final in finals)


async def test_every_protocol_decodes_with_the_homes_names(home_assistant: HomeAssistantDouble) -> None:
    """The names reach the engine (here 20 of them, as `ha_names_limit` says) and correct its text."""
    engine = ContextRecordingEngineDouble()
    async with running_daemon(
        engine, wyoming_uri="tcp://127.0.0.1:0", ha_url=home_assistant.url, ha_token=TOKEN, ha_names_limit=20
    ) as daemon:
        assert daemon.core.home_assistant is not None
        await daemon.core.home_assistant.wait_loaded()
        status, text = await health(daemon)
        assert status["home_assistant"]["state"] == "loaded" and status["home_assistant"]["names"] == EXPOSED_NAMES
        assert status["home_assistant"]["loaded_at"] and TOKEN not in text

        heard = await wyoming_round(daemon, "named_24.wav", transcript_names=["Okonkwo"])
        wyoming_context = engine.contexts[-1]
        config, websocket_heard = await websocket_session(daemon, "named_24.wav")
        websocket_context = engine.contexts[-1]
        config_off, heard_off = await websocket_session(daemon, "named_24.wav", household_names=False)
        context_off = engine.contexts[-1]

    assert wyoming_context.startswith("Okonkwo, Dojo, Lanai, Zendo, Liwan, Chowk, Lounge, "), (
        "the client's own names first, then the best"
    )
    assert wyoming_context.count(", ") == 20 and "Phone battery" not in wyoming_context
    assert websocket_context == wyoming_context.removeprefix("Okonkwo, ") and config["household_names"] is True
    assert "Marigold room" in heard, heard
    assert "Marigold room" in websocket_heard, websocket_heard
    assert TOKEN not in json.dumps(config)
    assert context_off == "" and config_off["household_names"] is False, "the client opted out"
    assert "Marigold room" not in heard_off, f"tiny.en alone does not hear it: {heard_off!r}"


async def test_whisper_takes_a_second_look_with_the_names_near_what_it_heard(
    home_assistant: HomeAssistantDouble,
) -> None:
    """Whisper's own choice (`ha_names_limit` -1): no names in its prompt, all of them (the client's
    terms first) to check what it heard against. tiny.en hears the Snug (named_31) as "the side",
    words that only loosely resemble a name, so its finals are looked at again (test_whisper_engine
    checks a look's words on a whole file); here, that the names reach the engine and it looks again.
    (named_21, the Whitlock door lock, served until its first text came out corrected by the text
    alone at the session's cut, with no look; so did named_07, Siobhan's fairy lights, heard as "she
    mourns every light", once held-out 37 brought Muireann's nightlight into the home.)"""
    engine = ContextRecordingEngineDouble()
    async with running_daemon(
        engine, wyoming_uri="tcp://127.0.0.1:0", ha_url=home_assistant.url, ha_token=TOKEN
    ) as daemon:
        assert daemon.core.home_assistant is not None
        await daemon.core.home_assistant.wait_loaded()
        _, heard = await websocket_session(daemon, "named_31.wav", context="Weather.")
        await wyoming_round(daemon, "named_31.wav", transcript_names=["Okonkwo"])
        second_looks = daemon.core.metrics.registry.get_sample_value(
            "satellite_asr_engine_redecodes_total", {"reason": REDECODE_SECOND_LOOK}
        )
    assert WHISPER_CONTEXT_NAMES == 0 and engine.contexts == ["Weather.", "Okonkwo"]
    websocket_names, wyoming_names = engine.names
    assert len(websocket_names) == EXPOSED_NAMES and "The Snug" in websocket_names
    assert wyoming_names == ("Okonkwo", *websocket_names)
    assert second_looks is not None and second_looks >= 1, (
        "a final whose first text missed the name (tiny.en writes it itself at some cuts of this file)"
    )
    # what the look writes differs with CTranslate2's CPU kernels (test_whisper_engine checks a look's words)
    assert heard.lower().startswith("turn on"), heard


async def test_a_name_the_decoder_nearly_wrote_reaches_the_transcript_through_websocket_and_wyoming(
    home_assistant: HomeAssistantDouble,
) -> None:
    """tiny.en hears Beatriz's fan (held-out 7) as words the text alone takes for the Pedestal fan,
    but " Be" was among its likeliest tokens where it wrote others (`Transcript.nearly_written`), and
    the session's correction matches that name first: without it, "Turn on Pedestal fan."."""
    async with running_daemon(wyoming_uri="tcp://127.0.0.1:0", ha_url=home_assistant.url, ha_token=TOKEN) as daemon:
        assert daemon.core.home_assistant is not None
        await daemon.core.home_assistant.wait_loaded()
        _, websocket_heard = await websocket_session(daemon, "heldout7_named_05.wav")
        wyoming_heard = await wyoming_round(daemon, "heldout7_named_05.wav")
    assert "Beatriz's fan" in websocket_heard, websocket_heard
    assert "Beatriz's fan" in wyoming_heard, wyoming_heard


async def test_a_name_in_a_neural_voice_comes_out_with_the_homes_names_and_not_without(
    home_assistant: HomeAssistantDouble,
) -> None:
    """Piper's person-like voice (held-out 39, `piper_heldout39`): tiny.en writes the Caerhays
    library as other words ("the Care Hayes Library") unless the session has the home's names."""
    async with running_daemon(wyoming_uri="tcp://127.0.0.1:0", ha_url=home_assistant.url, ha_token=TOKEN) as daemon:
        assert daemon.core.home_assistant is not None
        await daemon.core.home_assistant.wait_loaded()
        opted_out, without = await websocket_session(daemon, "piper_heldout39_named_26.wav", household_names=False)
        _, websocket_heard = await websocket_session(daemon, "piper_heldout39_named_26.wav")
        wyoming_heard = await wyoming_round(daemon, "piper_heldout39_named_26.wav")
    assert opted_out["household_names"] is False
    assert "library" in without.lower() and "caerhays" not in without.lower(), without
    assert "Caerhays library" in websocket_heard, websocket_heard
    assert "Caerhays library" in wyoming_heard, wyoming_heard


async def test_the_sessions_correction_runs_off_the_event_loop(
    home_assistant: HomeAssistantDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Correcting a text costs its words times the home's names (half a second for a 100-word
    dictation against 1420 names), making its matcher a tenth of a second: on the event loop they
    would stall every other session. Spies on `NameCorrector`'s making and `correct` record the
    thread of every call and call them through."""
    loop_thread = threading.get_ident()
    made: list[int] = []
    corrected: list[int] = []
    make, correct = NameCorrector.__init__, NameCorrector.correct

    def make_spy(self: NameCorrector, *args: Any, **kwargs: Any) -> None:
        made.append(threading.get_ident())
        make(self, *args, **kwargs)

    def correct_spy(self: NameCorrector, *args: Any, **kwargs: Any) -> str:
        corrected.append(threading.get_ident())
        return correct(self, *args, **kwargs)

    monkeypatch.setattr(NameCorrector, "__init__", make_spy)
    monkeypatch.setattr(NameCorrector, "correct", correct_spy)
    corrector_for.cache_clear()  # this home's matcher made afresh
    async with running_daemon(wyoming_uri="tcp://127.0.0.1:0", ha_url=home_assistant.url, ha_token=TOKEN) as daemon:
        assert daemon.core.home_assistant is not None
        await daemon.core.home_assistant.wait_loaded()
        _, websocket_heard = await websocket_session(daemon, "heldout7_named_05.wav")
        wyoming_heard = await wyoming_round(daemon, "heldout7_named_05.wav")
    assert "Beatriz's fan" in websocket_heard and "Beatriz's fan" in wyoming_heard, "corrected all the same"
    assert made and loop_thread not in made
    assert corrected and loop_thread not in corrected


async def test_a_command_heard_clearly_keeps_its_words_when_a_name_loosely_sounds_like_them(
    home_assistant: HomeAssistantDouble,
) -> None:
    """tiny.en writes "What is the weather this weekend?" (held-out 3, name-free) sure of its words,
    and the home's Wetherby sconce sounds loosely like them (0.66): the name took their place until
    the correction asked how sure the engine was (`Transcript.token_spans`)."""
    async with running_daemon(
        ContextRecordingEngineDouble(), wyoming_uri="tcp://127.0.0.1:0", ha_url=home_assistant.url, ha_token=TOKEN
    ) as daemon:
        assert daemon.core.home_assistant is not None
        await daemon.core.home_assistant.wait_loaded()
        heard = await wyoming_round(daemon, "heldout3_plain_15.wav")
    assert word_error_rate("what is the weather this weekend", heard) == 0, heard


@pytest.mark.parametrize(
    ("logprob", "expected"), [(-0.01, "How long until sunset?"), (-1.0, "How Hlongwane heater sunset?")]
)
async def test_qwen3_keeps_words_it_was_sure_of_when_a_name_loosely_sounds_like_them(
    home_assistant: HomeAssistantDouble, logprob: float, expected: str
) -> None:
    """Qwen3-ASR over HTTP (VllmServerDouble, as if it heard "How long until sunset?"), and the
    home's Hlongwane heater sounds loosely like those words (0.66): the name takes their place
    unless the model says it was sure of them, as tiny.en does."""
    server = VllmServerDouble(transcript="How long until sunset?", logprob=logprob)
    await server.start()
    try:
        async with running_daemon(
            engine="qwen3-remote",
            remote_urls=(server.url,),
            wyoming_uri="tcp://127.0.0.1:0",
            ha_url=home_assistant.url,
            ha_token=TOKEN,
        ) as daemon:
            assert daemon.core.home_assistant is not None
            await daemon.core.home_assistant.wait_loaded()
            wyoming_heard = await wyoming_round(daemon, "heldout3_plain_15.wav")
            _, websocket_heard = await websocket_session(daemon, "heldout3_plain_15.wav", partials=False)
    finally:
        await server.stop()
    assert wyoming_heard == websocket_heard == expected
    assert server.chat_bodies and all(body["logprobs"] for body in server.chat_bodies)


async def test_a_change_in_home_assistant_reaches_the_next_session(home_assistant: HomeAssistantDouble) -> None:
    """The most allowed, 1000: the new area's alias ranks 252nd among 1422 names, past a limit of 100."""
    engine = ContextRecordingEngineDouble()
    async with running_daemon(engine, ha_url=home_assistant.url, ha_token=TOKEN, ha_names_limit=1000) as daemon:
        client = daemon.core.home_assistant
        assert client is not None
        loaded = await client.wait_loaded()
        await websocket_session(daemon, "plain_00.wav")
        home_assistant.home["areas"].append({"id": "attic", "name": "Larkspur attic", "aliases": ["Crow's nest"]})
        assert await home_assistant.push_event("area_registry_updated", {"action": "create", "area_id": "attic"})
        await client.wait_loaded(loaded)
        await websocket_session(daemon, "plain_00.wav")
        status, _ = await health(daemon)
    before, after = engine.contexts
    assert "Crow's nest" not in before and "Crow's nest" in after
    assert status["home_assistant"]["names"] == EXPOSED_NAMES + 2


async def test_a_wrong_token_shows_in_health_and_the_daemon_serves_on(home_assistant: HomeAssistantDouble) -> None:
    async with running_daemon(
        wyoming_uri="tcp://127.0.0.1:0", ha_url=home_assistant.url, ha_token="not-the-token-4c7d"
    ) as daemon:
        assert daemon.core.home_assistant is not None
        await daemon.core.home_assistant.wait_for(State.AUTH_FAILED)
        status, text = await health(daemon)
        heard = await wyoming_round(daemon, "lights_on.wav")
    assert status["status"] == "ready"
    assert status["home_assistant"]["state"] == "auth_failed" and status["home_assistant"]["names"] == 0
    assert status["home_assistant"]["last_error"] and "not-the-token-4c7d" not in text
    assert word_error_rate(EXPECTED["lights_on.wav"][0], heard) <= 0.2, heard


async def test_without_home_assistant_health_says_disabled() -> None:
    async with running_daemon() as daemon:
        status, _ = await health(daemon)
    assert daemon.core.home_assistant is None
    assert status["home_assistant"] == {"state": "disabled", "names": 0, "loaded_at": None, "last_error": None}


async def test_transcribe_waits_for_the_names_of_a_home_assistant_that_answers_late(
    home_assistant: HomeAssistantDouble,
) -> None:
    """A file is transcribed once, at once: Home Assistant's first answer, held back here until the
    engine has loaded, is still waited for, and the names reach the file's decode."""
    home_assistant.states_gate.clear()
    engine = ContextRecordingEngineDouble()
    transcriber = OfflineTranscriber(
        daemon_settings(ha_url=home_assistant.url, ha_token=TOKEN, ha_names_limit=20), engine
    )
    entering = asyncio.ensure_future(transcriber.__aenter__())
    try:
        await transcriber.core.wait_ready()
        await home_assistant.until(lambda: "get_states" in home_assistant.commands)
        home_assistant.states_gate.set()
        await entering
        finals = await transcriber.transcribe(NAMES / "named_24.wav")
    finally:
        await transcriber.close()
    assert engine.names and all("Marigold room" in names for names in engine.names), "decoded with the names"
    assert "Marigold room" in " ".join(final.text for final in finals)


async def test_transcribe_says_it_goes_on_without_names_when_home_assistant_refuses_its_token(
    home_assistant: HomeAssistantDouble, caplog: pytest.LogCaptureFixture
) -> None:
    engine = ContextRecordingEngineDouble()
    settings = daemon_settings(ha_url=home_assistant.url, ha_token="not-the-token", ha_names_limit=20)
    with caplog.at_level(logging.WARNING, logger="satellite_asr"):
        async with OfflineTranscriber(settings, engine) as transcriber:
            await transcriber.transcribe(FIXTURES / "weather.wav")
    assert engine.names == [()], "decoded without names"
    said = [record.getMessage() for record in caplog.records if "Invalid access token" in record.getMessage()]
    assert len(said) == 1 and "refused the access token" in said[0], "the refusal, said once"
    assert "transcribing without Home Assistant's household names (the error above)" in caplog.text
    assert "not-the-token" not in caplog.text


async def test_transcribe_waits_a_silent_home_assistant_out(
    home_assistant: HomeAssistantDouble, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transcribe, "NAMES_WAIT_S", 0.5)
    home_assistant.states_gate.clear()
    settings = daemon_settings(ha_url=home_assistant.url, ha_token=TOKEN)
    with caplog.at_level(logging.WARNING, logger="satellite_asr"):
        async with OfflineTranscriber(settings, ContextRecordingEngineDouble()) as transcriber:
            assert transcriber.core.home_assistant is not None
            assert transcriber.core.home_assistant.loads == 0
    assert "transcribing without Home Assistant's household names: it did not answer within 0 s" in caplog.text
    home_assistant.states_gate.set()


async def test_transcribe_says_home_assistant_is_still_starting_when_it_goes_on_without_its_names(
    home_assistant: HomeAssistantDouble, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Home Assistant that answers but is still starting (its integrations set up, for minutes after
    a restart) was said as one that "did not answer": the user would look for a network fault. The
    engine loads once Home Assistant has said it is starting, so the wait is spent in that state."""
    monkeypatch.setattr(transcribe, "NAMES_WAIT_S", 0.5)
    home_assistant.state = "NOT_RUNNING"
    engine = SlowLoadingEngineDouble()
    transcriber = OfflineTranscriber(daemon_settings(ha_url=home_assistant.url, ha_token=TOKEN), engine)
    assert transcriber.core.home_assistant is not None
    with caplog.at_level(logging.WARNING, logger="satellite_asr"):
        entering = asyncio.ensure_future(transcriber.__aenter__())
        try:
            await transcriber.core.home_assistant.wait_for(State.STARTING)
            engine.release.set()
            await entering
        finally:
            await transcriber.close()
    (said,) = [record.getMessage() for record in caplog.records if "transcribing without" in record.getMessage()]
    assert said == "transcribing without Home Assistant's household names: it is still starting", said
