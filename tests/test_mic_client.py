"""`satellite-asr stream --mic`, run through the microphone code path with a WAV as the device.

There is no audio device here, so `tests/fake_sounddevice` stands in for the sounddevice package:
it plays a WAV through the same callback-on-another-thread interface PortAudio uses, and the
command line runs unchanged as a subprocess. Ctrl-C is a real SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soxr

from satellite_asr.clients.audio_source import MicrophoneSource, MicrophoneUnavailable
from satellite_asr.clients.stream_client import TranscriptPrinter
from satellite_asr.clients.wav import read_wav
from tests.certificates import self_signed
from tests.helpers import EXPECTED, FIXTURES, WER_TOLERANCE, running_daemon, word_error_rate, write_wav, ws_url

pytestmark = pytest.mark.timeout(120)

FAKE_SOUNDDEVICE = Path(__file__).parent / "fake_sounddevice"


def speech_without_trailing_silence(name: str, rate: int, directory: Path) -> Path:
    """The fixture cut right after its last word and resampled to a typical device rate, so only
    `end` (not the VAD) can finish the utterance."""
    samples = read_wav(FIXTURES / name).to_16k_mono()
    loud = np.flatnonzero(np.abs(samples) > 0.05 * np.abs(samples).max())
    cut = samples[: loud[-1] + 800]  # 50 ms after the last loud sample
    return write_wav(directory / f"cut-{rate}.wav", soxr.resample(cut, 16000, rate), rate)


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss with --cafile"])
async def test_ctrl_c_sends_end_and_waits_for_the_last_final(tmp_path: Path, tls: bool) -> None:
    wav = speech_without_trailing_silence("lights_on.wav", 44100, tmp_path)
    daemon_tls: dict[str, str] = {}
    trust: list[str] = []
    if tls:  # the daemon's self-signed certificate, trusted by the client through --cafile only
        cert = self_signed(tmp_path, ["localhost"], ["127.0.0.1"])
        daemon_tls, trust = {"tls_cert": str(cert.cert), "tls_key": str(cert.key)}, ["--cafile", str(cert.cert)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(FAKE_SOUNDDEVICE), os.environ.get("PYTHONPATH", "")]),
        "SATELLITE_ASR_FAKE_MIC_WAV": str(wav),
        "SATELLITE_ASR_FAKE_MIC_RATES": "44100",  # the device cannot record at 16 kHz
    }
    async with running_daemon(**daemon_tls) as daemon:
        url = f"wss://127.0.0.1:{daemon.http_port}/v1/stream" if tls else ws_url(daemon)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "satellite_asr",
            "stream",
            "--mic",
            "--json",
            "--url",
            url,
            *trust,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        stderr_lines = []
        while b"fake microphone: end of file" not in (line := await asyncio.wait_for(process.stderr.readline(), 60)):
            assert line, f"the client exited early: {b''.join(stderr_lines).decode()}"
            stderr_lines.append(line)
        process.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    stderr_text = b"".join([*stderr_lines, stderr]).decode()
    assert process.returncode == 0, stderr_text
    assert "Listening on 'fake microphone' at 44100 Hz" in stderr_text
    assert "Finishing: waiting for the last transcript" in stderr_text
    messages = [json.loads(line) for line in stdout.decode().splitlines()]
    assert messages[0]["type"] == "session_created"
    assert (messages[0]["config"]["sample_rate"], messages[0]["config"]["encoding"]) == (44100, "s16le")
    finals = [m for m in messages if m["type"] == "final"]
    assert len(finals) == 1
    assert finals[0]["is_speech_final"] is False, "no silence followed the words: `end` produced this final"
    assert word_error_rate(EXPECTED["lights_on.wav"][0], finals[0]["text"]) <= WER_TOLERANCE, finals[0]["text"]


async def test_a_reader_that_closes_the_output_ends_the_stream_quietly() -> None:
    """`stream --mic --json | head -n 1`: writing the second line failed with EPIPE, which read as
    "cannot reach" the daemon, and not until the source ended: a microphone never does."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(FAKE_SOUNDDEVICE), os.environ.get("PYTHONPATH", "")]),
        "SATELLITE_ASR_FAKE_MIC_WAV": str(FIXTURES / "three_commands.wav"),
    }
    async with running_daemon() as daemon:
        process = await asyncio.create_subprocess_exec(
            *("bash", "-c", '"$@" | head -n 1; exit "${PIPESTATUS[0]}"', "bash"),
            *(sys.executable, "-m", "satellite_asr", "stream", "--mic", "--json", "--url", ws_url(daemon)),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        finally:  # a client that never ends is not left behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + signal.SIGPIPE, stderr.decode()
    assert [json.loads(line)["type"] for line in stdout.decode().splitlines()] == ["session_created"]
    assert stderr.decode().splitlines() == ["Listening on 'fake microphone' at 16000 Hz; Ctrl-C to finish."]


@pytest.mark.parametrize(
    ("module", "source", "advice"),
    [
        ("sitecustomize.py", "import sys\nsys.modules['sounddevice'] = None\n", ".venv/bin/pip install -e '.[mic]'"),
        ("sounddevice.py", "raise OSError('PortAudio library not found')\n", "apt-get install libportaudio2"),
    ],
    ids=["package missing", "portaudio missing"],
)
def test_missing_microphone_support_is_explained(tmp_path: Path, module: str, source: str, advice: str) -> None:
    (tmp_path / module).write_text(source)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "satellite_asr", "stream", "--mic", "--url", "ws://127.0.0.1:9/v1/stream"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert advice in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def fake_sounddevice(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("sounddevice", FAKE_SOUNDDEVICE / "sounddevice.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "sounddevice", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("device_rate", "accepted", "chosen"),
    [(48000, "16000,48000", 16000), (44100, "44100", 44100), (8000, "8000", 8000)],
)
def test_microphone_records_at_16k_when_it_can_else_at_its_own_rate(
    fake_sounddevice: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    device_rate: int,
    accepted: str,
    chosen: int,
) -> None:
    monkeypatch.setenv("SATELLITE_ASR_FAKE_MIC_WAV", str(write_wav(tmp_path / "x.wav", np.zeros(100), device_rate)))
    monkeypatch.setenv("SATELLITE_ASR_FAKE_MIC_RATES", accepted)
    assert MicrophoneSource().sample_rate == chosen


def test_microphone_rate_the_daemon_cannot_take_is_refused(
    fake_sounddevice: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SATELLITE_ASR_FAKE_MIC_WAV", str(write_wav(tmp_path / "x.wav", np.zeros(100), 96000)))
    with pytest.raises(MicrophoneUnavailable, match=r"records at 96000 Hz; the daemon takes 8000-48000 Hz"):
        MicrophoneSource()


def test_unknown_input_device_is_refused(fake_sounddevice: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MicrophoneUnavailable, match=r"no usable input device .*python -m sounddevice"):
        MicrophoneSource("USB headset")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_rewrites_the_partial_line_and_keeps_finals() -> None:
    out = _Terminal()
    printer = TranscriptPrinter(out, as_json=False)
    printer({"type": "speech_start", "utterance_id": 1, "start": 0.2})
    printer({"type": "partial", "utterance_id": 1, "text": "turn on", "is_speech_final": False})
    printer({"type": "partial", "utterance_id": 1, "text": "turn on the kitchen", "is_speech_final": False})
    printer({"type": "final", "utterance_id": 1, "text": "Turn on the kitchen lights.", "start": 0.2, "end": 1.85})
    screen = out.getvalue()
    assert screen == (
        "\r\033[K… turn on\r\033[K… turn on the kitchen\r\033[K[   0.20 -    1.85] Turn on the kitchen lights.\n"
    ), "each partial overwrites the line; the final replaces it and stays"
