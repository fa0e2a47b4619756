"""Correcting transcripts towards the household's names: what sounds like a name becomes it, and
what does not is left alone. Transcripts are tiny.en's, from the dev half of tests/fixtures/names."""

from __future__ import annotations

import json
import random
import re

import pytest

from satellite_asr.biasing.context import MAX_NAME_CHARS
from satellite_asr.biasing.correction import (
    NEAR_SOUNDS,
    NameCorrector,
    apply,
    common_words,
    edit_distance,
    key_distance,
    key_similarity,
    sound_key,
    spells,
)
from satellite_asr.engines.base import TokenSpan
from satellite_asr.homeassistant.names import HomeNames, rank_names
from tests.helpers import FIXTURES, part_home

HOME_NAMES = rank_names(HomeNames.from_json(json.loads((FIXTURES / "names" / "home.json").read_text())), 2000)


def test_sound_keys_of_a_name_and_what_a_model_hears_for_it_are_close() -> None:
    assert sound_key("Pemberly fan") == sound_key("Pemberley fan")
    assert key_similarity(sound_key("merry-go room"), sound_key("Marigold room")) >= 0.75
    assert key_similarity(sound_key("fissile suite"), sound_key("Thistle suite")) >= 0.75
    unrelated = key_similarity(sound_key("what time is it"), sound_key("Thistle suite"))
    assert key_similarity(sound_key("fissile suite"), sound_key("Thistle suite")) > unrelated + 0.15


def table_distance(a: str, b: str, lose: dict[str, float], swap: dict[tuple[str, str], float]) -> float:
    """Edit distance by filling the whole table, the textbook way: the oracle for the fast forms."""
    table = [[0.0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        table[i][0] = table[i - 1][0] + lose.get(a[i - 1], 1.0)
    for j in range(1, len(b) + 1):
        table[0][j] = table[0][j - 1] + lose.get(b[j - 1], 1.0)
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            x, y = a[i - 1], b[j - 1]
            table[i][j] = min(
                table[i - 1][j] + lose.get(x, 1.0),
                table[i][j - 1] + lose.get(y, 1.0),
                table[i - 1][j - 1] + (0.0 if x == y else swap.get((x, y), 1.0)),
            )
    return table[-1][-1]


def test_a_name_longer_than_anyone_says_is_not_matched() -> None:
    sayable = "Calloway blinds in the " + "very " * 13 + "long hall"
    too_long = sayable + " and the " + "very " * 5 + "tall stairs"
    assert len(sayable) <= MAX_NAME_CHARS < len(too_long)
    for name in (sayable, too_long):
        heard = name.replace("Calloway", "Caloway")
        assert NameCorrector([name]).correct(heard) == (name if name == sayable else heard)
    assert NameCorrector(["Kitchen" + " " * 100 + "light"]).correct("kitchen lite") == "Kitchen light", "spaces"


def test_the_fast_distances_agree_with_the_whole_table() -> None:
    """Levenshtein (bit-parallel) on letters, and the sound keys' weighted distance (a vowel mark or a
    near sound costs half), on random strings of the letters that matter, long ones included."""
    draw = random.Random(11)
    half = {(pair[0], pair[1]): 0.5 for pair in NEAR_SOUNDS} | {(pair[1], pair[0]): 0.5 for pair in NEAR_SOUNDS}
    for _ in range(3000):
        a, b = ("".join(draw.choices("aaeimnlrpf0stxjkwd", k=draw.randint(0, 14))) for _ in range(2))
        assert edit_distance(a, b) == table_distance(a, b, {}, {}), (a, b)
        assert key_distance(a, b) == table_distance(a, b, {"a": 0.5}, half), (a, b)
        limit, whole = draw.randint(0, 10) / 2, key_distance(a, b)
        stopped = key_distance(a, b, limit)
        # within the limit the distance is exact; past it, the search stops at some lower bound over it
        assert stopped == whole if whole <= limit else limit < stopped <= whole, (a, b, limit)
    long_a, long_b = "".join(draw.choices("abcdefgh", k=130)), "".join(draw.choices("abcdefgh", k=90))
    assert edit_distance(long_a, long_b) == table_distance(long_a, long_b, {}, {})


@pytest.mark.parametrize(
    ("heard", "corrected"),
    [
        ("turn off the light since the merry-go-room.", "turn off the light since the Marigold room."),
        ("How warm is it in the fissile suite?", "How warm is it in the Thistle suite?"),
        ("Switch off from the brand of clamp.", "Switch off from the Brannock lamp."),
        ("Turn on the Pemberly fan.", "Turn on the Pemberley fan."),
        ("Turn off the light in the terror gun room.", "Turn off the light in the Tarragon room."),
        ("Turn on Mox's feeder.", "Turn on Moxie's feeder."),
        ("close the blinds in Maybles 10.", "close the blinds in Mabel's den."),  # a number sounds as its word
        ("Turn off the told me aquarium light.", "Turn off the Ptolemy aquarium light."),  # the p of pt is silent
        ("Turn off the light in the Kirby.", "Turn off the light in The Cubby."),  # "the" shared, "Kirby" close
    ],
)
def test_what_sounds_like_a_name_becomes_the_name(heard: str, corrected: str) -> None:
    """In the home of the parts these names are of (dev, held-out, held-out 2): in the whole
    evaluation home held-out 25's Majlis takes "Maybles"."""
    assert NameCorrector(part_home("dev", "heldout", "heldout2")).correct(heard) == corrected


@pytest.mark.parametrize(
    "heard",
    [
        "What time is it?",
        "What is the temperature outside?",  # not "the Outside temperature": only the shared word is alike
        "Start the dishwasher.",  # not the Stair lights: "start" is a command word
        "Turn off the bedroom heater.",  # the Bedroom heater, spelled as heard, not the Barnaby heater
        "Turn on the kitchen lights and the TV.",
        "Remind me to call the dentist.",  # not The Tardis: a shared "the" says nothing of the name
        "Look all the doors.",  # nor here
        "Play some music in the living room.",  # not the Summerhouse: "some" is a command word
        "Is it going to rain tomorrow?",  # not the Burrow: nor is "tomorrow"
        "Turn off the garden lights.",  # an area and its lights: no light's name is needed
    ],
)
def test_commands_without_a_misheard_name_are_left_alone(heard: str) -> None:
    assert NameCorrector(HOME_NAMES).correct(heard) == heard


@pytest.mark.parametrize(
    ("part", "heard", "ordinary", "corrected"),
    [
        ("heldout3", "Open the knock after gate.", "gate", "Open the Okafor gate."),
        ("heldout2", "Close the mask as gate.", "gate", "Close the Vasquez gate."),
        ("heldout2", "Power Mario's record player.", "record player", "Power Aurelio's record player."),
        ("heldout3", "Pause Malantine as turntable", "turntable", "Pause Valentina's turntable"),
    ],
)
def test_a_name_is_found_by_its_ordinary_words_when_its_first_sound_is_lost(
    part: str, heard: str, ordinary: str, corrected: str
) -> None:
    """Each of these fails the rule that a run starts with the name's first sound; the name's last
    words as heard ("gate", "turntable") say what was named, and its first word is matched loosely.
    Each in the home of its part: in the whole evaluation home other parts' gates
    compete, the Ofori gate for "after gate" (0.78) and the Mutasa gate for "mask as gate" (0.76)."""
    corrector = NameCorrector(part_home(part))
    assert corrector.correct(heard) == corrected
    name = corrected.split()[-1 - len(ordinary.split())]  # "Okafor", "Aurelio's"
    assert name not in corrector.correct(heard.replace(ordinary, "now")), "not found without the ordinary words"


def test_ordinary_words_alone_find_only_names_that_end_in_them() -> None:
    corrector = NameCorrector(["Okafor gate", "Okafor lamp", "Garden"])
    assert corrector.correct("Open the knock after gate.") == "Open the Okafor gate."
    assert corrector.correct("Open the knock after door.") == "Open the knock after door."
    assert corrector.correct("Turn on the garden gate.") == "Turn on the garden gate.", "a name as spelled stays"
    assert corrector.correct("Open the gate.") == "Open the gate.", "nothing before the ordinary word"


@pytest.mark.parametrize(
    ("heard", "kept"),
    [
        ("Turn off the lights in my room.", "my room"),  # "lights in my" holds command words
        ("Turn off the family wall light.", "family wall light"),  # "wall" is of the Hatherleigh wall light
        ("Turn off the Hatherleigh wall lights.", "Hatherleigh wall light"),  # a name as spelled, lights or light
        ("Turn off Siobhan's fairy light.", "Siobhan's fairy light"),  # its own words beat the Pantry light's
    ],
)
def test_ordinary_words_do_not_take_words_that_belong_elsewhere(heard: str, kept: str) -> None:
    """In the home of the parts these names are of (dev, held-out 4): in the whole evaluation home
    held-out 22's Lindisfarne room takes "lights in my room" and its Fenella's nightlight "family
    wall light" (docs/benchmarks.md)."""
    assert kept in NameCorrector(part_home("dev", "heldout4")).correct(heard)


def test_only_the_given_names_and_no_names_changes_nothing() -> None:
    assert NameCorrector([]).correct("turn off the merry-go room") == "turn off the merry-go room"
    assert NameCorrector(["Zebedee"]).correct("turn off the merry-go room") == "turn off the merry-go room"
    assert NameCorrector(["Marigold room", "Marigold  room"]).correct("the merry-go room!") == "the Marigold room!"


def test_near_matches_are_names_the_text_loosely_sounds_like_with_the_words_they_would_replace() -> None:
    """What an engine takes a second look with: nothing when the text has its name already. In the
    home of the dev part, the kettle's (in the whole evaluation home The Cocoon scores 0.66)."""
    corrector = NameCorrector(part_home("dev"))
    heard = "Switch on the Twin Vehicle."
    near = corrector.near_matches(heard, 5, 0.5)
    assert near is not None, "the text has no name yet"
    assert "Switch on the Quimby kettle." in [apply(heard, [match]) for match in near], near
    assert len(near) <= 5 and [match.score for match in near] == sorted((m.score for m in near), reverse=True)
    assert all(match.score < corrector.threshold for match in near), "looser than the correction"
    assert corrector.near_matches(heard, 1, 0.5) == near[:1]
    assert corrector.near_matches("turn on the kitchen lights", 5, 0.5) is None, "a name as spelled"
    assert corrector.near_matches("turn off the light since the merry-go-room.", 5, 0.5) is None, "corrected by text"
    assert corrector.near_matches("Turn off all the lights.", 5, 0.5) == [], "like no name at all"


def test_a_name_is_spelled_in_whole_words() -> None:
    assert spells("Turn on the TV, please", "TV") and spells("turn on Lachlans fan", "Lachlan\u2019s fan")
    assert spells("Dim the Dvořák lamp", "dvořák lamp") and spells("Open the twin-vehicle", "Twin Vehicle")
    assert spells("Switch on Wire Mu's lamp", "Wiremu's lamp"), "spaces aside"
    assert not spells("stop the robot vacuum", "TV") and not spells("Swaychafgertrude", "Gertrude"), "inside words"
    assert not spells("turn on the fan", "Lachlan's fan") and not spells("anything", "💡")


def test_common_words_are_whole_lower_case_words_of_whispers_vocabulary() -> None:
    common = common_words()
    assert {"dining", "room", "porch", "music", "kitchen", "the"} <= common
    assert not {"cupola", "calloway", "pantry", "Dining", "Ġdining", "2"} & common


@pytest.mark.parametrize(
    ("heard", "name"),
    [
        ("Turn up the heating in my results music room.", "Media room"),  # of Marisol's music room
        ("How hot will it be this afternoon?", "Hallway light"),
        ("Turn off Ken's eyes, light.", "Kitchen lights"),  # of Keziah's nightlight
        ("What time does the sun come up tomorrow?", "Television"),
        ("Turn on the offy maker.", "Coffee maker"),  # a mend it costs: "maker" as heard, 0.70 before it
    ],
)
def test_a_name_of_common_words_is_not_made_of_other_words_it_loosely_sounds_like(heard: str, name: str) -> None:
    """Each scores between the lower bars (threshold, anchor) and `common_bar` against its name."""
    assert NameCorrector([name], common_bar=0.0).correct(heard) != heard, "the bar is what keeps it"
    assert NameCorrector([name]).correct(heard) == heard


@pytest.mark.parametrize(
    ("heard", "corrected"),
    [
        ("Switch off the port slide.", "Switch off the Porch light."),
        ("Is the Mac door locked?", "Is the Back door locked?"),
        ("Switch on the tower rail.", "Switch on the Towel rail."),
        ("turn on the tightly vision", "turn on the Television"),
    ],
)
def test_a_name_of_common_words_heard_closely_is_still_mended(heard: str, corrected: str) -> None:
    assert NameCorrector(HOME_NAMES).correct(heard) == corrected


def test_a_name_of_common_words_loosely_heard_does_not_stop_a_second_look_for_an_unusual_one() -> None:
    corrector = NameCorrector(["Kitchen lights", "Keziah's nightlight"])
    near = corrector.near_matches("Turn off Ken's eyes, light.", 5, 0.5)
    assert near is not None and [match.name for match in near] == ["Keziah's nightlight"]


def spans(text: str, logprob: float) -> tuple[TokenSpan, ...]:
    """As if the engine wrote each word of `text` as one token of this log-probability."""
    return tuple(TokenSpan(word.start(), word.end(), logprob) for word in re.finditer(r"\S+", text))


@pytest.mark.parametrize(
    ("heard", "name"),
    [  # tiny.en's texts of name-free commands of the evaluation set, each corrected before (0.65-0.69)
        ("Start a 3 minute timer.", "Mortimer"),
        ("What is the weather this weekend?", "Wetherby sconce"),
        ("Add next to the shopping list.", "Xiomara's closet"),
        ("How long has the washing machine been running?", "Patio awning"),
        ("and butter and cheese to my shopping list.", "Potting shed"),
        ("Set a timer for 10 minutes.", "Gunawardena monitor"),  # 0.66; a name of held-out 21
        ("How long until sunset?", "Hlongwane heater"),  # 0.66; a name of held-out 39
    ],
)
def test_words_the_engine_was_sure_of_are_not_taken_for_a_name_they_loosely_sound_like(heard: str, name: str) -> None:
    corrector = NameCorrector([name])
    assert name in corrector.correct(heard), "without the engine's word, the text alone"
    assert name in corrector.correct(heard, spans(heard, -1.0)), "words the engine was unsure of"
    assert corrector.correct(heard, spans(heard, -0.1)) == heard
    assert corrector.near_matches(heard, 5, 0.5, spans(heard, -0.1)) == [], "nor worth a second look"


@pytest.mark.parametrize(
    ("heard", "corrected"),
    [
        ("Switch on the tower rail.", "Switch on the Towel rail."),
        ("Is the Mac door locked?", "Is the Back door locked?"),
        ("Lower the Vermuelen blinds.", "Lower the Vermeulen blinds."),
    ],
)
def test_a_name_heard_closely_is_mended_however_sure_the_engine_was(heard: str, corrected: str) -> None:
    assert NameCorrector(HOME_NAMES).correct(heard, spans(heard, -0.05)) == corrected


def test_a_name_the_engine_nearly_wrote_is_matched_before_other_loose_matches() -> None:
    """tiny.en writes "Turn off the pass away lamp." for the Hathaway lamp (held-out 13), with the
    name's " H" among its likeliest tokens where it wrote others (`Transcript.nearly_written`)."""
    corrector = NameCorrector(part_home("heldout13"))
    heard = "Turn off the pass away lamp."
    assert corrector.correct(heard) == "Turn off the Bedside lamp.", "the text alone: an ordinary name scores better"
    assert corrector.correct(heard, (), ["Hathaway lamp"]) == "Turn off the Hathaway lamp."
    assert corrector.correct(heard, (), [" Hathaway  lamp"]) == "Turn off the Hathaway lamp.", "as a client spaced it"
    assert corrector.correct(heard, (), ["Hayloft", "Haverford cinema room"]) == "Turn off the Bedside lamp."
    assert corrector.correct(heard, spans(heard, -0.1), ["Hathaway lamp"]) == heard, "words it was sure of stay"
    assert corrector.correct("Switch on the tower rail and the pass away lamp.", (), ["Hathaway lamp"]) == (
        "Switch on the Towel rail and the Hathaway lamp."
    ), "the other names still mend the words the nearly written ones leave"


@pytest.mark.parametrize(
    ("heard", "nearly_written"),
    [
        ("Turn on the Bedroom heater.", "Bathroom heater"),
        ("Turn on the back bedroom.", "Bathroom"),
    ],
)
def test_a_name_as_spelled_keeps_its_words_from_a_name_the_engine_nearly_wrote(heard: str, nearly_written: str) -> None:
    corrector = NameCorrector(part_home("heldout13"))
    assert corrector.correct(heard, (), [nearly_written]) == heard


def test_a_name_the_engine_nearly_wrote_comes_before_a_match_that_ends_in_another_names_words() -> None:
    corrector = NameCorrector(["Okafor gate", "Nakafta"])
    assert corrector.correct("Open the knock after gate.") == "Open the Okafor gate."
    assert corrector.correct("Open the knock after gate.", (), ["Nakafta"]) == "Open the Nakafta gate."


@pytest.mark.parametrize(
    ("names", "heard", "corrected"),
    [
        (["Dlamini patio heater", "Mbatha heater"], "Switch on the Dlamini pati heater.", "the Dlamini patio heater"),
        # held-out 30's text: the longer run also outranks a weaker match by the last words (the Sowerbutts lamp)
        (
            ["Zsofia's peacock lamp", "Desk lamp", "Sowerbutts lamp"],
            "Switch on Zofir's decock lamp.",
            "Zsofia's peacock lamp",
        ),
        # not a longer run that scores less than the match by the last words
        (["Dlamini patio heater", "Mbatha heater"], "Switch on the Dramani batha heater.", "the Dramani Mbatha heater"),
        # nor one of another kind, whatever its score
        (["Dlamini patio heated", "Mbatha heater"], "Switch on the Dlamini pati heater.", "the Dlamini Mbatha heater"),
    ],
)
def test_a_longer_run_of_the_same_kind_that_scores_better_outweighs_a_match_by_the_last_words(
    names: list[str], heard: str, corrected: str
) -> None:
    assert NameCorrector(names).correct(heard) == f"Switch on {corrected}."


def test_a_run_of_the_same_kind_that_ends_elsewhere_leaves_a_match_by_the_last_words_alone() -> None:
    """Two heaters in one command: the Dlamini patio heater's run ends before the Mbatha heater's
    match starts, so it does not outweigh it (the longer run must end in the same words)."""
    corrector = NameCorrector(["Dlamini patio heater", "Mbatha heater"])
    assert corrector.correct("Switch off the Dlamini pati heater and turn on the batha heater.") == (
        "Switch off the Dlamini patio heater and turn on the Mbatha heater."
    )


def test_a_name_the_engine_nearly_wrote_is_written_only_if_it_is_one_of_the_names() -> None:
    assert NameCorrector(["Bedside lamp"]).correct("Turn off the pass away lamp.", (), ["Hathaway lamp"]) == (
        "Turn off the Bedside lamp."
    )


@pytest.mark.parametrize(
    ("part", "heard", "corrected"),
    [  # tiny.en's texts of named commands of the evaluation set, names in no other way found
        # the only name of a kind takes the words before the kind
        ("heldout16", "Boil and this is current kettle.", "Boil and this is Agnieszka's kettle."),
        ("heldout6", "Start and drop these sound machine.", "Start and Anjali's sound machine."),
        ("heldout16", "Switch on the random popcorn maker.", "Switch on the Brennan popcorn maker."),
        # a name's unusual first word as spelled takes the words after it
        ("heldout4", "Kenji's then lights off.", "Kenji's den lights off."),
        ("heldout14", "Switch off the ramp, since Kofi's turn.", "Switch off the ramp, since Kofi's den."),
    ],
)
def test_a_name_is_found_in_the_words_the_engine_was_unsure_of_by_its_kind_or_its_first_word(
    part: str, heard: str, corrected: str
) -> None:
    corrector = NameCorrector(part_home(part))
    assert corrector.correct(heard, spans(heard, -1.0)) == corrected
    assert corrector.correct(heard, spans(heard, -0.1)) == heard, "words the engine was sure of stay"
    assert corrector.correct(heard) == heard, "and all words, when the engine does not say"


@pytest.mark.parametrize(
    ("names", "heard"),
    [
        (["Agnieszka's kettle", "Eszter's kettle"], "Boil and this is current kettle."),  # two kettles
        (["Agnieszka's kettle", "Kettle"], "Boil and this is current kettle."),  # the kind is a name
        (["Kitchen kettle"], "Boil and this is current kettle."),  # a name of a plain word and its kind
        (["The kettle"], "Boil and this is current kettle."),
        (["Agnieszka's kettle"], "Turn on the kettle."),  # a command word before the kind
        (["Agnieszka's kettle", "Porch light"], "Turn on the porch light and this is current kettle."),
        (["Nyberg steam oven"], "Turn on the microwave oven."),  # a kind is all the words after the first
        (["Balogun tumble dryer"], "Run the tumble dryer."),  # not "dryer", with "tumble" taken for Balogun
        (["Tesla S"], "Charge my blue s now."),  # no kind of one letter
        (["Sonoff 4"], "Boil water 4 minutes."),  # nor of a number
    ],
)
def test_a_kind_is_no_name_when_others_share_it_or_the_text_has_its_name(names: list[str], heard: str) -> None:
    assert NameCorrector(names).correct(heard, spans(heard, -1.0)) == heard


def test_a_name_in_other_case_is_the_same_owner_of_its_kind() -> None:
    heard = "Boil and this is current kettle."
    corrector = NameCorrector(["Agnieszka's kettle", "Agnieszka's Kettle"])
    assert corrector.correct(heard, spans(heard, -1.0)) == "Boil and this is Agnieszka's kettle."


def test_a_curly_apostrophe_is_an_apostrophe_in_names_and_text() -> None:
    heard = "Boil and this is current kettle."
    assert NameCorrector(["Agnieszka\u2019s kettle"]).correct(heard, spans(heard, -1.0)) == (
        "Boil and this is Agnieszka\u2019s kettle."
    )
    heard = "Kenji\u2019s then lights off."
    assert NameCorrector(["Kenji's den"]).correct(heard, spans(heard, -1.0)) == "Kenji's den lights off."


def test_the_words_a_sole_kind_takes_stop_at_a_word_the_engine_was_sure_of() -> None:
    heard = "Please boil current kettle."
    sure_but_current = tuple(
        TokenSpan(word.start(), word.end(), -1.0 if word.group() == "current" else -0.1)
        for word in re.finditer(r"\S+", heard)
    )
    corrector = NameCorrector(["Agnieszka's kettle"])
    assert corrector.correct(heard, sure_but_current) == "Please boil Agnieszka's kettle."


def test_a_first_word_as_spelled_with_the_start_of_the_names_other_words_is_the_name() -> None:
    heard = "Turn off Soraya's mirror."
    assert NameCorrector(["Soraya's mirror light"]).correct(heard, spans(heard, -1.0)) == (
        "Turn off Soraya's mirror light."
    )


def test_the_words_a_sole_kind_takes_stop_at_a_command_word_after_three_and_before_the_first() -> None:
    corrector = NameCorrector(["Wendell kettle"])
    heard = "Boil and this is current kettle."
    assert corrector.correct(heard, spans(heard, -1.0)) == "Boil and this is Wendell kettle."
    heard = "Boil ah these four current kettles."
    assert corrector.correct(heard, spans(heard, -1.0)) == "Boil ah Wendell kettle."
    heard = "Check baby kettle."
    assert corrector.correct(heard, spans(heard, -1.0)) == "Check Wendell kettle.", "never the first word, a verb"


@pytest.mark.parametrize(
    ("names", "heard"),
    [
        (["Kenji's den"], "Tell Kenji's to open the window."),  # more words than the name has after it
        (["Kofi's den"], "Kofi's pen is here."),  # from the name's other first sound or a near one
        (["Sigrun's towel warmer"], "Sigrun's towel is wet."),  # the words that differ score too
        (["Saanvi's dance studio"], "Saanvi's dance lesson is at five."),
    ],
)
def test_a_first_word_as_spelled_takes_no_words_beyond_the_name_nor_shares_alone(names: list[str], heard: str) -> None:
    assert NameCorrector(names).correct(heard, spans(heard, -1.0)) == heard


def test_a_name_found_by_its_first_word_gives_way_to_a_closer_match() -> None:
    heard = "Turn on Kofi's tenbee."
    assert NameCorrector(["Kofi's den", "Tenby"]).correct(heard, spans(heard, -1.0)) == "Turn on Kofi's Tenby."
    assert NameCorrector(["Kofi's den"]).correct(heard, spans(heard, -1.0)) == "Turn on Kofi's den."


def test_how_sure_a_run_is_is_the_mean_of_the_tokens_it_overlaps() -> None:
    """One unsure token among sure ones: its run is unsure as a whole when the mean says so."""
    heard = "Start a 3 minute timer."
    minute = heard.index("minute")
    split = (
        *spans(heard[:minute], -0.01),
        TokenSpan(minute, minute + 3, -0.01),  # "min"
        TokenSpan(minute + 3, minute + 6, -2.0),  # "ute": the run "minute timer" means -0.67
        TokenSpan(minute + 6, len(heard), -0.01),
    )
    assert NameCorrector(["Mortimer"]).correct(heard, split) == "Start a 3 Mortimer."
    assert NameCorrector(["Mortimer"], sure_logprob=-1.0).correct(heard, split) == heard


@pytest.mark.parametrize(
    ("heard", "corrected"),
    [  # tiny.en's texts of the evaluation set: a name as spelled inside a longer unusual name's remains
        ("What is the humidity in the Lynn Wood Garden Room?", "in the Linwood garden room?"),  # the Garden
        ("Start the Halor and dehumidifier.", "Start the Halloran dehumidifier."),  # the Dehumidifier
        ("is the light on in the park ridge laundry room.", "in the Hawkridge laundry room."),  # the Laundry room
    ],
)
def test_a_name_as_spelled_gives_way_to_a_longer_unusual_name_heard_around_it(heard: str, corrected: str) -> None:
    assert NameCorrector(HOME_NAMES).correct(heard).endswith(corrected)


def test_a_name_as_spelled_keeps_its_words_from_a_longer_name_of_common_words_or_itself() -> None:
    heard = "Set the dining room light to 80%."
    assert NameCorrector(["Dining room", "Dining room lights"]).correct(heard) == heard
    assert NameCorrector(["Dishwasher"]).correct("is the dish washer done") == "is the dish washer done"
    heard = "Turn off the bedroom heater."  # the Bedroom humidifier holds the Bedroom, not the Bedroom heater
    assert NameCorrector(["Bedroom", "Bedroom heater", "Bedroom humidifier"]).correct(heard) == heard


def test_a_name_as_spelled_gives_way_only_to_a_longer_name_that_scores_the_threshold() -> None:
    """The cost, by design: said "back porch light" in a home with a Bakker porch light, the words
    are as near one name as the other (0.87), and the longer, unusual name is taken."""
    heard = "turn on the back porch light"
    assert NameCorrector(["Porch light", "Bakker porch light"]).correct(heard) == "turn on the Bakker porch light"
    assert NameCorrector(["Porch light", "Bakker porch light"], threshold=0.9).correct(heard) == heard
