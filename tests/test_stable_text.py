"""The text a session promises early (Wyoming transcript chunks) and how finals keep it."""

from __future__ import annotations

from satellite_asr.session import keep_prefix, stable_prefix


def test_stable_prefix_is_what_two_partials_agree_on_without_the_last_word() -> None:
    assert stable_prefix("turn on the", "turn on the kitchen") == "turn on the"
    assert stable_prefix("turn on the kitch", "turn on the kitchen lights") == "turn on the"
    assert stable_prefix("turn on", "turn on") == "turn"
    assert stable_prefix("", "turn on the") == ""
    assert stable_prefix("what time", "What time is it?") == ""


def test_stable_prefix_is_a_prefix_of_the_newest_text() -> None:
    current = "  Turn  on the kitchen lights."
    stable = stable_prefix("Turn on the kitchen", current)
    assert current.startswith(stable) and stable.endswith("kitchen")


def test_keep_prefix() -> None:
    assert keep_prefix("turn on the lights", "turn on") == "turn on the lights"
    assert keep_prefix("Turn on the lights", "turn on") == "turn on the lights"
    assert keep_prefix("something else", "turn on") == "turn on something else"
    assert keep_prefix("anything", "") == "anything"
