"""Adaptive endpointing end to end: real daemon, real Silero and tiny.en, both protocols' real clients.

Audio goes at microphone pace (the turn detector's verdict races the silence, as in use). The long
silence is set far above a decode's time, so what the tests see is the verdict, not the machine's
speed: a complete command ends at the short silence (`endpoint: complete`); a command with a pause
inside is never cut there (one final, every word, ending where the voice does).
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from wyoming.client import AsyncTcpClient

from satellite_asr.clients.stream_client import stream_file
from satellite_asr.clients.wav import read_wav
from satellite_asr.clients.wyoming_bench import transcribe_like_home_assistant
from satellite_asr.server import Daemon
from tests.doubles import HeardAsGermanEngineDouble
from tests.eval_turns import MANIFEST, TURNS
from tests.helpers import of_type, running_daemon, same_words, ws_url

pytestmark = pytest.mark.timeout(180)

COMPLETE = ["dev_complete_03.wav", "dev_complete_06.wav", "dev_complete_12.wav", "dev_complete_15.wav"]
"""Complete commands tiny.en hears right, whose voice falls at the end."""
PAUSED = ["dev_paused_02.wav", "dev_paused_06.wav", "dev_paused_09.wav", "heldout_paused_04.wav", "dev_hard_02.wav"]
"""Commands with a 0.45-0.6 s pause inside: after a word that cannot end one, or (dev_hard_02) after a
first half that reads as finished ("Set a timer for 10 minutes.") where the voice held its pitch."""
LONG_SILENCE_MS = 3000
"""Far longer than the pauses, and than any decode on a busy machine: only the verdict ends early."""


async def websocket_finals(daemon: Daemon, name: str) -> list[dict[str, object]]:
    config = {"language": "en", "vad": {"silence_ms": LONG_SILENCE_MS}}
    return of_type(await stream_file(TURNS / name, ws_url(daemon), config=config), "final")


async def test_websocket_ends_complete_commands_early_and_never_cuts_a_pause() -> None:
    async with running_daemon() as daemon:
        results = await asyncio.gather(*(websocket_finals(daemon, name) for name in COMPLETE + PAUSED))
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{daemon.http_port}/metrics") as r:
            metrics = await r.text()
    for name, finals in zip(COMPLETE + PAUSED, results, strict=True):
        assert same_words([MANIFEST[name]["text"]], [str(f["text"]) for f in finals]), (name, finals)
        (final,) = finals
        assert float(str(final["end"])) > float(MANIFEST[name]["voice_end_s"]) - 0.1, (name, final)
        if name in COMPLETE:
            assert final["endpoint"] == "complete", (name, final)
    complete = sum(f[0]["endpoint"] == "complete" for f in results)
    assert f'satellite_asr_endpoints_total{{reason="complete"}} {float(complete)}' in metrics
    assert f"satellite_asr_endpoint_silence_seconds_count {float(complete)}" in metrics


QUESTION = "questions_complete_11.wav"
"""A question asked rising ("Can you turn on the fan?", the voice heading +4.4 semitones at its end)."""
PAUSED_QUESTION = "questions_paused_08.wav"
"""A question whose voice rose at its pause, less than at a question's end ("What is the humidity in
the | bathroom?", heard there as "What is the humidity in that?", heading +1.8)."""


async def test_a_question_asked_rising_ends_early_and_one_paused_rising_is_not_cut() -> None:
    """The paused one comes as one final with every word, ending where the voice does (at its real
    end it is a question asked rising too, so it may end early there)."""
    async with running_daemon(wyoming_uri="tcp://127.0.0.1:0", silence_ms=LONG_SILENCE_MS) as daemon:
        (question,), (paused,) = await asyncio.gather(
            websocket_finals(daemon, QUESTION), websocket_finals(daemon, PAUSED_QUESTION)
        )
        heard = await wyoming_round(daemon, QUESTION, expect_early=True)
    assert question["endpoint"] == "complete", question
    for name, text in ((QUESTION, question["text"]), (PAUSED_QUESTION, paused["text"]), (QUESTION, heard)):
        assert same_words([MANIFEST[name]["text"]], [str(text)]), (name, text)
    assert float(str(paused["end"])) > float(MANIFEST[PAUSED_QUESTION]["voice_end_s"]) - 0.1, paused


@pytest.mark.parametrize(("mean_logprob", "ends_early"), [(-0.3, True), (-2.0, False)])
async def test_outside_english_a_text_the_engine_doubts_waits_the_long_silence(
    mean_logprob: float, ends_early: bool
) -> None:
    """The session hands the engine's language and confidence to the turn detector: the same
    punctuated text ("Open the blinds in the living room.") heard as German ends at the short silence when the engine is
    sure of it, at the long one when it doubts it (in English the voice's pitch decides instead)."""
    config = {"language": "en", "vad": {"silence_ms": LONG_SILENCE_MS}}
    async with running_daemon(HeardAsGermanEngineDouble(mean_logprob)) as daemon:
        (final,) = of_type(await stream_file(TURNS / "dev_complete_06.wav", ws_url(daemon), config=config), "final")
    assert (final["endpoint"] == "complete") is ends_early, final
    assert same_words([MANIFEST["dev_complete_06.wav"]["text"]], [str(final["text"])]), final


async def wyoming_round(
    daemon: Daemon, name: str, *, realtime: bool = True, chunk_samples: int = 1024, expect_early: bool = False
) -> str:
    assert daemon.wyoming_port is not None
    async with AsyncTcpClient("127.0.0.1", daemon.wyoming_port) as client:
        result = await transcribe_like_home_assistant(
            client, read_wav(TURNS / name), realtime=realtime, chunk_samples=chunk_samples
        )
    assert result.text is not None, name
    if realtime and (expect_early or name in COMPLETE):
        assert result.audio_stop_at is None, f"{name}: answered at the short silence, before the audio ran out"
    return result.text


async def test_home_assistant_gets_whole_commands() -> None:
    async with running_daemon(wyoming_uri="tcp://127.0.0.1:0", silence_ms=LONG_SILENCE_MS) as daemon:
        texts = await asyncio.gather(*(wyoming_round(daemon, name) for name in COMPLETE + PAUSED))
    for name, text in zip(COMPLETE + PAUSED, texts, strict=True):
        assert same_words([MANIFEST[name]["text"]], [text]), (name, text)


@pytest.mark.parametrize("name", ["dev_paused_06.wav", "dev_complete_01.wav", "heldout_complete_13.wav"])
async def test_the_transcript_does_not_depend_on_how_audio_is_framed(name: str) -> None:
    """Home Assistant sends 10 ms chunks whatever its satellite sends; 100 ms and 1 s must read the same."""
    async with running_daemon(wyoming_uri="tcp://127.0.0.1:0") as daemon:
        texts = [await wyoming_round(daemon, name, realtime=False, chunk_samples=n) for n in (160, 1600, 16000)]
    assert texts[0] == texts[1] == texts[2], texts
    assert same_words([MANIFEST[name]["text"]], texts[:1]), texts


async def test_a_pitch_measure_that_fails_leaves_the_verdict_to_the_text(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault injected into the pitch tracker: the punctuated, confident text still ends the
    command at the short silence, and the failure is logged."""

    def broken_pitch_tracker(audio: object) -> float:
        raise FloatingPointError("injected fault")

    monkeypatch.setattr("satellite_asr.session.final_pitch", broken_pitch_tracker)
    name = "dev_complete_12.wav"
    async with running_daemon() as daemon:
        (final,) = await websocket_finals(daemon, name)
    assert final["endpoint"] == "complete", final
    assert same_words([MANIFEST[name]["text"]], [str(final["text"])]), final
    assert "the pitch could not be measured" in caplog.text
