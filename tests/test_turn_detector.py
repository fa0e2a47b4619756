"""The rule turn detector: each rule on its own, other languages, and on real Whisper text at a pause."""

from __future__ import annotations

import pytest

from satellite_asr.engines.whisper import WhisperEngine
from satellite_asr.vad.turn import (
    DOUBTED_FALLEN_SEMITONES,
    DOUBTFUL_LOGPROB,
    FALLEN_SEMITONES,
    RISEN_SEMITONES,
    RuleTurnDetector,
    TurnDetector,
    TurnVerdict,
)
from tests.eval_turns import MANIFEST, judge

COMPLETE, INCOMPLETE, UNSURE = TurnVerdict.COMPLETE, TurnVerdict.INCOMPLETE, TurnVerdict.UNSURE
detector: TurnDetector = RuleTurnDetector()


@pytest.mark.parametrize("language", ["en", "de", None])
@pytest.mark.parametrize("text", ["", "   ", "...", "—", "[BLANK_AUDIO]", "(coughs)", "*cough*", " [Music] . "])
def test_no_words_never_end_a_turn(text: str, language: str | None) -> None:
    assert detector.verdict(text, language) is INCOMPLETE


@pytest.mark.parametrize(
    "text",
    [
        "Set a timer for...",
        "Turn on the kitchen…",
        "Play some music -",
        "Play some music —",
        "Turn on the lights,",
        "Turn on the lights, ",
        'Turn on the lights,"',
    ],
)
@pytest.mark.parametrize("language", ["en", "fr", None])
def test_trailing_off_is_incomplete_in_any_language(text: str, language: str | None) -> None:
    assert detector.verdict(text, language) is INCOMPLETE


@pytest.mark.parametrize(
    "text",
    [
        "Set a timer for.",
        "set a timer for",
        "Set the temperature to.",
        "Turn on the.",
        "What is on my?",
        "What is the weather in?",
        "Add milk and.",
        "Call my",
        "Set an alarm for a",
        "Open the garage door or",
        "Play some",
        "Remind me at",
        "What's",
        "What\u2019s.",
        "Tell me the weather in the",
        "Send a message to",
        "Increase the volume by",
        "Set.",
        "Turn.",
        "SET A TIMER FOR.",
    ],
)
def test_a_last_word_that_cannot_end_a_command_wins_over_the_period(text: str) -> None:
    assert detector.verdict(text, "en") is INCOMPLETE


@pytest.mark.parametrize("text", ["Remind me too.", "Check the volume, too.", "Turn off the fan end."])
def test_how_whisper_writes_a_cut_to_or_and_is_incomplete(text: str) -> None:
    assert detector.verdict(text, "en") is INCOMPLETE


@pytest.mark.parametrize(
    "text",
    ["Turn the heat down to it.", "Give me a timer for it.", "Open the gate for it.", "Switch the porch light of it."],
)
def test_how_whisper_writes_a_preposition_cut_off_by_a_pause_is_incomplete_however_the_voice_fell(text: str) -> None:
    assert detector.verdict(text, "en", SURE, FELL) is INCOMPLETE


@pytest.mark.parametrize("text", ["What time is it?", "Turn it off.", "Turn it up to 70.", "Stop it."])
def test_it_ends_a_command_after_anything_but_a_preposition(text: str) -> None:
    assert detector.verdict(text, "en", SURE, FELL) is COMPLETE


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Turn it off.", COMPLETE),
        ("Turn the kitchen lights off.", COMPLETE),
        ("Switch the fan on!", COMPLETE),
        ("Turn it up.", COMPLETE),
        ("Shut the heater off.", COMPLETE),
        ("Turn the volume down.", COMPLETE),
        ("Turn on.", INCOMPLETE),
        ("Switch off.", INCOMPLETE),
        ("Turn up", INCOMPLETE),
        ("Put on.", INCOMPLETE),
    ],
)
def test_a_particle_ends_a_command_only_after_its_object(text: str, verdict: TurnVerdict) -> None:
    assert detector.verdict(text, "en") is verdict


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Set a timer for 10.", COMPLETE),
        ("Set the temperature to 72.", COMPLETE),
        ("Set the lights to 50%.", COMPLETE),
        ("Set a timer for ten minutes", UNSURE),
        ("Set the temperature to", INCOMPLETE),
        ("Set the temperature to 7,", INCOMPLETE),
    ],
)
def test_numbers_end_a_command(text: str, verdict: TurnVerdict) -> None:
    assert detector.verdict(text, "en") is verdict


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("What time is it?", COMPLETE),
        ("Turn off all the lights, please.", COMPLETE),
        ("Stop the music!", COMPLETE),
        ('"Close the garage door."', COMPLETE),
        ("Open the blinds in the living room.", COMPLETE),
        ("Play the news", UNSURE),
        ("Pause the music", UNSURE),
        ("turn on the lights", UNSURE),
        ("(coughs) Turn it off.", COMPLETE),
    ],
)
def test_sentence_end_is_complete_and_no_punctuation_is_unsure(text: str, verdict: TurnVerdict) -> None:
    assert detector.verdict(text, "en") is verdict


SURE, DOUBTFUL = -0.3, -1.5
"""Log-probabilities per token (`Transcript.mean_logprob`) of a decode the engine is sure of, and of
a guess."""


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Play the news.", COMPLETE),
        ("Play the news", UNSURE),
        ("Turn the heat down to it", INCOMPLETE),
        ("Set a timer for", INCOMPLETE),
        ("Play some music in the...", INCOMPLETE),
    ],
)
def test_words_the_engine_is_sure_of_are_judged_by_the_text_rules(text: str, verdict: TurnVerdict) -> None:
    assert detector.verdict(text, "en", SURE) is verdict


@pytest.mark.parametrize("text", ["At milk hunt.", "Set the volume tube.", "Play the news", "Playmate"])
def test_words_the_engine_doubts_never_end_a_turn_fast(text: str) -> None:
    assert detector.verdict(text, "en", DOUBTFUL) is UNSURE


@pytest.mark.parametrize("text", ["Set a timer for.", "Turn on the", "(coughs)", "Play some music..."])
def test_doubt_does_not_soften_an_incomplete_text(text: str) -> None:
    assert detector.verdict(text, "en", DOUBTFUL) is INCOMPLETE


@pytest.mark.parametrize(("mean_logprob", "verdict"), [(-0.99, COMPLETE), (-1.0, COMPLETE), (-1.01, UNSURE)])
def test_doubt_starts_below_whispers_own_failure_bar(mean_logprob: float, verdict: TurnVerdict) -> None:
    assert detector.verdict("Play the news.", "en", mean_logprob) is verdict


@pytest.mark.parametrize("text", ["and do the best time.", "And lock the back door.", "but the lights."])
def test_a_text_that_begins_with_a_conjunction_never_ends_a_turn_fast(text: str) -> None:
    assert detector.verdict(text, "en", SURE) is UNSURE


def test_a_conjunction_inside_a_command_does_not_matter() -> None:
    assert detector.verdict("Add milk and eggs to the shopping list.", "en", SURE) is COMPLETE


@pytest.mark.parametrize("language", ["en", "EN", "en-US", "en_GB"])
def test_english_rules_apply_to_every_english_tag(language: str) -> None:
    assert detector.verdict("Set a timer for.", language) is INCOMPLETE


@pytest.mark.parametrize(
    ("text", "language", "verdict"),
    [
        ("Mach das Licht an.", "de", COMPLETE),
        ("Stell einen Timer für", "de", UNSURE),
        ("Allume la lumière de la cuisine.", "fr", COMPLETE),
        ("Allume la lumière de la", "fr", UNSURE),
        ("¿Qué hora es?", "es", COMPLETE),
        ("Enciende la luz de la…", "es", INCOMPLETE),
        ("打开厨房的灯。", "zh", COMPLETE),
        ("打开厨房的\uff0c", "zh", INCOMPLETE),
        ("Set a timer for.", None, COMPLETE),
    ],
)
def test_other_and_unknown_languages_use_punctuation_only(
    text: str, language: str | None, verdict: TurnVerdict
) -> None:
    assert detector.verdict(text, language) is verdict


FELL, HELD = FALLEN_SEMITONES - 0.5, FALLEN_SEMITONES + 0.5


@pytest.mark.parametrize(
    ("text", "pitch", "verdict"),
    [
        ("Play the next chapter on.", HELD, UNSURE),
        ("Set a timer for 10 minutes.", HELD, UNSURE),
        ("Set a timer for 5 minutes", FELL, COMPLETE),
        ("Stop the music.", FELL, COMPLETE),
        ("Stop the music.", FALLEN_SEMITONES, COMPLETE),
        ("Stop the music.", 2.0, UNSURE),
        ("Stop the music.", None, COMPLETE),
        ("Play the news", None, UNSURE),
    ],
)
def test_where_the_voice_ended_decides_an_english_text_that_may_be_finished(
    text: str, pitch: float | None, verdict: TurnVerdict
) -> None:
    assert detector.verdict(text, "en", SURE, pitch) is verdict


ROSE = RISEN_SEMITONES + 0.5


@pytest.mark.parametrize(
    ("text", "mean_logprob", "pitch", "verdict"),
    [
        ("Is the garage door open?", SURE, ROSE, COMPLETE),
        ("Is the garage door open?", SURE, RISEN_SEMITONES, COMPLETE),
        ("Is the garage door open?", SURE, RISEN_SEMITONES - 0.5, UNSURE),  # the speaker may be thinking
        ("Is the garage door open?", SURE, HELD, UNSURE),
        ("Is the garage door open?", SURE, FELL, COMPLETE),  # a question asked falling, as before
        ("Is the garage door open?", SURE, None, COMPLETE),  # no pitch: punctuation, as before
        ("Is the garage door open.", SURE, ROSE, UNSURE),  # a rise is no question without one written
        ("Is the keeping on?", DOUBTFUL, ROSE, UNSURE),  # a question the engine doubts
        ("What is the temperature in the?", SURE, ROSE, INCOMPLETE),  # the word rules come first
        # only an auxiliary and its subject: a speaker paused after the subject, nothing asked yet
        ("Is the car?", SURE, ROSE, UNSURE),  # "is the car | charging?"
        ("Can you?", SURE, ROSE, UNSURE),  # "can you | turn on the fan?"
        ("Is there?", SURE, ROSE, UNSURE),  # "is the | back door open?" heard at its pause
        ("Is the heating?", SURE, ROSE, UNSURE),
        ("Isn't the door?", SURE, ROSE, UNSURE),  # "isn't the door | locked?"
        ("Can\u2019t you?", SURE, ROSE, UNSURE),  # Whisper's curly apostrophe
        *(
            (f"{auxiliary} you?", SURE, ROSE, UNSURE)
            for auxiliary in (
                "Had",
                "Shan't",
                "Needn't",
                "Mightn't",
                "Ain't",
                "Oughtn't",
                "Daren't",
                "Hadn't",
                "Mustn't",
            )
        ),
        ("Ain\u2019t it?", SURE, ROSE, UNSURE),
        ("Isn't the door locked?", SURE, ROSE, COMPLETE),
        ("Is the car locked?", SURE, ROSE, COMPLETE),
        ("Is it on?", SURE, ROSE, COMPLETE),
        ("Is that right?", SURE, ROSE, COMPLETE),
    ],
)
def test_a_question_asked_in_a_rising_voice_ends_the_turn(
    text: str, mean_logprob: float, pitch: float | None, verdict: TurnVerdict
) -> None:
    """A yes/no question ends high when asked aloud (questions_complete_11 "Can you turn on the
    fan?" heading +4.4): the falling line alone kept every such question waiting the long silence."""
    assert detector.verdict(text, "en", mean_logprob, pitch) is verdict


@pytest.mark.parametrize("text", ["Set a timer for.", "Turn on the", "(coughs)", "Play some music..."])
def test_a_falling_voice_does_not_end_an_incomplete_text(text: str) -> None:
    assert detector.verdict(text, "en", SURE, FELL) is INCOMPLETE


@pytest.mark.parametrize(("pitch", "verdict"), [(FELL, COMPLETE), (HELD, UNSURE), (None, UNSURE)])
def test_once_the_pitch_is_known_a_leading_conjunction_does_not_matter(
    pitch: float | None, verdict: TurnVerdict
) -> None:
    assert detector.verdict("and do the best time.", "en", SURE, pitch) is verdict


@pytest.mark.parametrize(
    ("pitch", "verdict"),
    [
        (DOUBTED_FALLEN_SEMITONES - 0.25, COMPLETE),
        (DOUBTED_FALLEN_SEMITONES, COMPLETE),
        (FELL, UNSURE),  # enough for words the engine is sure of
        (HELD, UNSURE),
        (None, UNSURE),
    ],
)
def test_words_the_engine_doubts_end_a_command_only_when_the_voice_falls_further(
    pitch: float | None, verdict: TurnVerdict
) -> None:
    """fresh11's cut: "did somebody leave the | garage light on" heard as "Get some ovulene" (-2.0 per
    token) at its pause, the voice heading to -2.90."""
    assert DOUBTED_FALLEN_SEMITONES < FELL
    assert detector.verdict("Get some ovulene", "en", DOUBTFUL, pitch) is verdict


@pytest.mark.parametrize(
    ("mean_logprob", "verdict"),
    [
        (-2.0, UNSURE),
        (DOUBTFUL_LOGPROB - 0.01, UNSURE),
        (DOUBTFUL_LOGPROB, COMPLETE),
        (SURE, COMPLETE),
        (None, COMPLETE),
    ],
)
def test_the_doubted_line_applies_below_the_doubtful_log_probability_only(
    mean_logprob: float | None, verdict: TurnVerdict
) -> None:
    """At -2.90, between the two lines: a text with no log-probability is judged as sure."""
    assert detector.verdict("Get some ovulene", "en", mean_logprob, -2.90) is verdict


@pytest.mark.parametrize(
    ("text", "language", "pitch", "verdict"),
    [
        ("Mach das Licht an.", "de", HELD, COMPLETE),
        ("Stell einen Timer für", "de", FELL, UNSURE),
        ("打开厨房的灯。", "zh", HELD, COMPLETE),
        ("Set a timer for 5 minutes", None, FELL, UNSURE),
    ],
)
def test_other_and_unknown_languages_ignore_the_pitch(
    text: str, language: str | None, pitch: float, verdict: TurnVerdict
) -> None:
    assert detector.verdict(text, language, SURE, pitch) is verdict


EVAL_SAMPLE = {
    "dev_paused_02.wav": "not complete",
    "dev_paused_06.wav": "not complete",
    "dev_paused_09.wav": "not complete",
    "heldout_paused_04.wav": "not complete",
    "dev_complete_03.wav": "complete",
    "dev_complete_12.wav": "complete",
    "heldout_complete_01.wav": "complete",
    "dev_hard_02.wav": "not complete",
}
"""A few evaluation files whose text at the pause (or end) tiny.en reads clearly and whose voice is
well clear of the pitch line. dev_complete_03 is written without punctuation ("Set a timer for 5
minutes"): the falling voice ends it. dev_hard_02's first half reads as finished ("Set a timer for
10 minutes."), but the voice held its pitch."""


@pytest.mark.timeout(120)
async def test_real_whisper_text_at_a_pause_is_judged_right() -> None:
    engine = WhisperEngine()
    await engine.start()
    try:
        results = await judge(engine, RuleTurnDetector(), list(EVAL_SAMPLE), pad_s=0.2)
    finally:
        await engine.close()
    for result in results:
        expected = EVAL_SAMPLE[result.name]
        if expected == "complete":
            assert result.verdict is COMPLETE, (result.name, result.text)
        else:
            assert result.verdict is not COMPLETE, (result.name, result.text)


DECODED_SPLITS = (
    "dev",
    "heldout",
    "fresh",
    *(f"fresh{n}" for n in range(2, 21)),
    "questions",
    "questions2",
    "human",
)
"""The evaluation set's splits the word rules and the pitch lines were chosen on or measured with:
dev to fresh20, the two of questions asked with their intonation, and the recordings of people
(measured once the rules were set, never tuned on), every one decoded so far (a split added for a
later clean measure stays out of every test until that measure has been run)."""


@pytest.mark.timeout(600)
async def test_no_paused_command_of_the_decoded_splits_is_judged_complete_at_its_pause() -> None:
    """With tiny.en's text and the voice's heading 0.15 s into the pause, none of these 381 commands
    may end the turn: a change to the rules, the line or the pitch measure that would cut one at
    that pad fails here (the heading at -2.5 without the preposition-"it" rule cut fresh5_paused_10).
    The cut that set the doubted line was the live daemon's (at 0.15 s tiny.en heard that pause
    otherwise): the unit tests above hold it."""
    names = [n for n, e in MANIFEST.items() if e["split"] in DECODED_SPLITS and e["category"] == "paused"]
    engine = WhisperEngine()
    await engine.start()
    try:
        results = await judge(engine, RuleTurnDetector(), names, pad_s=0.15)
    finally:
        await engine.close()
    assert len(results) == 381
    assert [(r.name, r.text) for r in results if r.verdict is COMPLETE] == []


@pytest.mark.parametrize(
    ("name", "text", "pitch", "line", "complete"),
    [
        # questions2's replay: a question asked rising stays complete with the falling line moved up...
        ("questions2_complete_05.wav", "How much time is left on the timer?", 2.87, -2.0, True),
        # ...and a paused question that rose less is not cut with the falling line moved down
        ("questions2_paused_10.wav", "When is my next?", 1.48, -4.0, False),
        ("dev_complete_01.wav", "Turn the kitchen lights off.", -2.5, -2.0, True),  # the falling line moves
        ("dev_complete_01.wav", "Turn the kitchen lights off.", -2.5, -2.75, False),
    ],
)
def test_replay_turns_moves_only_the_falling_line(
    name: str, text: str, pitch: float, line: float, complete: bool
) -> None:
    """`tests.replay_turns --line` shifts the pitch to judge another falling line; the rising line
    must not move with it (it did: -2.0 lost a question asked at +2.87, -4.0 cut one paused at +1.48)."""
    from tests.replay_turns import Decision

    decision = Decision(name, 0.0, text, SURE, pitch, detector.verdict(text, "en", SURE, pitch))
    assert decision.judged_complete(line) is complete
