"""The benchmark's own helpers (the benchmarks themselves are scripts, never timed tests)."""

from __future__ import annotations

import json

from satellite_asr.clients.bench import speech_segments
from satellite_asr.clients.wav import read_wav
from tests.helpers import FIXTURES


def test_speech_spans_found_from_energy_are_plain_numbers_for_the_json_report() -> None:
    spans = speech_segments(read_wav(FIXTURES / "three_commands.wav").to_16k_mono())
    assert len(spans) == 3, spans
    assert all(type(value) is float for span in spans for value in span), spans
    assert json.loads(json.dumps(spans)) == [list(span) for span in spans]
