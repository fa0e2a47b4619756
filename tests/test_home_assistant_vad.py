"""Home Assistant's end of speech as the Wyoming bench emulates it for servers that need external VAD:
its segmenter's rules on synthetic probabilities, its real microVAD on espeak-ng commands, and the
bench driving a peer-like server with it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from wyoming.client import AsyncTcpClient

from satellite_asr.cli import main
from satellite_asr.clients.bench import load_manifest
from satellite_asr.clients.home_assistant_vad import CHUNK_SECONDS, CommandSegmenter, command_end
from satellite_asr.clients.wav import read_wav
from satellite_asr.clients.wyoming_bench import one_command_files, run_wyoming_bench, transcribe_like_home_assistant
from tests.doubles import wyoming_server_without_endpointing_double
from tests.eval_turns import MANIFEST, TURNS
from tests.helpers import daemon_settings, free_port

SPEECH, SILENCE = 0.9, 0.0


def chunks_until_finished(segmenter: CommandSegmenter, probabilities: list[float]) -> int | None:
    """The 1-based chunk on which the segmenter finished, None if it never did."""
    for index, probability in enumerate(probabilities, start=1):
        if segmenter.finished(CHUNK_SECONDS, probability):
            return index
    return None


def seconds(probability: float, duration: float) -> list[float]:
    return [probability] * round(duration / CHUNK_SECONDS)


def test_a_command_ends_after_the_silence() -> None:
    finished = chunks_until_finished(CommandSegmenter(), seconds(SPEECH, 1.2) + seconds(SILENCE, 2.0))
    assert finished is not None and 120 + 70 <= finished <= 120 + 71  # 0.7 s, to a chunk of rounding


def test_a_short_command_lasts_at_least_command_seconds() -> None:
    """0.4 s of speech and the aggressive 0.25 s silence: the command's 1 s minimum decides."""
    finished = chunks_until_finished(CommandSegmenter(0.25), seconds(SPEECH, 0.4) + seconds(SILENCE, 2.0))
    assert finished is not None and 100 <= finished <= 101


def test_silence_inside_a_command_counts_towards_its_end() -> None:
    """What cuts a paused command in Home Assistant: less than reset_seconds of speech after a
    0.5 s pause does not refill the count, so 0.2 s more silence ends it."""
    probabilities = seconds(SPEECH, 1.2) + seconds(SILENCE, 0.5) + seconds(SPEECH, 0.5) + seconds(SILENCE, 2.0)
    finished = chunks_until_finished(CommandSegmenter(), probabilities)
    assert finished is not None and 220 + 20 <= finished <= 220 + 21


def test_a_second_of_speech_after_a_pause_refills_the_count() -> None:
    probabilities = seconds(SPEECH, 1.2) + seconds(SILENCE, 0.5) + seconds(SPEECH, 1.0) + seconds(SILENCE, 2.0)
    finished = chunks_until_finished(CommandSegmenter(), probabilities)
    assert finished is not None and 270 + 70 <= finished <= 270 + 71


def test_a_middling_probability_is_speech_before_the_command_and_silence_inside_it() -> None:
    """0.35: over the 0.2 that starts a command, under the 0.5 that keeps it going. The command
    starts during the first 0.3 s, so its 1 s minimum (not the 0.25 s silence) ends it at 1.0 s."""
    probabilities = seconds(0.35, 0.3) + seconds(SPEECH, 0.3) + seconds(0.35, 2.0)
    finished = chunks_until_finished(CommandSegmenter(0.25), probabilities)
    assert finished is not None and 100 <= finished <= 101


def test_speech_before_the_command_is_forgotten_after_a_second_without_it() -> None:
    refilled = CommandSegmenter()
    assert chunks_until_finished(refilled, seconds(SPEECH, 0.2) + seconds(SILENCE, 1.0) + seconds(SPEECH, 0.2)) is None
    assert not refilled.in_command
    kept = CommandSegmenter()
    assert chunks_until_finished(kept, seconds(SPEECH, 0.2) + seconds(SILENCE, 0.5) + seconds(SPEECH, 0.2)) is None
    assert kept.in_command


def test_quiet_noise_starts_no_command_and_the_timeout_ends_the_stream() -> None:
    segmenter = CommandSegmenter()
    assert chunks_until_finished(segmenter, seconds(0.15, 14.0)) is None
    assert not segmenter.in_command
    assert chunks_until_finished(segmenter, seconds(0.15, 2.0)) in (100, 101)  # 15 s in all


@pytest.mark.parametrize("name", ["dev_complete_01.wav", "fresh_complete_05.wav", "dev_paused_03.wav"])
def test_microvad_ends_the_command_after_the_voice_and_its_silence(name: str) -> None:
    """Home Assistant's real VAD on espeak-ng commands: audio-stop comes no sooner than the silence
    after the voice really stops (microVAD holds on to speech for about half a second more), and a
    relaxed wait moves it by exactly the 0.55 s it adds."""
    audio = read_wav(TURNS / name).to_16k_mono()
    voice_end = MANIFEST[name]["voice_end_s"]
    default, relaxed = command_end(audio), command_end(audio, 1.25)
    assert voice_end + 0.7 <= default <= voice_end + 2.0, (default, voice_end)
    assert relaxed - default == pytest.approx(0.55, abs=CHUNK_SECONDS)


async def test_a_stop_past_the_file_is_reached_with_silence_as_a_microphone_records_it() -> None:
    port = free_port()
    wav = read_wav(TURNS / "dev_complete_01.wav")
    past_the_file = wav.seconds + 0.5
    async with wyoming_server_without_endpointing_double(port), AsyncTcpClient("127.0.0.1", port) as client:
        result = await transcribe_like_home_assistant(client, wav, realtime=False, stop_after=past_the_file)
    assert result.text == f"{past_the_file:.2f}"


async def test_the_bench_drives_a_server_without_endpointing_as_home_assistant_does(tmp_path: Path) -> None:
    port = free_port()
    files = one_command_files(load_manifest(TURNS / "manifest.json", "dev", "complete"))[:2]
    async with wyoming_server_without_endpointing_double(port):
        report = await run_wyoming_bench(
            daemon_settings(), files, clients=1, rounds=2, uri=f"tcp://127.0.0.1:{port}", mode="ha-vad"
        )
    for (_, wav), timing in zip(files, report.details, strict=True):
        assert timing.text == f"{command_end(wav.to_16k_mono()):.2f}"
        assert timing.latency is not None and timing.latency > 0.7


async def test_speech_end_wait_stops_the_audio_its_wait_after_the_voice() -> None:
    port = free_port()
    files = one_command_files(load_manifest(TURNS / "manifest.json", "dev", "complete"))[:1]
    async with wyoming_server_without_endpointing_double(port):
        report = await run_wyoming_bench(
            daemon_settings(), files, clients=1, rounds=1, uri=f"tcp://127.0.0.1:{port}", mode="speech-end-wait"
        )
    (file, wav), (timing,) = files[0], report.details
    assert timing.text == f"{file.voice_spans(wav.to_16k_mono())[-1][1] + 0.7:.2f}"


def test_without_pymicro_vad_the_bench_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pymicro_vad", None)  # as if it were not installed
    arguments = ["bench", "--protocol", "wyoming", "--url", "tcp://127.0.0.1:9", "--wyoming-end", "ha-vad"]
    assert main([*arguments, "--manifest", str(TURNS / "manifest.json"), "--split", "dev"]) == 2
    assert "in the checkout, .venv/bin/pip install -e '.[ha-vad]'" in capsys.readouterr().err


def test_a_wait_of_no_time_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["bench", "--protocol", "wyoming", "--url", "tcp://127.0.0.1:9", "--ha-wait", "0"]
    assert main([*arguments, "--manifest", str(TURNS / "manifest.json"), "--split", "dev"]) == 2
    assert "--ha-wait must be more than 0 seconds" in capsys.readouterr().err
