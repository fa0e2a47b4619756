"""Wyoming load test: N concurrent Home Assistant-like clients; speech end -> transcript, and WER.

Each round is what Home Assistant's `wyoming` integration does for one voice command: connect,
`transcribe` + `audio-start`, 10 ms audio chunks at real-time pace while reading events, and the first
`transcript` ends the request. Two ways to end the audio:

- `endpoint`: keep streaming until the server answers on its own (this daemon's endpointing);
  `audio-stop` only if the audio runs out first.
- `ha-vad`: Home Assistant's own end of speech, as its pipeline decides it for a server that needs
  external VAD (wyoming-faster-whisper unless started with `--vad-endpointing`): its microVAD and
  segmenter (`home_assistant_vad.command_end`, `ha_wait` its silence: 0.7 s by default), then
  `audio-stop`.
- `speech-end-wait`: `audio-stop` exactly `ha_wait` after the true end of speech: an end-of-speech
  detector with no lag, which no real one has (the earlier emulation of Home Assistant, kept as the
  best case for such a server).

Latency is measured from the true end of speech in the file (from the manifest where it knows it,
else found from the signal's energy) to the `transcript` event's arrival; a transcript before the
voice ended is a cut command. Only files with one expected utterance are used (one command per
round, as Home Assistant sends).

    satellite-asr bench --protocol wyoming --clients 4 --rounds 8           # in-process daemon
    satellite-asr bench --protocol wyoming --url tcp://127.0.0.1:10400 --wyoming-end ha-vad
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event

from satellite_asr.clients.bench import STAGGER_SECONDS, BenchFile, bench_daemon, percentile, word_error_rate
from satellite_asr.clients.home_assistant_vad import SILENCE_SECONDS, command_end
from satellite_asr.clients.wav import WavFile, read_wav
from satellite_asr.config import ConfigError, Settings
from satellite_asr.protocols.wyoming import parse_uri

CHUNK_SECONDS = 0.01
"""Audio per `audio-chunk`: 10 ms, as Home Assistant sends them whatever its satellite sends (its
voice pipeline cuts audio into 10 ms chunks, `assist_pipeline.const.MS_PER_CHUNK`, and its Wyoming
speech-to-text forwards each one). A server that endpoints by itself can answer no
sooner than the chunk that completes the silence it waits for, so the chunk size is part of the
latency measured."""


@dataclass
class RoundResult:
    """One transcribe round as the client saw it; times are `time.monotonic()`."""

    events: list[tuple[float, Event]]
    """Every event received until the first `transcript` (included), or until the connection ended."""
    origin: float
    """When the first audio sample was sent."""
    audio_stop_at: float | None
    """When `audio-stop` was sent; None if the transcript came first."""

    @property
    def transcript(self) -> Event | None:
        return next((e for _, e in self.events if Transcript.is_type(e.type)), None)

    @property
    def text(self) -> str | None:
        event = self.transcript
        return None if event is None else Transcript.from_event(event).text

    @property
    def transcript_at(self) -> float | None:
        return next((t for t, e in self.events if Transcript.is_type(e.type)), None)

    def of_type(self, kind: str) -> list[Event]:
        return [e for _, e in self.events if e.type == kind]


async def transcribe_like_home_assistant(
    client: AsyncTcpClient,
    wav: WavFile,
    *,
    language: str | None = "en",
    realtime: bool = True,
    stop_after: float | None = None,
    chunk_samples: int | None = None,
) -> RoundResult:
    """One round on a connected client; audio goes out while events are read concurrently.

    `stop_after`: seconds of audio after which `audio-stop` is sent (Home Assistant's VAD decided
    the command ended), silence sent after the file's end until then, as a microphone goes on
    recording; None streams until the transcript arrives or the audio runs out.
    `chunk_samples`: per `audio-chunk`, `CHUNK_SECONDS` of the file's rate unless given.
    """
    rate, width, channels = wav.sample_rate, 2, wav.channels
    await client.write_event(Transcribe(language=language).event())
    await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
    events: list[tuple[float, Event]] = []

    async def receive() -> None:
        while True:
            event = await client.read_event()
            if event is None:
                return
            events.append((time.monotonic(), event))
            if Transcript.is_type(event.type):
                return

    receiver = asyncio.create_task(receive())
    frame = width * channels
    step = (round(rate * CHUNK_SECONDS) if chunk_samples is None else chunk_samples) * frame
    limit = len(wav.pcm) if stop_after is None else round(stop_after * rate) * frame
    pcm = wav.pcm.ljust(limit, b"\0")  # silence past the file's end, up to stop_after
    origin = time.monotonic()
    audio_stop_at = None
    try:
        for offset in range(0, limit, step):
            end = min(offset + step, limit)
            if realtime:  # a microphone has a chunk once its last sample was spoken
                await asyncio.sleep(max(0.0, origin + end / frame / rate - time.monotonic()))
            if receiver.done():
                break
            audio = pcm[offset:end]
            await client.write_event(AudioChunk(rate=rate, width=width, channels=channels, audio=audio).event())
        if not receiver.done():
            audio_stop_at = time.monotonic()
            await client.write_event(AudioStop().event())
        await receiver
    finally:
        receiver.cancel()
    return RoundResult(events, origin, audio_stop_at)


@dataclass
class RoundTiming:
    file: str
    reference: str
    text: str | None
    latency: float | None
    """Seconds from the true end of speech to the transcript's arrival (None: no transcript)."""


@dataclass
class WyomingBenchReport:
    mode: str
    clients: int
    rounds: int
    missing_transcripts: int
    cut_commands: int
    """Transcripts that came before the voice really stopped: the command was cut."""
    latency_p50: float
    latency_p95: float
    wer: float
    details: list[RoundTiming] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join(
            [
                f"mode {self.mode}, clients {self.clients}, rounds {self.rounds}"
                f" (missing transcripts: {self.missing_transcripts}, cut: {self.cut_commands})",
                f"speech end -> transcript  p50 {self.latency_p50 * 1000:.0f} ms  p95 {self.latency_p95 * 1000:.0f} ms",
                f"WER vs reference {self.wer * 100:.1f}%",
            ]
        )


@dataclass(frozen=True)
class PlannedRound:
    """A one-command file as a round sends it."""

    file: BenchFile
    wav: WavFile
    speech_end: float
    """Seconds into the file where the voice really stops."""
    stop_after: float | None
    """Seconds of audio after which `audio-stop` goes (None: the server ends the command)."""


def plan_rounds(commands: list[tuple[BenchFile, WavFile]], mode: str, ha_wait: float) -> list[PlannedRound]:
    """Where each file's voice stops and where its audio ends in `mode`, worked out once before the
    clients start, so that no client's real-time pacing waits for it."""
    if ha_wait <= 0:
        raise ValueError(f"--ha-wait must be more than 0 seconds, got {ha_wait}")
    planned = []
    for file, wav in commands:
        audio = wav.to_16k_mono()
        speech_end = file.voice_spans(audio)[-1][1]
        stop_after = None
        if mode == "ha-vad":
            stop_after = command_end(audio, ha_wait)
        elif mode == "speech-end-wait":
            stop_after = speech_end + ha_wait
        planned.append(PlannedRound(file, wav, speech_end, stop_after))
    return planned


async def _client(host: str, port: int, jobs: list[PlannedRound], delay: float) -> list[RoundTiming]:
    await asyncio.sleep(delay)
    timings = []
    for job in jobs:
        async with AsyncTcpClient(host, port) as client:
            result = await transcribe_like_home_assistant(client, job.wav, stop_after=job.stop_after)
        arrival = result.transcript_at
        latency = None if arrival is None else arrival - (result.origin + job.speech_end)
        timings.append(RoundTiming(job.file.name, job.file.references[0], result.text, latency))
    return timings


def one_command_files(files: list[BenchFile]) -> list[tuple[BenchFile, WavFile]]:
    """The files that hold exactly one command, with their audio."""
    commands = [(file, read_wav(file.path)) for file in files if len(file.references) == 1]
    if not commands:
        raise ValueError("the manifest has no file with exactly one utterance")
    return commands


async def run_wyoming_bench(
    settings: Settings,
    commands: list[tuple[BenchFile, WavFile]],
    *,
    clients: int,
    rounds: int,
    uri: str | None,
    mode: str = "endpoint",
    ha_wait: float = SILENCE_SECONDS,
) -> WyomingBenchReport:
    """Run the load; starts an in-process daemon from `settings` unless `uri` names a running server."""
    planned = plan_rounds(commands, mode, ha_wait)
    async with bench_daemon(settings, uri) as daemon:
        if daemon is not None:
            assert daemon.wyoming_port is not None, "the in-process daemon needs a tcp:// wyoming_uri"
            host, port = "127.0.0.1", daemon.wyoming_port
        else:
            try:
                address = parse_uri(uri or "")
            except ConfigError:  # it names the wyoming_uri setting, which a bench --url is not
                address = None
            if address is None or address.scheme != "tcp":
                raise ValueError(f"--url of --protocol wyoming must be tcp://HOST:PORT, got {uri!r}")
            host, port = address.host, address.port
        jobs = []
        for client in range(clients):
            work = [planned[(client + r) % len(planned)] for r in range(rounds)]
            jobs.append(_client(host, port, work, client * STAGGER_SECONDS))
        timings = [t for client_timings in await asyncio.gather(*jobs) for t in client_timings]
    latencies = [t.latency for t in timings if t.latency is not None]
    wer = word_error_rate([(t.reference, t.text) for t in timings if t.text is not None])
    return WyomingBenchReport(
        mode=mode,
        clients=clients,
        rounds=len(timings),
        missing_transcripts=sum(t.text is None for t in timings),
        cut_commands=sum(latency < 0 for latency in latencies),
        latency_p50=statistics.median(latencies) if latencies else float("nan"),
        latency_p95=percentile(latencies, 95),
        wer=wer,
        details=timings,
    )
