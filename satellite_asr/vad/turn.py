"""Turn detection: does what was heard so far read, and sound, like a finished command?

At a pause the daemon already has a speculative final. Its words say whether to end the utterance
after a short silence (the command is complete) or to wait the long one (the speaker is thinking of
a name or a number). `TurnDetector` is the small contract the endpointing uses, so a learned model
can replace `RuleTurnDetector` without touching sessions or protocols.

The rules read the engine's own text (Whisper's punctuation and casing), in this order:
1. No words at all (empty, a cough written as "(coughs)" or "[BLANK_AUDIO]", bare punctuation):
   incomplete. Noise never ends a command.
2. A trailing ellipsis, dash or comma: incomplete. Whisper writes these where speech trails off.
3. English only: a last word that cannot end a command (an article, a possessive, a preposition,
   a conjunction, a verb that needs its object, "turn"/"switch" without their object...), or a
   preposition followed by "it" (how Whisper writes a preposition cut off by a pause: "Turn the
   heat down to it.", "Give me a timer for it."): incomplete, whatever the punctuation. Whisper
   often closes a cut half with a period ("Set a timer for."), so this rule comes before
   punctuation.
4. English only, when the voice's pitch was measured (`vad.prosody.final_pitch`): a voice that
   was heading to `FALLEN_SEMITONES` or lower against its lower-quartile pitch as it stopped is
   complete, one that ended level is unsure, whatever the punctuation. A statement ends by falling
   to the bottom of the speaker's range; a speaker who stops to think holds the pitch. The text
   cannot tell a misheard half that reads as finished ("Play the next chapter on." for "play the
   next chapter of | ...") from a command; the voice can. When the engine doubts its words
   (`mean_logprob` below `DOUBTFUL_LOGPROB`) they say nothing of the turn, so the voice must fall
   further, to `DOUBTED_FALLEN_SEMITONES`. Once the pitch is known, doubt moves the line instead
   of deciding (rule 5), and rule 6 is not needed: it kept complete commands waiting the long
   silence and no paused command of the evaluation set needed it. A question is the other way a
   turn ends: a text the engine is sure of that it writes as a question ("Is the garage door
   open?") in a voice that rose `RISEN_SEMITONES` or more as it stopped is complete. Asked
   aloud, a yes/no question ends high, so the falling line alone kept every such question waiting
   the long silence; a speaker who stops to think holds the pitch level. Not a question that is
   only its auxiliary and its subject ("Can you?", "Is the car?"): a speaker who pauses after the
   subject has asked nothing yet, and may rise there as at a question's end.
5. The pitch unknown, or not English: the engine doubts its own words (`mean_logprob` below
   `DOUBTFUL_LOGPROB`): unsure. Half a command misheard reads like anything, a finished sentence
   included ("At milk hunt." for "add milk to ..."); such a text says nothing about the turn.
6. English only: a first word no command begins with (a conjunction): unsure. The text goes on
   something else, or its start was misheard ("add" and "unlock" are heard as "and"), and a text
   misheard at its start is no more trustworthy at its end ("and do the best time." for "add
   toothpaste and | ...").
7. Sentence-final punctuation (. ! ? and their full-width forms): complete.
8. Otherwise: unsure (the caller decides, usually the long wait). Confident words without
   punctuation are unsure too (in English, reached only when the pitch is unknown): tiny.en hears
   a pause after "by" as a word ("Play something, bye"; "to" as "to it", rule 3), so
   taking them as complete cut 4 of 16 paused commands of the evaluation set's `fresh` split.

Other languages, and an unknown language (None), get rules 1, 2, 5, 7 and 8 only: English word
lists would misread them (German "an" in "Mach das Licht an" ends a command), and the pitch rule
was measured on English only (in a tone language pitch carries words, not the turn). Pass the
transcript's language: Whisper always reports one.
"""

from __future__ import annotations

import enum
import re
from typing import Protocol


class TurnVerdict(enum.Enum):
    COMPLETE = "complete"
    """What was heard reads (and sounds) like a finished command: end after the short silence."""
    INCOMPLETE = "incomplete"
    """More must follow (or nothing was said): wait the long silence."""
    UNSURE = "unsure"
    """Neither the text nor the voice can tell; the caller picks its default."""


class TurnDetector(Protocol):
    """Text heard so far, its language, how sure the engine was of it (`Transcript.mean_logprob`)
    and where the voice's pitch was heading (`vad.prosody.final_pitch`), the last two None if unknown,
    in; a verdict on the turn out. Pure: no state, no I/O."""

    def verdict(
        self, text: str, language: str | None, mean_logprob: float | None = None, final_pitch: float | None = None
    ) -> TurnVerdict: ...


DOUBTFUL_LOGPROB = -1.0
"""Below this log-probability per token the engine's words are a guess. -1.0 is Whisper's own
bar for a failed decode (its `logprob_threshold`). On the evaluation set's `dev` half, the two cut
halves tiny.en misheard as finished sentences ("At Milken.", "Santa of Verma's tattoo.") scored
-1.2 to -1.7, the complete commands it heard right -0.08 to -0.9."""

FALLEN_SEMITONES = -2.75
"""A voice heading this far under its lower-quartile pitch (or further) as it stopped ended a
statement. Chosen on the ten splits of the evaluation set that had been decoded (dev to fresh8),
on the turn decisions of a daemon replaying them (`tests.replay_turns`) and on tiny.en's text with
the audio cut 0.1-0.2 s after the pause: no paused command whose text passes the word rules was
heading lower than -2.24 at its pause; 118 of the 160 complete commands were at -2.75 or lower at
their end (119 at -2.5), so -2.75 leaves half a semitone of margin at the cost of one."""

DOUBTED_FALLEN_SEMITONES = -3.5
"""The line for a text the engine doubts. Chosen on the paused command the daemon's rule cut on
`fresh11` ("did somebody leave the | garage light on", heard as "Get some ovulene", -2.0 per token
and heading -2.90 in the daemon's replay) and on the recorded decisions of dev to fresh8 (a one-off
analysis, docs/benchmarks.md): there it keeps 3 of the 115 complete commands judged complete
waiting the long silence, and no doubted paused decision was heading lower than -1.98. A text with
no log-probability (an engine that reports none, or Whisper's loop cut to its first pass) is
judged as sure."""

RISEN_SEMITONES = 2.5
"""A voice heading this far above its lower-quartile pitch (or further) as it stopped asked a question,
when the engine also wrote one. Chosen on the evaluation set's `questions` split (questions spoken
with their question intonation): of its paused questions whose text no word rule stops, none rose
more than 1.81 ("What is the humidity in that?" for "... in the | bathroom?"), and 10 of its 16
complete questions rose 3.16 to 6.90 with a question mark; 2.5 leaves more than half a semitone on
the paused side."""

TRAILING_OFF = ("\u2026", "...", "-", "\u2013", "\u2014", ",", "\uff0c", "\u3001", ";", ":")
"""Endings with which a transcript says the speaker was not done: ellipsis, dashes, commas (also
full-width and ideographic), semicolon, colon."""
SENTENCE_END = (".", "!", "?", "\u3002", "\uff01", "\uff1f", "\u061f", "\u0964")
"""Full stop, exclamation and question marks, also ideographic, full-width, Arabic and Devanagari."""
CLOSERS = "\"'\u201d\u2019\u00bb)]} "
"""Quotes and brackets after the final punctuation, looked through."""
SOUND_TAG = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*")
"""Whisper's notes for non-speech ("[BLANK_AUDIO]", "(coughs)", "*sigh*")."""
APOSTROPHES = "'\u2019"
WORD = re.compile(rf"[^\W_]+(?:[{APOSTROPHES}][^\W_]+)*")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


ENGLISH_PREPOSITIONS = _words("to for of in at from with without into onto upon by about via per than between among")
"""Prepositions that need an object (not the particles a command may end on: see below)."""
ENGLISH_CANNOT_END = (
    # articles and determiners that need a noun
    _words("a an the some any every each another either neither no few several both")
    # possessives
    | _words("my your our their its his")
    # prepositions that need an object (not the particles a command may end on: see below)
    | ENGLISH_PREPOSITIONS
    | _words("against during towards toward until till")
    # conjunctions
    | _words("and or but nor if because unless while whereas although though whether")
    # question words, and contractions of "is"/"am"/"let us" that open a clause
    | _words("what which whose whom where when how")
    | _words("what's where's who's how's when's it's that's there's here's let's i'm i'd i'll")
    # verbs that need their object in a command
    | _words("set turn switch put make tell remind add show give send call change adjust")
    | _words("increase decrease lower raise")
    # words that only qualify what comes next
    | _words("very")
    # how Whisper writes a "to" or an "and" cut off by a pause ("Remind me too.", "the fan end.")
    | _words("too end")
)
"""Last words after which an English command cannot be over."""
ENGLISH_CANNOT_BEGIN = _words("and or but nor")
"""First words of a text that continues something rather than giving a command."""
ENGLISH_PARTICLES = _words("on off up down out back over away")
"""Words a phrasal command ends on ("turn it off") but not straight after its verb ("turn off")."""
ENGLISH_PHRASAL_VERBS = _words("turn switch shut put set bring pull look")
ENGLISH_AUXILIARIES = _words(
    "is are was were am can could will would shall should may might must do does did has have had "
    "isn't aren't wasn't weren't ain't can't couldn't won't wouldn't shan't shouldn't mightn't mustn't needn't "
    "oughtn't daren't don't doesn't didn't hasn't haven't hadn't"
)
"""Words a yes/no question opens with, negative ones too ("Isn't the door?")."""
ENGLISH_SUBJECT_PRONOUNS = _words("you it there they he she we i this that these those")
ENGLISH_SUBJECT_DETERMINERS = _words("the a an my your our their his her")
"""A determiner and one word after an auxiliary are a subject ("Is the car?"); "this" and "that"
are left out, as they stand alone ("Is that right?")."""


def _is_english(language: str | None) -> bool:
    return language is not None and language.lower().replace("_", "-").split("-")[0] == "en"


class RuleTurnDetector:
    """Punctuation for every language, plus English word and pitch rules (see the module docstring)."""

    def verdict(
        self, text: str, language: str | None, mean_logprob: float | None = None, final_pitch: float | None = None
    ) -> TurnVerdict:
        spoken = SOUND_TAG.sub(" ", text).strip()
        words = [word.lower().replace("\u2019", "'") for word in WORD.findall(spoken)]
        if not words:
            return TurnVerdict.INCOMPLETE
        ending = spoken.rstrip(CLOSERS)
        if ending.endswith(TRAILING_OFF):
            return TurnVerdict.INCOMPLETE
        if _is_english(language) and _english_cannot_end(words):
            return TurnVerdict.INCOMPLETE
        doubted = mean_logprob is not None and mean_logprob < DOUBTFUL_LOGPROB
        if _is_english(language) and final_pitch is not None:
            if not doubted and final_pitch >= RISEN_SEMITONES and ending.endswith("?") and not _only_a_subject(words):
                return TurnVerdict.COMPLETE
            line = DOUBTED_FALLEN_SEMITONES if doubted else FALLEN_SEMITONES
            return TurnVerdict.COMPLETE if final_pitch <= line else TurnVerdict.UNSURE
        if doubted:
            return TurnVerdict.UNSURE
        if _is_english(language) and words[0] in ENGLISH_CANNOT_BEGIN:
            return TurnVerdict.UNSURE
        if ending.endswith(SENTENCE_END):
            return TurnVerdict.COMPLETE
        return TurnVerdict.UNSURE


def _only_a_subject(words: list[str]) -> bool:
    """A question that is only its auxiliary and its subject ("Can you?", "Is there?", "Is the car?"
    for "is the car | charging?"): nothing asked yet, so its rising voice does not end the turn. A
    speaker who pauses after the subject may rise there as at a question's end (the first half
    asked on its own, in espeak-ng's and Piper's voices, rose +4 to +7 semitones), and even a level
    pause read "Is the car?" at +2.18."""
    if len(words) == 2:
        return words[0] in ENGLISH_AUXILIARIES and words[1] in ENGLISH_SUBJECT_PRONOUNS
    return len(words) == 3 and words[0] in ENGLISH_AUXILIARIES and words[1] in ENGLISH_SUBJECT_DETERMINERS


def _english_cannot_end(words: list[str]) -> bool:
    last = words[-1]
    if last in ENGLISH_CANNOT_END:
        return True
    if last == "it" and len(words) >= 2 and words[-2] in ENGLISH_PREPOSITIONS:
        return True  # how Whisper writes a preposition cut off by a pause: "Turn the heat down to it."
    return last in ENGLISH_PARTICLES and len(words) >= 2 and words[-2] in ENGLISH_PHRASAL_VERBS
