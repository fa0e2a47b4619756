"""The benchmark's own helpers (the benchmarks themselves are scripts, never timed tests)."""

from __future__ import annotations

import json

from satellite_asr.clients.bench import BenchReport, UtteranceTiming, speech_segments
from satellite_asr.clients.wav import read_wav
from tests.helpers import FIXTURES


def test_speech_spans_found_from_energy_are_plain_numbers_for_the_json_report() -> None:
    spans = speech_segments(read_wav(FIXTURES / "three_commands.wav").to_16k_mono())
    assert len(spans) == 3, spans
    assert all(type(value) is float for span in spans for value in span), spans
    assert json.loads(json.dumps(spans)) == [list(span) for span in spans]


def report(endpoints: list[str | None]) -> BenchReport:
    details = [UtteranceTiming("a.wav", i, "text", 0.3, None, endpoint) for i, endpoint in enumerate(endpoints)]
    nan = float("nan")
    return BenchReport(1, len(details), 0, 0, 800, 0.3, 0.9, None, None, nan, nan, None, 0.0, 0.0, details)


def test_the_summary_counts_the_finals_by_why_they_ended() -> None:
    summary = report(["complete", "silence", "complete", "forced"]).summary()
    assert "finals ended by          complete 2, silence 1, forced 1" in summary


def test_a_protocol_that_does_not_say_why_is_not_counted() -> None:
    assert "finals ended by          n/a (the protocol does not say)" in report([None, None]).summary()
