"""`satellite-asr bench --protocol rest`: throughput of `POST /v1/audio/transcriptions` on a long file.

The file is the manifest's commands, `rounds` times over, with silence between: a recording of a
few minutes whose words are known. `clients` upload it at once; the report gives audio seconds
transcribed per wall second (from the first request to the last response), CPU seconds per audio
second (in-process daemon only) and the WER of the returned segments.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import wave
from dataclasses import dataclass
from typing import Any

import numpy as np

from satellite_asr.audio import SAMPLE_RATE, Audio, to_pcm16
from satellite_asr.clients.bench import BenchFile, bench_daemon, key_headers, normalise_words
from satellite_asr.clients.stream_client import refusal
from satellite_asr.clients.wav import read_wav
from satellite_asr.config import Settings

GAP_SECONDS = 3.0
"""Silence between two files of the recording (the files have their own lead and trail too)."""


class UploadRefused(Exception):
    """The daemon answered an upload with an error: its HTTP `status`, and its code and sentence."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(refusal(status, body, "upload"))
        self.status = status


def long_recording(files: list[BenchFile], rounds: int, gap_s: float = GAP_SECONDS) -> tuple[Audio, list[str]]:
    """Every file `rounds` times over with `gap_s` of silence after each; the commands spoken, in order."""
    gap = np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.float32)
    pieces: list[Audio] = []
    words: list[str] = []
    for _ in range(rounds):
        for file in files:
            pieces += [read_wav(file.path).to_16k_mono(), gap]
            words += file.references
    return np.concatenate(pieces), words


def wav_bytes(audio: Audio) -> bytes:
    """16 kHz mono 16-bit WAV, as a client would upload it."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(to_pcm16(audio).tobytes())
    return buffer.getvalue()


@dataclass
class RestBenchReport:
    clients: int
    audio_seconds: float
    """Length of the uploaded recording."""
    wall_seconds: float
    audio_seconds_per_second: float
    """All uploads' audio over the wall time: the daemon's REST throughput."""
    cpu_seconds_per_audio_second: float | None
    segments: int
    expected_segments: int
    wer: float

    def summary(self) -> str:
        cpu = "n/a" if self.cpu_seconds_per_audio_second is None else f"{self.cpu_seconds_per_audio_second:.3f}"
        return "\n".join(
            [
                f"uploads: {self.clients} x {self.audio_seconds:.1f} s of audio",
                f"wall time: {self.wall_seconds:.1f} s",
                f"throughput: {self.audio_seconds_per_second:.1f} audio s per s",
                f"CPU s per audio s: {cpu}",
                f"segments: {self.segments} (expected {self.expected_segments} per upload x {self.clients})",
                f"WER: {self.wer:.1%}",
            ]
        )


async def run_rest_bench(
    settings: Settings, files: list[BenchFile], *, clients: int, rounds: int, url: str | None
) -> RestBenchReport:
    """Upload the recording from `clients` clients at once; in-process daemon unless `url` is given."""
    import aiohttp
    import jiwer

    audio, words = long_recording(files, rounds)
    upload = wav_bytes(audio)
    async with bench_daemon(settings, url) as daemon:
        if daemon is not None:
            url = f"http://127.0.0.1:{daemon.http_port}"
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(timeout=timeout, headers=key_headers(settings)) as http:

            async def transcribe() -> dict[str, Any]:
                form = aiohttp.FormData({"model": "whisper-1", "response_format": "verbose_json"})
                form.add_field("file", io.BytesIO(upload), filename="recording.wav", content_type="audio/wav")
                async with http.post(f"{url}/v1/audio/transcriptions", data=form) as response:
                    body = await response.read()
                    if response.status != 200:
                        raise UploadRefused(response.status, body)
                    result: dict[str, Any] = json.loads(body)
                    return result

            cpu_before, started = time.process_time(), time.perf_counter()
            results = await asyncio.gather(*(transcribe() for _ in range(clients)))
            wall = time.perf_counter() - started
            cpu = time.process_time() - cpu_before
    seconds = audio.size / SAMPLE_RATE
    reference = normalise_words(" ".join(words))
    errors = [jiwer.wer(reference, normalise_words(result["text"]) or "<empty>") for result in results]
    return RestBenchReport(
        clients=clients,
        audio_seconds=round(seconds, 1),
        wall_seconds=round(wall, 2),
        audio_seconds_per_second=round(clients * seconds / wall, 1),
        cpu_seconds_per_audio_second=round(cpu / (clients * seconds), 3) if daemon is not None else None,
        segments=sum(len(result["segments"]) for result in results),
        expected_segments=len(words),
        wer=float(np.mean(errors)),
    )
