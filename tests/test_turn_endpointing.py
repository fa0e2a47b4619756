"""Adaptive endpointing end to end: real daemon, real Silero and tiny.en, both protocols' real clients.

Audio goes at microphone pace (the turn detector's verdict races the silence, as in use), but each
stream (WebSocket, or Home Assistant's over Wyoming) stalls in the pause it is judged at (a complete
command's silence at its end, a paused one's pause) until the daemon has handed the verdict on that
pause to its endpointer (its debug line says so). The daemon counts silence in samples, so on a
quiet machine, where the verdict is in before the stall, this changes nothing; on a busy one the
verdict still lands in the pause instead of after the stream's end: what the tests see is the
verdict, not the machine's speed. A complete command ends at the short silence (`endpoint:
complete`); a command with a pause inside is never cut there (one final, every word, ending where
the voice does).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import pytest
from wyoming.client import AsyncTcpClient

from satellite_asr.clients.stream_client import stream_source
from satellite_asr.clients.wav import read_wav
from satellite_asr.clients.wyoming_bench import RoundResult, transcribe_like_home_assistant
from satellite_asr.server import Daemon
from satellite_asr.vad.turn import TurnVerdict
from tests.doubles import HeardAsGermanEngineDouble, StallingWavSourceDouble, StallingWyomingClientDouble
from tests.eval_turns import MANIFEST, TURNS
from tests.helpers import (
    TurnDecision,
    TurnDecisions,
    eventually,
    of_type,
    running_daemon,
    same_words,
    turn_decisions,
    ws_url,
)

pytestmark = pytest.mark.timeout(180)

COMPLETE = ["dev_complete_03.wav", "dev_complete_06.wav", "dev_complete_12.wav", "dev_complete_15.wav"]
"""Complete commands tiny.en hears right, whose voice falls at the end."""
PAUSED = ["dev_paused_02.wav", "dev_paused_06.wav", "dev_paused_09.wav", "heldout_paused_04.wav", "dev_hard_02.wav"]
"""Commands with a 0.45-0.6 s pause inside: after a word that cannot end one, or (dev_hard_02) after a
first half that reads as finished ("Set a timer for 10 minutes.") where the voice held its pitch."""
LONG_SILENCE_MS = 3000
"""Longer than the pauses and than the silence a stream stalls in: only the verdict ends early."""
STALL_AFTER_VOICE_S = 0.6
"""Where a complete command's stream stalls, after its voice ends: past the first speculation (at
half the short silence, once Silero's tail has fallen under the threshold), within the file."""
STALL_BEFORE_VOICE_S = 0.05
"""Where a paused command's stream stalls, before its voice resumes: a pause is 0.45 s or more."""


@pytest.fixture
def decisions() -> Iterator[TurnDecisions]:
    with turn_decisions() as heard:
        yield heard


def judged_pause(name: str) -> tuple[float, float]:
    """Where the audio of the verdict a file's stream waits for ends, at least (its voice paused,
    or ended: the tolerance on a final's `end`), and where the stream stalls for it."""
    entry = MANIFEST[name]
    if "pause_start_s" in entry:
        return float(entry["pause_start_s"]), float(entry["pause_end_s"]) - STALL_BEFORE_VOICE_S
    voice_end = float(entry["voice_end_s"])
    return voice_end - 0.1, voice_end + STALL_AFTER_VOICE_S


def judged_verdict(decisions: TurnDecisions, name: str, session: str) -> TurnDecision | None:
    """The session's verdict on the file's judged pause, once handed to its endpointer."""
    paused_at, stall_s = judged_pause(name)
    return next((d for d in decisions.of_session(session) if paused_at <= d.at_s <= stall_s), None)


async def websocket_finals(daemon: Daemon, name: str, decisions: TurnDecisions) -> list[dict[str, object]]:
    """The file's finals, its stream stalled in its judged pause until the verdict on it is in."""
    config = {"language": "en", "vad": {"silence_ms": LONG_SILENCE_MS}}
    session: list[str] = []

    def note_session(message: dict[str, object]) -> None:
        if message["type"] == "session_created":
            session.append(str(message["session_id"]))

    def verdict_in() -> bool:
        return bool(session) and judged_verdict(decisions, name, session[0]) is not None

    source = StallingWavSourceDouble(TURNS / name, [judged_pause(name)[1]], lambda _: eventually(verdict_in))
    return of_type(await stream_source(source, ws_url(daemon), config=config, on_message=note_session), "final")


async def test_websocket_ends_complete_commands_early_and_never_cuts_a_pause(decisions: TurnDecisions) -> None:
    async with running_daemon() as daemon:
        results = await asyncio.gather(*(websocket_finals(daemon, name, decisions) for name in COMPLETE + PAUSED))
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{daemon.http_port}/metrics") as r:
            metrics = await r.text()
    for name, finals in zip(COMPLETE + PAUSED, results, strict=True):
        assert same_words([MANIFEST[name]["text"]], [str(f["text"]) for f in finals]), (name, finals)
        (final,) = finals
        assert float(str(final["end"])) > float(MANIFEST[name]["voice_end_s"]) - 0.1, (name, final)
        if name in COMPLETE:
            assert final["endpoint"] == "complete", (name, final)
    complete = sum(f[0]["endpoint"] == "complete" for f in results)
    waited = sum(f[0]["endpoint"] != "forced" for f in results)  # complete and silence endpoints
    assert f'satellite_asr_endpoints_total{{reason="complete"}} {float(complete)}' in metrics
    assert f"satellite_asr_endpoint_silence_seconds_count {float(waited)}" in metrics


QUESTION = "questions_complete_11.wav"
"""A question asked rising ("Can you turn on the fan?", the voice heading +4.4 semitones at its end)."""
PAUSED_QUESTION = "questions_paused_08.wav"
"""A question whose voice rose at its pause, less than at a question's end ("What is the humidity in
the | bathroom?", heard there as "What is the humidity in that?", heading +1.8)."""


async def test_a_question_asked_rising_ends_early_and_one_paused_rising_is_not_cut(decisions: TurnDecisions) -> None:
    """The paused one comes as one final with every word, ending where the voice does (at its real
    end it is a question asked rising too, so it may end early there)."""
    async with running_daemon(wyoming_uri="tcp://127.0.0.1:0", silence_ms=LONG_SILENCE_MS) as daemon:
        (question,), (paused,) = await asyncio.gather(
            websocket_finals(daemon, QUESTION, decisions), websocket_finals(daemon, PAUSED_QUESTION, decisions)
        )
        (heard,) = await judged_wyoming_rounds(daemon, [QUESTION], decisions)
    answered_early(QUESTION, heard)
    assert question["endpoint"] == "complete", question
    for name, text in ((QUESTION, question["text"]), (PAUSED_QUESTION, paused["text"]), (QUESTION, heard.text)):
        assert same_words([MANIFEST[name]["text"]], [str(text)]), (name, text)
    assert float(str(paused["end"])) > float(MANIFEST[PAUSED_QUESTION]["voice_end_s"]) - 0.1, paused


@pytest.mark.parametrize(("mean_logprob", "ends_early"), [(-0.3, True), (-2.0, False)])
async def test_outside_english_a_text_the_engine_doubts_waits_the_long_silence(
    mean_logprob: float, ends_early: bool, decisions: TurnDecisions
) -> None:
    """The session hands the engine's language and confidence to the turn detector: the same
    punctuated text ("Open the blinds in the living room.") heard as German ends at the short silence when the engine is
    sure of it, at the long one when it doubts it (in English the voice's pitch decides instead)."""
    async with running_daemon(HeardAsGermanEngineDouble(mean_logprob)) as daemon:
        (final,) = await websocket_finals(daemon, "dev_complete_06.wav", decisions)
    assert (final["endpoint"] == "complete") is ends_early, final
    assert same_words([MANIFEST["dev_complete_06.wav"]["text"]], [str(final["text"])]), final


async def wyoming_round(
    daemon: Daemon,
    name: str,
    *,
    realtime: bool = True,
    chunk_samples: int = 1024,
    resume: Callable[[StallingWyomingClientDouble], Awaitable[None]] | None = None,
) -> RoundResult:
    """Home Assistant's round for the file; with `resume`, its audio stalls in the judged pause until that returns."""
    assert daemon.wyoming_port is not None
    host, port = "127.0.0.1", daemon.wyoming_port
    if resume is None:
        client = AsyncTcpClient(host, port)
    else:
        client = StallingWyomingClientDouble(host, port, judged_pause(name)[1], resume)
    async with client:
        result = await transcribe_like_home_assistant(
            client, read_wav(TURNS / name), realtime=realtime, chunk_samples=chunk_samples
        )
    assert result.text is not None, name
    return result


async def judged_wyoming_rounds(daemon: Daemon, names: list[str], decisions: TurnDecisions) -> list[RoundResult]:
    """Home Assistant's rounds for `names`, at once, each stalled in its judged pause until the verdict
    on it is in, and, when complete, its transcript. Each starts once the one before has its session,
    to know whose session is whose."""
    session_of: dict[str, str] = {}

    async def when_judged(name: str, client: StallingWyomingClientDouble) -> None:
        def verdict() -> TurnDecision | None:
            return judged_verdict(decisions, name, session_of[name]) if name in session_of else None

        await eventually(lambda: verdict() is not None)
        judged = verdict()
        if judged is not None and judged.verdict is TurnVerdict.COMPLETE:
            await eventually(lambda: "transcript" in client.kinds_read)

    rounds = []
    for name in names:
        known = {s.id for s in daemon.core.sessions.open_sessions()}
        resume = functools.partial(when_judged, name)
        rounds.append(asyncio.create_task(wyoming_round(daemon, name, resume=resume)))
        await eventually(functools.partial(opened_since, daemon, known))
        (session_of[name],) = opened_since(daemon, known)
    return await asyncio.gather(*rounds)


def opened_since(daemon: Daemon, known: set[str]) -> set[str]:
    return {s.id for s in daemon.core.sessions.open_sessions()} - known


def answered_early(name: str, result: RoundResult) -> None:
    assert result.audio_stop_at is None, f"{name}: answered at the short silence, before the audio ran out"


async def test_home_assistant_gets_whole_commands(decisions: TurnDecisions) -> None:
    async with running_daemon(wyoming_uri="tcp://127.0.0.1:0", silence_ms=LONG_SILENCE_MS) as daemon:
        results = await judged_wyoming_rounds(daemon, COMPLETE + PAUSED, decisions)
    for name, result in zip(COMPLETE + PAUSED, results, strict=True):
        assert same_words([MANIFEST[name]["text"]], [str(result.text)]), (name, result.text)
        if name in COMPLETE:
            answered_early(name, result)


@pytest.mark.parametrize("name", ["dev_paused_06.wav", "dev_complete_01.wav", "heldout_complete_13.wav"])
async def test_the_transcript_does_not_depend_on_how_audio_is_framed(name: str) -> None:
    """Home Assistant sends 10 ms chunks whatever its satellite sends; 100 ms and 1 s must read the same."""
    async with running_daemon(wyoming_uri="tcp://127.0.0.1:0") as daemon:
        texts = [(await wyoming_round(daemon, name, realtime=False, chunk_samples=n)).text for n in (160, 1600, 16000)]
    assert texts[0] == texts[1] == texts[2], texts
    assert same_words([MANIFEST[name]["text"]], texts[:1]), texts


async def test_a_pitch_measure_that_fails_leaves_the_verdict_to_the_text(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, decisions: TurnDecisions
) -> None:
    """A fault injected into the pitch tracker: the punctuated, confident text still ends the
    command at the short silence, and the failure is logged."""

    def broken_pitch_tracker(audio: object) -> float:
        raise FloatingPointError("injected fault")

    monkeypatch.setattr("satellite_asr.session.final_pitch", broken_pitch_tracker)
    name = "dev_complete_12.wav"
    async with running_daemon() as daemon:
        (final,) = await websocket_finals(daemon, name, decisions)
    assert final["endpoint"] == "complete", final
    assert same_words([MANIFEST[name]["text"]], [str(final["text"])]), final
    assert "the pitch could not be measured" in caplog.text
