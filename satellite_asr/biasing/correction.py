"""Correcting a transcript towards names (the household's, or a client's own), by sound and spelling.

Why after decoding: a small Whisper hears "merry-go room" for "Marigold room" whatever its prompt
says, but the words it writes still sound like the name. So runs of the transcript's words are
compared with every name, by a rough English sound key and by spelling, and a run close enough
to a name is replaced by it. Only confident matches change anything: an ordinary command that
sounds like none of the names ("what time is it") comes out as the engine wrote it, and the
home's ordinary names ("Kitchen lights", "Garage door") compete with the unusual ones, so "the
bedroom heater" stays the Bedroom heater rather than becoming the Barnaby heater.

Why written here rather than taken from a library: the project has no phonetic matching library,
the usual ones (Soundex, Metaphone) key single words and drop what matters for names split into
other words ("Fenwig's green" for "Fenwick sprinkler"), and what is needed is a few dozen lines: a
sound key of a run of words and an edit distance.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from satellite_asr.biasing.context import MAX_NAME_CHARS
from satellite_asr.engines.base import TokenSpan
from satellite_asr.engines.bundled import bundled_tiny_en_path

WORD = re.compile(r"[A-Za-z0-9']+")
ALNUM_RUN = re.compile(r"[^\W_]+")
"""Letters and digits in a row, any script: the words `spells` compares."""
SOUNDS = (
    ("tch", "ch"),
    ("sch", "sk"),
    ("ph", "f"),
    ("ck", "k"),
    ("th", "0"),
    ("sh", "x"),
    ("ch", "x"),
    ("tio", "xo"),
    ("tia", "xa"),
    ("qu", "kw"),
    ("wh", "w"),
    ("x", "ks"),
    ("q", "k"),
    ("z", "s"),
    ("v", "f"),
    ("d", "t"),
    ("b", "p"),
)
"""Spellings of a sound rewritten to one letter, voiced and voiceless consonants merged ("Brandy
clamp" and "Brannock lamp" differ in a d): what a small model confuses, not what a linguist would."""
SILENT_START = ("kn", "gn", "pn", "wr", "ps", "pt")
NUMBER_WORDS = (
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"),
    "twenty",
)
"""Whisper writes a number it hears as digits ("Maybles 10" for Mabel's den): a number's key is the
key of its word."""
COMMAND_WORDS = frozenset(
    [
        "a",
        "add",
        "all",
        "an",
        "and",
        "any",
        "are",
        "at",
        "cancel",
        "close",
        "dim",
        "down",
        "every",
        "for",
        "how",
        "in",
        "is",
        "it",
        "lock",
        "many",
        "me",
        "much",
        "my",
        "of",
        "off",
        "on",
        "open",
        "or",
        "pause",
        "play",
        "remind",
        "set",
        "so",
        "some",
        "start",
        "stop",
        "switch",
        "that",
        "the",
        "then",
        "this",
        "to",
        "today",
        "tomorrow",
        "tonight",
        "turn",
        "turned",
        "unlock",
        "up",
        "volume",
        "what",
    ]
)
"""Words of the commands around a name (verbs, articles, prepositions, quantities, times, what a
command sets): a run starting or ending with one is not taken for a name unless the name has it too
("switch on" is not "Kitchen", "some music" not the Summerhouse, "tomorrow" not the Burrow)."""


@functools.cache
def common_words() -> frozenset[str]:
    """Words frequent enough in English text that Whisper's byte-pair vocabulary (GPT-2's, in the
    bundled tiny.en's `vocabulary.txt`) holds each whole, lower case, as one token after a space:
    "dining", "porch", "music", not "pantry". Letters only: a possessive ("Mum's") or a number is not
    one. A model writes such a word when it hears it, so a name made of them ("Dining room") is
    seldom what it heard as other words (`NameCorrector`'s `common_bar`)."""
    vocabulary = Path(bundled_tiny_en_path(), "vocabulary.txt").read_text("utf-8")
    # "Ġ" is how a byte-pair vocabulary writes the space before a word
    words = (token.removeprefix("Ġ") for token in vocabulary.splitlines() if token.startswith("Ġ"))
    return frozenset(word for word in words if word.isalpha() and word.islower())


def sound_key(text: str) -> str:
    """A rough key of how English text sounds: consonants kept (merged by sound), every vowel run
    one `a`, silent letters dropped. "Marigold room" and "merry-go room" give close keys."""
    return "".join(_word_key(word) for word in WORD.findall(text.lower()))


@functools.lru_cache(maxsize=8192)
def _word_key(word: str) -> str:
    word = word.replace("'", "")
    if word.isdigit() and int(word) < len(NUMBER_WORDS):
        word = NUMBER_WORDS[int(word)]
    if word[:2] in SILENT_START:
        word = word[1:]
    word = re.sub(r"gh(?![aeiouy])", "", word)  # night, though
    word = re.sub(r"c(?=[eiy])", "s", word)
    word = re.sub(r"dg(?=[eiy])", "j", word)
    word = re.sub(r"g(?=[eiy])", "j", word)
    for spelling, sound in SOUNDS:
        word = word.replace(spelling, sound)
    word = word.replace("c", "k").replace("g", "k")
    word = re.sub(r"(?<=[^aeiouy])h|h(?![aeiouy])", "", word)
    word = re.sub(r"w(?![aeiouy])", "", word)
    word = re.sub(r"[aeiouy]+", "a", word)
    return re.sub(r"(.)\1+", r"\1", word)


NEAR_SOUNDS = ("mn", "lr", "pf", "f0", "s0", "t0", "sx", "jx", "kt", "wf", "tn", "pm")
"""Pairs of key letters a small model swaps for each other ("fissile" for "thistle"): half a mistake."""
_NEAR = {(pair[0], pair[1]) for pair in NEAR_SOUNDS} | {(pair[1], pair[0]) for pair in NEAR_SOUNDS}


_NEAR_TO: dict[str, frozenset[str]] = {
    sound: frozenset(b for a, b in _NEAR if a == sound) for sound in {a for a, _ in _NEAR}
}


def key_distance(a: str, b: str, limit: float = float("inf")) -> float:
    """Edit distance of two sound keys: a vowel (`a`) added or lost, or a near sound, costs half.

    Stops as soon as the distance must exceed `limit` (and returns more than it). The table is
    filled with plain comparisons, not `min()`: this loop is most of the cost of correcting a
    transcript the first time its words are seen.
    """
    add = [0.5 if y == "a" else 1.0 for y in b]
    previous = [0.0]
    for cost in add:
        previous.append(previous[-1] + cost)
    for x in a:
        lose = 0.5 if x == "a" else 1.0
        near = _NEAR_TO.get(x, frozenset())
        cell = previous[0] + lose
        current = [cell]
        lowest = cell
        for j, y in enumerate(b):
            cell += add[j]
            if previous[j + 1] + lose < cell:
                cell = previous[j + 1] + lose
            swap = previous[j] if x == y else previous[j] + (0.5 if y in near else 1.0)
            if swap < cell:
                cell = swap
            current.append(cell)
            if cell < lowest:
                lowest = cell
        if lowest > limit:
            return lowest
        previous = current
    return previous[-1]


def key_similarity(a: str, b: str, least: float = 0.0) -> float:
    """1 - distance over the longer key; a value under `least` may be returned early, as 0."""
    longest = max(len(a), len(b))
    if not longest:
        return 1.0
    distance = _key_distance_within(a, b, (1.0 - least) * longest)
    return max(0.0, 1.0 - distance / longest)


_DISTANCES: dict[tuple[str, str], tuple[float, float]] = {}
"""(key, key) -> (limit, distance) of the last computation; most of the cost of correcting text is
these distances, and the same runs and names meet again (the partials of an utterance, its final,
the engine's second look and the session's correction of the same text)."""
_DISTANCES_KEPT = 1 << 16


def _key_distance_within(a: str, b: str, limit: float) -> float:
    """`key_distance(a, b, limit)`, remembered: a distance found within a limit is exact, one over
    it answers any smaller limit."""
    known = _DISTANCES.get((a, b))
    if known is not None and (known[1] <= known[0] or limit <= known[0]):
        return known[1]
    distance = key_distance(a, b, limit)
    if len(_DISTANCES) >= _DISTANCES_KEPT:
        _DISTANCES.clear()
    _DISTANCES[a, b] = (limit, distance)
    return distance


def letters(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum())


def spells(text: str, name: str) -> bool:
    """Whether `text` has `name` as spelled, from the start of a word to the end of one (case,
    spaces and punctuation aside): the TV is in "turn on the TV", not in "stop the robot vacuum";
    Wiremu's lamp is in "Wire Mu's lamp"."""

    def words(phrase: str) -> list[str]:
        return ALNUM_RUN.findall(phrase.lower().replace("'", "").replace("\u2019", ""))

    wanted, heard = "".join(words(name)), words(text)
    if not wanted:
        return False
    starts, ends, offset = set(), set(), 0
    for word in heard:
        starts.add(offset)
        offset += len(word)
        ends.add(offset)
    joined = "".join(heard)
    found = joined.find(wanted)
    while found >= 0:
        if found in starts and found + len(wanted) in ends:
            return True
        found = joined.find(wanted, found + 1)
    return False


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions each cost one.

    Bit-parallel (Myers 1999, in Hyyro's form for the whole of both strings): one column of the
    table is a pair of bit vectors, so a character of `a` costs a few integer operations instead
    of a loop over `b`. Correcting a transcript compares its runs with every name that sounds
    alike, and this distance was most of that time in pure Python's table-filling form.
    """
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    mask = (1 << len(b)) - 1
    last = 1 << (len(b) - 1)
    where: dict[str, int] = {}
    for index, char in enumerate(b):
        where[char] = where.get(char, 0) | (1 << index)
    plus, minus, distance = mask, 0, len(b)  # vertical deltas of the first column: all +1
    for char in a:
        equal = where.get(char, 0)
        vertical = equal | minus
        horizontal = ((((equal & plus) + plus) & mask) ^ plus) | equal
        up = (minus | ~(horizontal | plus)) & mask
        down = plus & horizontal
        if up & last:
            distance += 1
        elif down & last:
            distance -= 1
        up = ((up << 1) | 1) & mask
        down = (down << 1) & mask
        plus = (down | ~(vertical | up)) & mask
        minus = up & vertical
    return distance


def similarity(a: str, b: str) -> float:
    """1 for the same string, 0 for nothing in common (edit distance over the longer length)."""
    if not a and not b:
        return 1.0
    return 1.0 - edit_distance(a, b) / max(len(a), len(b))


@dataclass(frozen=True)
class _Phrase:
    """Words with their sound key and letters, computed once."""

    words: tuple[str, ...]
    key: str
    letters: str

    @classmethod
    def of(cls, words: Sequence[str]) -> _Phrase:
        lowered = tuple(word.lower() for word in words)
        return cls(lowered, "".join(_word_key(w) for w in lowered), "".join(letters(w) for w in lowered))


@dataclass(frozen=True)
class _Name:
    text: str
    phrase: _Phrase
    rank: int
    """Place in the corrector's list: of two equal matches, the better-ranked name wins."""
    common: bool
    """Every word of it is one of `common_words`: the home's plain names ("Dining room", "Porch
    light"), and a few unusual ones ("The Lair")."""


@dataclass(frozen=True)
class _Match:
    score: float
    first: int
    last: int
    """Word indexes, inclusive."""
    name: _Name
    anchored: bool = False
    """The run ends in the name's ordinary last words as spelled (as every match `_anchored` finds
    does): preferred to a match that does not, since those words say what kind of thing was named."""


@dataclass(frozen=True)
class _Head:
    """A name of several words, read as its first word and the ordinary words after it ("Okafor" and
    "gate", "Ptolemy" and "aquarium light")."""

    name: _Name
    word: _Phrase
    """The first word."""


@dataclass(frozen=True)
class Replacement:
    """Characters `start:end` of a transcript to be written as `name`."""

    start: int
    end: int
    name: str
    score: float


def apply(text: str, replacements: Sequence[Replacement]) -> str:
    """`text` with non-overlapping `replacements` made."""
    for replacement in sorted(replacements, key=lambda r: -r.start):
        text = text[: replacement.start] + replacement.name + text[replacement.end :]
    return text


SOLE_KIND_WORDS = 3
"""At most this many words before a kind of thing only one name has are read as that name's
unusual words (`NameCorrector._sole_kind`)."""
SURE_LOGPROB = -0.3
"""A word the engine wrote with a mean log-probability per token above this, it heard clearly
(`NameCorrector.sure_logprob`, and where the Whisper engine looks for names it nearly wrote).
Chosen on tiny.en's decodes; Qwen3-ASR's are read against it too, unmeasured (docs/benchmarks.md)."""


class NameCorrector:
    """Replaces runs of words that sound and look like one of `names` by that name.

    A run's score is `key_weight` times the similarity of the sound keys plus the rest times the
    similarity of the letters (0..1). A run is replaced when it scores at least `threshold`
    (`threshold + one_word` for a single word: few letters match by chance more easily), and what
    differs between run and name, their shared end words left out, at least `threshold - margin`
    (`threshold` when all they share is a leading command word: "the dentist" and The Tardis).
    Names with a sound key shorter than `min_key` ("TV", "Lounge") are only taken as spelled, and
    names of common words only (`_Name.common`: "Dining room", "Porch light") need `common_bar`
    (a single word: `common_bar + one_word`) instead of any lower bar, the threshold, the anchor's
    or the second look's: a model writes the common words it hears, so other common words near them
    are more often another phrase ("the music room" is not the Media room, "how hot will it be" not
    the Hallway light) or an unusual name's remains ("Ken's eyes light" for Keziah's nightlight)
    than that name.

    Where the engine says how sure it was of its words (`TokenSpan`), a run it wrote with a mean
    log-probability per token above `sure_logprob` needs `sure_bar`, whatever the kind of match: a
    model that clearly heard "minute timer", "shopping list" or "weather this weekend" wrote what
    was said, where a mangled name comes out as words it was unsure of ("in-dual speaker").

    A name of several words is also found by its last words (`_anchored`): where the transcript has
    them ("gate"), the words before them need only score `anchor` (one word: `anchor + one_word`)
    against the name's first word, in any sound ("knock after gate" is the Okafor gate). The mirror
    (`_headed`): where it has a name's unusual first word as spelled, the words after it that the
    engine wrote unsurely need only score `anchor` against the name's others, as must the words
    they do not share ("Kenji's then" is Kenji's den). And a text with no name that names a kind
    of thing only one name has takes the unsure words before the kind as that name (`_sole_kind`:
    "this is current kettle" is Agnieszka's kettle when hers is the only kettle). The defaults were
    tuned on the dev part and the first five held-out parts of tests/fixtures/names, `common_bar`
    on the first twelve parts, `sure_logprob` and `sure_bar` on the first fourteen, the last two
    rules on the first twenty-two (docs/benchmarks.md).
    """

    def __init__(
        self,
        names: Sequence[str],
        *,
        threshold: float = 0.65,
        key_weight: float = 0.8,
        one_word: float = 0.1,
        margin: float = 0.1,
        min_key: int = 5,
        anchor: float = 0.5,
        common_bar: float = 0.75,
        sure_logprob: float = SURE_LOGPROB,
        sure_bar: float = 0.8,
    ) -> None:
        self.threshold = threshold
        self.common_bar = common_bar
        self.sure_logprob = sure_logprob
        self.sure_bar = sure_bar
        self.anchor = anchor
        self.key_weight = key_weight
        self.one_word = one_word
        self.margin = margin
        self.min_key = min_key
        spaced = (_single_spaced(name) for name in names)
        unique = dict.fromkeys(name for name in spaced if WORD.search(name) and len(name) <= MAX_NAME_CHARS)
        common = common_words()
        self._names: list[_Name] = []
        for rank, text in enumerate(unique):
            phrase = _Phrase.of(WORD.findall(_straight(text)))
            self._names.append(_Name(text, phrase, rank, all(word in common for word in phrase.words)))
        self._most_words = max((len(name.phrase.words) for name in self._names), default=0)
        self._by_letters: dict[str, list[_Name]] = {}
        self._by_onset: dict[str, list[_Name]] = {}
        self._by_tail: dict[str, list[_Head]] = {}
        """Names of several words by the letters of their words after the first (`_kind_letters`)."""
        self._tails: dict[_Name, tuple[int, str]] = {}
        """The same the other way: a name's number of words after the first, and their letters."""
        self._by_first_word: dict[str, list[tuple[_Name, _Phrase]]] = {}
        """Names of several words that start with an unusual word, by its letters, each with its
        other words."""
        for name in self._names:
            words = name.phrase.words
            if len(words) > 1 and words[0] not in COMMAND_WORDS:
                tail = _kind_letters(words[1:])
                self._by_tail.setdefault(tail, []).append(_Head(name, _Phrase.of(words[:1])))
                self._tails[name] = (len(words) - 1, tail)
            if len(words) > 1 and _unusual(words[0], common):
                self._by_first_word.setdefault(letters(words[0]), []).append((name, _Phrase.of(words[1:])))
            self._by_letters.setdefault(name.phrase.letters, []).append(name)
            if len(name.phrase.key) >= self.min_key:
                onset = name.phrase.key[0]
                for sound in {onset, *_NEAR_TO.get(onset, ())}:
                    self._by_onset.setdefault(sound, []).append(name)
        self._longest_tail = self._most_words - 1
        self._sole_kinds = _kinds_with_one_name(self._names, common)
        self._longest_kind = max((len(name.phrase.words) - 1 for name in self._sole_kinds.values()), default=0)

    def correct(self, text: str, spans: Sequence[TokenSpan] = (), nearly_written: Collection[str] = ()) -> str:
        return apply(text, self.replacements(text, spans, nearly_written))

    def replacements(
        self, text: str, spans: Sequence[TokenSpan] = (), nearly_written: Collection[str] = ()
    ) -> list[Replacement]:
        """The confident matches in `text` (whose tokens are `spans`, if the engine says) that change
        it, none overlapping: a longer, unusual name around a name as spelled first (`_holders`),
        then names as spelled, then the names the engine nearly wrote (`nearly_written`,
        `Transcript.nearly_written`: the decoder's own lean outweighs a better score elsewhere, "the
        pass away lamp" is the Hathaway lamp rather than the Bedside lamp), then matches that end in
        their name's ordinary words as heard (what kind of thing was named outweighs a better score
        elsewhere, but a longer run of the same kind that scores better takes their place and rank:
        `_outscoring`), each kind best first. With no match at all, the only name of a kind the text
        names (`_sole_kind`)."""
        words = list(WORD.finditer(_straight(text)))
        logprob = _mean_logprob(words, spans)
        matches = self._matches([word.group() for word in words], logprob=logprob)
        holders = self._holders(matches)
        outscoring = [self._outscoring(match, matches) for match in matches]
        # a run that outscores a match by the last words says the kind as well, and ranks as one
        kind_told = {better for found in outscoring for better in found}
        matches = [match for match, found in zip(matches, outscoring, strict=True) if not found]
        leaned_to = {_single_spaced(name) for name in nearly_written}
        matches.sort(
            key=lambda m: (
                m not in holders,
                m.score < 1.0,
                m.name.text not in leaned_to,
                not (m.anchored or m in kind_told),
                -m.score,
                m.first - m.last,
                m.name.rank,
                m.first,
            )
        )
        taken: set[int] = set()
        chosen = []
        for match in matches:
            span = set(range(match.first, match.last + 1))
            if not span & taken:
                taken |= span
                start, end = words[match.first].start(), words[match.last].end()
                if letters(text[start:end]) != match.name.phrase.letters:
                    chosen.append(Replacement(start, end, match.name.text, match.score))
        if not matches:
            sole = self._sole_kind(words, logprob)
            return [sole] if sole else []
        return chosen

    def near_matches(
        self, text: str, limit: int, threshold: float, spans: Sequence[TokenSpan] = ()
    ) -> list[Replacement] | None:
        """At most `limit` names, best first, that some run of `text` loosely resembles (scoring at
        least `threshold`, below the correction's own; a name of common words, `common_bar`; words
        the engine was sure of, per `spans`, `sure_bar`), each with the run it best resembles: worth
        a second look at the audio (the Whisper engine's).

        None when the text already has one of the names as spelled (even inside a longer name's
        run, unlike `replacements`: no name more came of looking again there), or a run close
        enough to be corrected: the text has found its name, and a second look would only risk
        another. Empty when no run resembles a name.
        """
        found = list(WORD.finditer(_straight(text)))
        words = [word.group() for word in found]
        matches = self._matches(words, threshold, logprob=_mean_logprob(found, spans))
        if any(self._confident(match, words) for match in matches):
            return None
        best: dict[_Name, _Match] = {}
        for match in matches:
            known = best.get(match.name)
            if known is None or (match.score, match.first - match.last) > (known.score, known.first - known.last):
                best[match.name] = match
        nearest = sorted(best.values(), key=lambda match: (-match.score, match.name.rank))[:limit]
        return [
            Replacement(found[match.first].start(), found[match.last].end(), match.name.text, match.score)
            for match in nearest
        ]

    def _confident(self, match: _Match, words: list[str]) -> bool:
        """Whether a match found with a lower threshold would pass the corrector's own."""
        if match.score == 1.0:
            return True
        run = _Phrase.of(words[match.first : match.last + 1])
        needed = self._needed(match.name, self.threshold, one_word=len(run.words) == 1)
        return match.score >= needed and self._differences_pass(run, match.name.phrase, self.threshold)

    def _holders(self, matches: Sequence[_Match]) -> list[_Match]:
        """The loose matches, scoring the threshold, of a longer, unusual name that covers the names
        as spelled it overlaps and has all their words: "Lynn Wood Garden Room" holds the Garden,
        but the words around it say it is the Linwood garden room. A longer name of common words
        does not count ("dining room light" is the Dining room's light as much as the Dining room
        lights), nor one overlapping a name as spelled that it does not hold ("bedroom heater" is the
        Bedroom heater, not the Bedroom humidifier that holds the Bedroom)."""
        spelled = [match for match in matches if match.score == 1.0]

        def holds(other: _Match, match: _Match) -> bool:
            return (
                Counter(match.name.phrase.words) < Counter(other.name.phrase.words)
                and other.first <= match.first
                and match.last <= other.last
                and (other.first, other.last) != (match.first, match.last)
            )

        holders = []
        for other in matches:
            if not self.threshold <= other.score < 1.0 or other.name.common:
                continue
            overlapped = [match for match in spelled if match.first <= other.last and other.first <= match.last]
            if overlapped and all(holds(other, match) for match in overlapped):
                holders.append(other)
        return holders

    @staticmethod
    def _outscoring(match: _Match, matches: Sequence[_Match]) -> list[_Match]:
        """If `match` was found by its name's ordinary last words (`_Match.anchored`), the longer runs
        around it that end in the same words and score better as another name of the same kind
        (ending in those words): "Dlamini pati heater" is the Dlamini patio heater, not the Dlamini
        Mbatha heater. What the anchor says, the kind of thing, they say too."""
        if not match.anchored:
            return []
        kind = match.name.phrase.words[1:]
        return [
            other
            for other in matches
            if other.name != match.name
            and other.score > match.score
            and other.first < match.first
            and other.last == match.last
            and other.name.phrase.words[-len(kind) :] == kind
        ]

    def _differences_pass(self, run: _Phrase, name: _Phrase, threshold: float) -> bool:
        """Whether what differs between run and name, their shared end words left out, scores
        `threshold - margin`. When all they share is a leading command word ("the dentist", The
        Tardis), that word says nothing of the name: the rest needs `threshold` itself ("the doors"
        is not The Tardis, "the Kirby" still the Cubby; tuned on the six seen parts)."""
        rest, rest_of_name = _unshared(run, name)
        needed = threshold - self.margin
        if run.words[0] in COMMAND_WORDS and run.words[0] == name.words[0] and len(rest.words) == len(run.words) - 1:
            needed = threshold
        return self._score(rest, rest_of_name, 0.0) >= needed

    def _sole_kind(
        self, words: Sequence[re.Match[str]], logprob: Callable[[int, int], float | None]
    ) -> Replacement | None:
        """The one name whose kind the text names, with the words before the kind as its unusual
        words: the longest kind as spelled (`_sole_kinds`), after one to `SOLE_KIND_WORDS` words back
        to a command word or a word written surely, never the text's first word (its verb: "check
        baby monitor"), that the engine says it wrote unsurely (`logprob`; "Boil and this is current
        kettle" for Agnieszka's kettle). A command word before the kind ("turn on the kettle") or
        words written surely ("the garden kettle") are left as heard, as is all text when the engine
        does not say how sure it was."""
        spelled = [letters(word.group()) for word in words]
        for size in range(self._longest_kind, 0, -1):
            for start in range(len(words) - size + 1):
                end = start + size
                name = self._sole_kinds.get(_kind_letters(spelled[start:end]))
                if name is None:
                    continue
                first = start
                while (
                    first > 1
                    and start - first < SOLE_KIND_WORDS
                    and not _command_word(words[first - 1].group())
                    and not _sure(logprob(first - 1, first - 1), self.sure_logprob)
                ):
                    first -= 1
                if first < start and _unsure(logprob(first, start - 1), self.sure_logprob):
                    return Replacement(words[first].start(), words[end - 1].end(), name.text, 0.0)
        return None

    def _matches(
        self, words: list[str], threshold: float | None = None, *, logprob: Callable[[int, int], float | None]
    ) -> list[_Match]:
        """Every (run, name) pair that scores at least `threshold` (the corrector's by default), and
        `sure_bar` where the engine was sure of the run (its `logprob` above `sure_logprob`).

        A run is compared with the names of one to two words fewer or more only, and loosely only
        with those it could start like (see `_score`), looked up by its first sound.
        """
        threshold = self.threshold if threshold is None else threshold
        spelled = [letters(word) for word in words]
        found = []
        for first in range(len(words)):
            for last in range(first, min(len(words), first + self._most_words + 2)):
                run = _Phrase.of(words[first : last + 1])
                size = last - first + 1
                # a run starting or ending with a command word is no name, unless the name has it
                edges = [word for word in (run.words[0], run.words[-1]) if word in COMMAND_WORDS]
                for name in self._by_letters.get(run.letters, ()):
                    if len(name.phrase.words) - 1 <= size <= len(name.phrase.words) + 2:
                        found.append(_Match(1.0, first, last, name))
                for name in self._by_onset.get(run.key[:1], ()):
                    if (
                        len(name.phrase.words) - 1 <= size <= len(name.phrase.words) + 2
                        and run.letters != name.phrase.letters
                        and all(word in name.phrase.words for word in edges)
                    ):
                        needed = self._needed(name, threshold, one_word=size == 1)
                        score = self._score(run, name.phrase, needed)
                        if score >= needed and self._differences_pass(run, name.phrase, threshold):
                            found.append(
                                _Match(score, first, last, name, self._ends_in_tail(spelled, first, last, name))
                            )
        found.extend(self._anchored(words, spelled, min(threshold, self.anchor)))
        found.extend(self._headed(words, spelled, min(threshold, self.anchor), logprob))
        return [
            match
            for match in found
            if match.score >= self.sure_bar or not _sure(logprob(match.first, match.last), self.sure_logprob)
        ]

    def _needed(self, name: _Name, threshold: float, *, one_word: bool) -> float:
        """The score a loose match of a run with `name` needs: `threshold`, never less than
        `common_bar` for a name of common words, and `one_word` more for a run of one word."""
        extra = self.one_word if one_word else 0.0
        return (max(threshold, self.common_bar) if name.common else threshold) + extra

    def _ends_in_tail(self, spelled: list[str], first: int, last: int, name: _Name) -> bool:
        """Whether words `first..last` end in the name's words after its first, as spelled, with a
        word before them ("merry go room" for the Marigold room)."""
        tail = self._tails.get(name)
        return (
            tail is not None
            and first < last - tail[0] + 1
            and _kind_letters(spelled[last - tail[0] + 1 : last + 1]) == tail[1]
        )

    def _anchored(self, words: list[str], spelled: list[str], threshold: float) -> list[_Match]:
        """Names found by their last words: where the transcript has a name's words after the first
        as spelled ("gate", "aquarium light"; "lights" for "light" too), the one to three words before
        them that score `threshold` (`common_bar` for a name of common words) against the name's
        first word, in any sound. `spelled` is each word's letters (`_matches` has them already).

        A small model keeps the ordinary words of a name and mangles its unusual one, often from its
        first sound ("knock after gate" for the Okafor gate), where the onset rule of `_score` would
        lose it. What the ordinary words add is what kind of thing was named, so only the names
        ending in them compete. Not taken: words before them that hold a command word ("lights in
        my room" is not the Living room) or the start of a longer name's ordinary words ("family
        wall light" is not the Hallway light), or that are a name as spelled, alone ("garden
        lights": an area and its lights) or with the ordinary words ("porch lights"); one word
        needs the single-word bar.
        """
        found = []
        for end in range(1, len(words)):
            for start in range(end, max(0, end - self._longest_tail), -1):
                tail = "".join(spelled[start : end + 1])
                tail_letters = _kind_letters(spelled[start : end + 1])
                heads = self._by_tail.get(tail_letters)
                if not heads:
                    continue
                for first in range(start - 1, max(-1, start - 4), -1):
                    longer = _kind_letters(spelled[first : end + 1])
                    if _command_word(words[first]) or longer in self._by_tail:
                        break  # a command word, or one of longer ordinary words: so will any longer slot
                    slot = _Phrase.of(words[first:start])
                    if slot.letters in self._by_letters or any(
                        slot.letters + spelling in self._by_letters for spelling in (tail, tail_letters)
                    ):
                        continue
                    for head in heads:
                        if slot.letters != head.word.letters:
                            needed = self._needed(head.name, threshold, one_word=first + 1 == start)
                            score = self._score(slot, head.word, needed, any_onset=True)
                            if score >= needed:
                                found.append(_Match(score, first, end, head.name, anchored=True))
        return found

    def _headed(
        self, words: list[str], spelled: list[str], threshold: float, logprob: Callable[[int, int], float | None]
    ) -> list[_Match]:
        """Names found by their unusual first word as spelled (`_by_first_word`): as many words as
        the name's others after it, or fewer, that the engine wrote unsurely (`logprob`, at most
        `sure_logprob`) need only score `threshold` against those (one word: `threshold +
        one_word`), command words and all, and so must the words they do not share, if any (each
        from the other's first sound or a near one): "Kenji's then" is Kenji's den, "Soraya's
        mirror" Soraya's mirror light; "Sigrun's towel is" is not Sigrun's towel warmer, nor
        "Kofi's pen" Kofi's den. The mirror of `_anchored`: there the ordinary words survive and
        say what kind of thing was named, here the rare word does and says which. Not where the
        name is spelled whole, nor where the engine does not say how sure it was; no more words,
        or "Tell Kenji's to open" would be Kenji's den."""
        found = []
        for start, word in enumerate(spelled):
            for name, rest in self._by_first_word.get(word, ()):
                size = len(rest.words)
                if "".join(spelled[start + 1 : start + 1 + size]) == rest.letters:
                    continue
                for last in range(start + 1, min(len(words), start + size + 1)):
                    slot = _Phrase.of(words[start + 1 : last + 1])
                    needed = self._needed(name, threshold, one_word=last == start + 1)
                    score = self._score(slot, rest, needed)
                    heard, unheard = _unshared(slot, rest)
                    if (
                        score >= needed
                        and (not heard.words or self._score(heard, unheard, 0.0) >= needed)
                        and _unsure(logprob(start + 1, last), self.sure_logprob)
                    ):
                        found.append(_Match(score, start, last, name))
        return found

    def _score(self, run: _Phrase, name: _Phrase, needed: float, *, any_onset: bool = False) -> float:
        """The run's score against the name; 0 as soon as it cannot reach `needed` (most runs).

        Unless `any_onset`, a run must start with the name's first sound or a near one: the onset
        of a word is what a model gets right most ("merry-go" for "Marigold", "fissile" for
        "thistle"), and the test costs nothing, where the edit distance costs most of the time.
        """
        if not run.key or not name.key:
            return 0.0
        if not any_onset and run.key[0] != name.key[0] and (run.key[0], name.key[0]) not in _NEAR:
            return 0.0
        longest_key = max(len(run.key), len(name.key), 1)
        longest = max(len(run.letters), len(name.letters), 1)
        best_key = 1 - 0.5 * abs(len(run.key) - len(name.key)) / longest_key
        best_letters = 1 - abs(len(run.letters) - len(name.letters)) / longest
        if self.key_weight * best_key + (1 - self.key_weight) * best_letters < needed:
            return 0.0
        key = key_similarity(run.key, name.key, (needed - (1 - self.key_weight) * best_letters) / self.key_weight)
        if self.key_weight * key + (1 - self.key_weight) * best_letters < needed:
            return 0.0
        return self.key_weight * key + (1 - self.key_weight) * similarity(run.letters, name.letters)


@functools.lru_cache(maxsize=16)
def corrector_for(names: tuple[str, ...]) -> NameCorrector:
    """The one matcher for a list of names, with the default thresholds. Building one keys every
    name, and the same list serves many: every session fed by the same Home Assistant, every
    utterance of a session, the session's correction and Whisper's second look alike."""
    return NameCorrector(names)


def _single_spaced(name: str) -> str:
    """`name` as the corrector keeps and writes it: one space between words, none at the ends."""
    return " ".join(name.split())


def _mean_logprob(words: Sequence[re.Match[str]], spans: Sequence[TokenSpan]) -> Callable[[int, int], float | None]:
    """The engine's mean log-probability per token of `words[first..last]`, over the `spans` that
    overlap them; None when it does not say."""
    tokens = [{i for i, span in enumerate(spans) if span.end > w.start() and span.start < w.end()} for w in words]

    def mean(first: int, last: int) -> float | None:
        run = set().union(*tokens[first : last + 1])
        return sum(spans[i].logprob for i in run) / len(run) if run else None

    return mean


def _kinds_with_one_name(names: Sequence[_Name], common: Collection[str]) -> dict[str, _Name]:
    """The kinds of thing only one name in the list ends in, by their letters (`_kind_letters`),
    each with that name: "kettle" or "salt lamp" when Agnieszka's kettle and Astrid's salt lamp are
    the home's only ones. A kind is all of a name's words after its first, which is an unusual word
    (not "The", not one of `common_words`): "oven" is not the Nyberg steam oven's. No kind that is
    itself a name or that ends another name (names and kinds of the same letters are the same), and
    none with a word of one letter or a number ("Tesla Model S", "Sonoff 4"). `common` is
    `common_words()`."""
    owners: dict[str, dict[str, tuple[_Name, int]]] = {}
    for name in names:
        words = name.phrase.words
        for start in range(len(words)):
            owners.setdefault(_kind_letters(words[start:]), {}).setdefault(name.phrase.letters, (name, start))
    sole = {}
    for named in owners.values():
        if len(named) > 1:
            continue
        [(name, start)] = named.values()
        kind = [letters(word) for word in name.phrase.words[start:]]
        if start == 1 and _unusual(name.phrase.words[0], common) and all(len(w) > 1 and not w.isdigit() for w in kind):
            sole[_kind_letters(kind)] = name
    return sole


def _kind_letters(words: Sequence[str]) -> str:
    """The letters of the words that say what kind of thing a name is, less a final s ("lamp posts":
    "lamppost"): how a name's words after its first are looked up in a text."""
    return "".join(letters(word) for word in words).removesuffix("s")


def _unusual(word: str, common: Collection[str]) -> bool:
    """Whether a name's `word` (lower case), less a possessive, is neither one of the `common`
    words nor a command word: "Agnieszka's", not "Kitchen" or "The"."""
    plain = letters(word.removesuffix("'s"))
    return plain not in common and plain not in COMMAND_WORDS


def _straight(text: str) -> str:
    """`text` with its curly apostrophes (U+2019) straight, as `WORD` reads them: "Agnieszka's" is
    one word however it is written. The same length, so that places in it are places in `text`."""
    return text.replace("\u2019", "'")


def _sure(mean: float | None, sure_logprob: float) -> bool:
    """Whether a mean log-probability per token (None: the engine does not say) is above `sure_logprob`."""
    return mean is not None and mean > sure_logprob


def _unsure(mean: float | None, sure_logprob: float) -> bool:
    """Whether the engine says (`mean` is not None) that it wrote the words unsurely: at most `sure_logprob`."""
    return mean is not None and mean <= sure_logprob


def _command_word(word: str) -> bool:
    """`word`, or its part before an apostrophe ("what's"), is one of `COMMAND_WORDS`."""
    return word.lower().split("'")[0] in COMMAND_WORDS


def _unshared(run: _Phrase, name: _Phrase) -> tuple[_Phrase, _Phrase]:
    """Both without the words they share at either end ("fissile suite", "Thistle suite": the
    suites), so that a shared ordinary word cannot carry a match on its own ("temperature" is not
    the Outside temperature: nothing is left of it)."""
    a, b = list(run.words), list(name.words)
    while a and b and letters(a[-1]) == letters(b[-1]):
        a, b = a[:-1], b[:-1]
    while a and b and letters(a[0]) == letters(b[0]):
        a, b = a[1:], b[1:]
    return _Phrase.of(a), _Phrase.of(b)
