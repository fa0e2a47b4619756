"""`satellite-asr bench`: N concurrent clients stream speech at real-time pace; latency, cost, accuracy.

What is measured, per utterance, against the speech's true start and end in the file (from the
manifest where it knows them, as the turn-detection set's does; otherwise from the signal's
energy, so no labels are needed beyond the expected words):
- speech end -> final: when the final arrives after the person stopped speaking;
- speech start -> first partial;
and over the run: server time per 100 ms frame (from the daemon's own histogram), CPU seconds per
second of audio streamed (in-process daemon only), and WER of the finals against the expected
words and against offline `transcribe` of the same files.

`flooders` adds clients that send the files as fast as the daemon takes them, again and again,
beside the measured real-time clients: what one client pushing files does to everyone else.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import statistics
import struct
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from satellite_asr.access import load_api_key
from satellite_asr.audio import SAMPLE_RATE, Audio, to_pcm16
from satellite_asr.clients.stream_client import FRAME_SECONDS, StreamRefused, refusal
from satellite_asr.clients.transcribe import OfflineTranscriber
from satellite_asr.clients.wav import read_wav
from satellite_asr.config import Settings
from satellite_asr.vad.endpointer import ENDPOINT_REASONS

if TYPE_CHECKING:
    from satellite_asr.server import Daemon

STAGGER_SECONDS = 0.37
"""Client k starts k x this late, as satellites do not all speak at the same instant."""

_NUMBER_WORDS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "ten": "10", "twenty": "20"}


def normalise_words(text: str) -> str:
    """Lowercase words without punctuation, number words as digits: what WER should compare."""
    words = re.sub(r"[^\w\s']", " ", text.lower()).split()
    return " ".join(_NUMBER_WORDS.get(word, word) for word in words)


def word_error_rate(pairs: Sequence[tuple[str, str]]) -> float:
    """Pooled WER of (expected, heard) texts, both `normalise_words`d; an empty text heard counts its
    words as deleted; NaN when there is nothing to compare."""
    import jiwer  # imported when a benchmark reports, not when the CLI starts

    if not pairs:
        return float("nan")
    return float(jiwer.wer([normalise_words(a) for a, _ in pairs], [normalise_words(b) or "-" for _, b in pairs]))


def speech_segments(audio: Audio, level: float = 0.02, min_gap_s: float = 0.5) -> list[tuple[float, float]]:
    """(start, end) seconds of speech: 10 ms frames whose peak exceeds `level`, gaps < `min_gap_s` joined."""
    hop = SAMPLE_RATE // 100
    frames = np.abs(audio[: audio.size // hop * hop]).reshape(-1, hop).max(axis=1)
    loud = np.flatnonzero(frames > level)
    segments: list[tuple[float, float]] = []
    for index in loud.tolist():  # Python ints: the spans end up in `--json` output
        start, end = index / 100, (index + 1) / 100
        if segments and start - segments[-1][1] < min_gap_s:
            segments[-1] = (segments[-1][0], end)
        else:
            segments.append((start, end))
    return segments


@dataclass(frozen=True)
class BenchFile:
    """A WAV, the utterances spoken in it, and where the voice really is when the manifest knows."""

    path: Path
    references: list[str]
    voice: list[tuple[float, float]] | None = None
    """(start, end) seconds of each utterance's voice; None: found from the signal's energy."""

    @property
    def name(self) -> str:
        return self.path.name

    def voice_spans(self, audio: Audio) -> list[tuple[float, float]]:
        return self.voice if self.voice is not None else speech_segments(audio)


def load_manifest(manifest: Path, split: str | None = None, category: str | None = None) -> list[BenchFile]:
    """The files of a manifest (their WAVs lie beside it), in one of two shapes.

    `{"file.wav": ["first command", "second"]}` (tests/fixtures/fixtures.json), or one command per
    file with its measured voice: `{"file.wav": {"text", "voice_start_s", "voice_end_s", "split",
    "category"}}` (tests/fixtures/turns/manifest.json), which `split` and `category` select from.
    """
    try:
        entries: dict[str, Any] = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the bench manifest {manifest}: {exc}") from None
    files = []
    for name, entry in entries.items():
        if isinstance(entry, list):
            if split is not None or category is not None:
                raise ValueError(f"{manifest} has no splits or categories to select from")
            files.append(BenchFile(manifest.parent / name, entry))
        elif (split is None or entry["split"] == split) and (category is None or entry["category"] == category):
            voice = [(float(entry["voice_start_s"]), float(entry["voice_end_s"]))]
            files.append(BenchFile(manifest.parent / name, [entry["text"]], voice))
    if not files:
        raise ValueError(_nothing_selected(manifest, entries, split, category))
    return files


def _nothing_selected(manifest: Path, entries: dict[str, Any], split: str | None, category: str | None) -> str:
    """Why no file was selected, naming what the manifest has (splits are added over time)."""
    if not entries:
        return f"{manifest} lists no files"
    for key, wanted in (("split", split), ("category", category)):
        known = list(dict.fromkeys(str(entry[key]) for entry in entries.values()))
        if wanted is not None and wanted not in known:
            return f"{manifest} has no {key} {wanted!r}; it has {', '.join(known)}"
    return f"{manifest} has no file of split {split!r} in category {category!r}"


@dataclass
class UtteranceTiming:
    file: str
    index: int
    text: str
    final_latency: float
    """Seconds from the true end of speech to the final's arrival."""
    first_partial_latency: float | None
    endpoint: str | None
    """Why the utterance ended (the final's `endpoint`; None over OpenAI Realtime, which does not say)."""


@dataclass
class BenchReport:
    clients: int
    utterances: int
    missing_finals: int
    cut_utterances: int
    """Utterances answered before their voice ended, or split into more finals than were spoken."""
    silence_ms: int
    final_latency_p50: float
    final_latency_p95: float
    first_partial_p50: float | None
    first_partial_p95: float | None
    frame_seconds_p50: float
    frame_seconds_p95: float
    cpu_seconds_per_audio_second: float | None
    wer_vs_reference: float
    wer_vs_offline: float
    details: list[UtteranceTiming] = field(default_factory=list)

    def summary(self) -> str:
        def ms(value: float | None) -> str:
            return "n/a" if value is None else f"{value * 1000:.0f} ms"

        cpu = self.cpu_seconds_per_audio_second
        return "\n".join(
            [
                f"clients {self.clients}, utterances {self.utterances} (missing finals: {self.missing_finals},"
                f" cut or split: {self.cut_utterances})",
                f"speech end -> final      p50 {ms(self.final_latency_p50)}  p95 {ms(self.final_latency_p95)}"
                f"  (silence_ms {self.silence_ms})",
                f"finals ended by          {self.endpoint_counts()}",
                f"speech start -> partial  p50 {ms(self.first_partial_p50)}  p95 {ms(self.first_partial_p95)}",
                f"server time per frame    p50 <= {ms(self.frame_seconds_p50)}  p95 <= {ms(self.frame_seconds_p95)}"
                f"  ({FRAME_SECONDS * 1000:.0f} ms frames)",
                f"CPU s per stream s       {'n/a (remote daemon)' if cpu is None else f'{cpu:.3f}'}",
                f"WER vs reference {self.wer_vs_reference * 100:.1f}%   vs offline transcribe"
                f" {self.wer_vs_offline * 100:.1f}%",
            ]
        )

    def endpoint_counts(self) -> str:
        """How many finals each endpoint reason ended (`complete`: at the short silence)."""
        counts = Counter(detail.endpoint for detail in self.details if detail.endpoint is not None)
        if not counts:
            return "n/a (the protocol does not say)"
        return ", ".join(f"{reason} {counts[reason]}" for reason in ENDPOINT_REASONS)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def histogram_quantile(metrics_text: str, name: str, q: float) -> float:
    """Upper bound of the bucket holding quantile `q` of a Prometheus histogram in exposition text."""
    buckets = [
        (float(le), float(count))
        for le, count in re.findall(rf'^{name}_bucket{{[^}}]*le="([^"]+)"[^}}]*}} (\S+)$', metrics_text, re.M)
    ]
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    total = buckets[-1][1]
    return next(le for le, count in buckets if count >= q * total)


def key_headers(settings: Settings) -> dict[str, str]:
    """What every bench client sends: the `api_key` setting, for the in-process daemon that requires
    it or the one at `--url`."""
    key = load_api_key(settings)
    return {"Authorization": f"Bearer {key}"} if key else {}


async def stream_at_pace(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """Stream float32 16 kHz audio at real-time pace; (wall time of sample 0, [(arrival, message)])."""
    import websockets

    await asyncio.sleep(delay)
    received: list[tuple[float, dict[str, Any]]] = []
    step = int(FRAME_SECONDS * SAMPLE_RATE)
    async with websockets.connect(url, max_size=1 << 20, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "config", **config}))

        async def receive() -> None:
            async for raw in ws:
                received.append((time.monotonic(), json.loads(raw)))

        receiver = asyncio.create_task(receive())
        origin = time.monotonic()
        for index, offset in enumerate(range(0, audio.size, step)):
            await asyncio.sleep(max(0.0, origin + (index + 1) * FRAME_SECONDS - time.monotonic()))
            await ws.send(audio[offset : offset + step].astype("<f4").tobytes())
        await ws.send(json.dumps({"type": "end"}))
        await receiver
    return origin, received


async def _stream_one_realtime(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over OpenAI Realtime: 24 kHz pcm16 appends at real-time pace, the session's default
    turn detection (the daemon's own), the connection closed once every speech segment has its
    `completed` (or 10 s after the audio). Events come back in the WebSocket shapes `_timings`
    reads: a transcription delta as a `partial`, `completed` as a `final`."""
    import soxr
    import websockets

    await asyncio.sleep(delay)
    received: list[tuple[float, dict[str, Any]]] = []
    pcm = to_pcm16(soxr.resample(audio, SAMPLE_RATE, 24000)).tobytes()
    step = int(FRAME_SECONDS * 24000) * 2
    expected = len(speech_segments(audio))
    all_final = asyncio.Event()
    async with websockets.connect(url, max_size=None, additional_headers=headers) as ws:
        if config:
            await ws.send(json.dumps({"type": "session.update", "session": config}))

        async def receive() -> None:
            async for raw in ws:
                event = json.loads(raw)
                arrival, kind = time.monotonic(), event["type"]
                if kind == "conversation.item.input_audio_transcription.delta":
                    received.append((arrival, {"type": "partial", "utterance_id": event["item_id"]}))
                elif kind == "conversation.item.input_audio_transcription.completed":
                    final = {"type": "final", "utterance_id": event["item_id"], "text": event["transcript"]}
                    received.append((arrival, final))
                    if sum(m["type"] == "final" for _, m in received) >= expected:
                        all_final.set()

        receiver = asyncio.create_task(receive())
        origin = time.monotonic()
        for index, offset in enumerate(range(0, len(pcm), step)):
            await asyncio.sleep(max(0.0, origin + (index + 1) * FRAME_SECONDS - time.monotonic()))
            chunk = base64.b64encode(pcm[offset : offset + step]).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_final.wait(), 10.0)
        receiver.cancel()
    return origin, received


CLOSE_STREAM = json.dumps({"type": "CloseStream"})
"""How a client ends a stream of Deepgram's APIs."""


async def _stream_one_deepgram(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Deepgram's live API, with interim results. Results come back in the WebSocket
    shapes `_timings` reads: an interim as a `partial` of the utterance whose final comes next
    (Deepgram's results name no utterance), a final (an `is_final` one with text) as a `final`."""
    finals = 0

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal finals
        if message["type"] != "Results":
            return None
        text = message["channel"]["alternatives"][0]["transcript"]
        if message["is_final"]:  # an empty one (heard no words) still ends its utterance's interims
            finals += 1
            return {"type": "final", "utterance_id": finals - 1, "text": text} if text else None
        return {"type": "partial", "utterance_id": finals} if text else None

    query = f"{url}?encoding=linear16&sample_rate={SAMPLE_RATE}&interim_results=true"
    return await _stream_pcm16(query, audio, delay, headers, translate, CLOSE_STREAM)


async def _stream_one_flux(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Deepgram's Flux. Turn events come back in the WebSocket shapes `_timings`
    reads: `StartOfTurn` and `Update` as a `partial` of their turn, `EndOfTurn` as its `final`."""

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        if message["type"] != "TurnInfo":
            return None
        if message["event"] == "EndOfTurn":
            return {"type": "final", "utterance_id": message["turn_index"], "text": message["transcript"]}
        return {"type": "partial", "utterance_id": message["turn_index"]}

    query = f"{url}?model=flux-general-en&encoding=linear16&sample_rate={SAMPLE_RATE}"
    return await _stream_pcm16(query, audio, delay, headers, translate, CLOSE_STREAM)


async def _stream_one_assemblyai(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over AssemblyAI's Universal-Streaming. Turns come back in the WebSocket shapes
    `_timings` reads: a partial `Turn` as a `partial` of its turn, a final one (with text) as its `final`."""

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        if message["type"] != "Turn":
            return None
        if message["end_of_turn"]:
            text = message["transcript"]
            return {"type": "final", "utterance_id": message["turn_order"], "text": text} if text else None
        return {"type": "partial", "utterance_id": message["turn_order"]}

    query = f"{url}?encoding=pcm_s16le&sample_rate={SAMPLE_RATE}&format_turns=true"
    return await _stream_pcm16(query, audio, delay, headers, translate, json.dumps({"type": "Terminate"}))


async def _stream_one_elevenlabs(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over ElevenLabs' realtime API, the audio in its JSON chunks and a commit at the end.
    No message ends that API's stream: the connection is closed once every speech segment has its
    commit (or 10 s after the audio), as over OpenAI Realtime. Transcripts come back in the
    WebSocket shapes `_timings` reads: a partial as a `partial` of the utterance whose commit comes
    next (the API names no utterance), a commit with text as a `final`. An empty commit after a
    partial ends an utterance too (one in which no words were heard at last), so that its partials
    are not taken for the next one's."""
    utterance, heard = 0, False

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal utterance, heard
        kind, text = message["message_type"], message.get("text")
        if kind == "partial_transcript":
            heard = True
            return {"type": "partial", "utterance_id": utterance}
        if kind != "committed_transcript" or not (text or heard):  # an empty commit answering the client's
            return None
        ended, utterance, heard = utterance, utterance + 1, False
        return {"type": "final", "utterance_id": ended, "text": text} if text else None

    def chunk(pcm: bytes, commit: bool = False) -> str:
        encoded = base64.b64encode(pcm).decode()
        return json.dumps({"message_type": "input_audio_chunk", "audio_base_64": encoded, "commit": commit})

    query = f"{url}?model_id=scribe_v2_realtime&audio_format=pcm_{SAMPLE_RATE}&commit_strategy=vad"
    expected = len(speech_segments(audio))
    return await _stream_pcm16(query, audio, delay, headers, translate, chunk(b"", commit=True), chunk, expected)


async def _stream_one_cartesia(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Cartesia's streaming API, ended by `done` (the server closes after its `done`).
    Transcripts come back in the WebSocket shapes `_timings` reads: a partial as a `partial` of the
    utterance whose final comes next (the API names no utterance), a final with text as a `final`;
    an empty final after a partial (no words heard at last) ends its utterance too, so that its
    partials are not taken for the next one's."""
    utterance, heard = 0, False

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal utterance, heard
        if message["type"] != "transcript" or not (message["text"].strip() or (message["is_final"] and heard)):
            return None
        if not message["is_final"]:
            heard = True
            return {"type": "partial", "utterance_id": utterance}
        ended, utterance, heard = utterance, utterance + 1, False
        text = message["text"].strip()
        return {"type": "final", "utterance_id": ended, "text": text} if text else None

    query = f"{url}?model=ink-whisper&encoding=pcm_s16le&sample_rate={SAMPLE_RATE}"
    return await _stream_pcm16(query, audio, delay, headers, translate, "done")


async def _stream_one_soniox(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Soniox's real-time API: its configuration first (endpoint detection on), the
    audio as binary messages, the empty message at the end. Tokens come back in the WebSocket shapes
    `_timings` reads: non-final ones as a `partial` of the utterance whose `<end>` comes next (the API
    names no utterance), the final ones up to an `<end>` (with text) as its `final`; a message that
    holds both counts as the final (the next utterance's partial is timed from its next message). An error is the
    stream's refusal (`StreamRefused`): Soniox refuses in the stream, a missing key too."""
    utterance, said = 0, ""

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal utterance, said
        if "error_code" in message:
            code = message["error_code"]
            raise StreamRefused(f"the daemon ended the stream with error {code}: {message['error_message']}", code)
        translated = None
        for token in message["tokens"]:
            if not token["is_final"]:
                translated = translated or {"type": "partial", "utterance_id": utterance}
            elif token["text"] == "<end>":
                ended, utterance, text, said = utterance, utterance + 1, said.strip(), ""
                translated = {"type": "final", "utterance_id": ended, "text": text} if text else None
            else:
                said += token["text"]
        return translated

    settings = {"model": "stt-rt-v5", "audio_format": "pcm_s16le", "sample_rate": SAMPLE_RATE, "num_channels": 1}
    opening = json.dumps({**settings, "enable_endpoint_detection": True})
    return await _stream_pcm16(url, audio, delay, headers, translate, b"", first=opening)


async def _stream_one_speechmatics(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Speechmatics' real-time API: `StartRecognition` first (partials on), the audio
    as binary messages, `EndOfStream` at the end. `AddPartialTranscript` is a `partial` and
    `AddTranscript` (with text) the `final` of the utterance in progress (the API names none); an
    `Error` is the stream's refusal (`StreamRefused`)."""
    utterance = 0

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal utterance
        kind = message["message"]
        if kind == "Error":
            raise StreamRefused(f"the daemon ended the stream with error {message['type']}: {message['reason']}")
        if kind == "AddPartialTranscript":
            return {"type": "partial", "utterance_id": utterance}
        text = message["metadata"]["transcript"].strip() if kind == "AddTranscript" else ""
        if not text:
            return None
        utterance += 1
        return {"type": "final", "utterance_id": utterance - 1, "text": text}

    audio_format = {"type": "raw", "encoding": "pcm_s16le", "sample_rate": SAMPLE_RATE}
    start = {"message": "StartRecognition", "audio_format": audio_format}
    opening = json.dumps({**start, "transcription_config": {"language": "en", "enable_partials": True}})
    end = json.dumps({"message": "EndOfStream", "last_seq_no": 0})
    return await _stream_pcm16(url, audio, delay, headers, translate, end, first=opening)


async def _stream_one_gladia(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Gladia's live API: the session's settings posted first (partials on, nothing
    the bench does not read), then the audio as binary messages to the WebSocket URL the answer
    gives, `stop_recording` at the end. Transcripts name their utterance: a partial is a `partial`
    of it, a final with text its `final`. A refused POST, or an `error` on the stream, is the
    stream's refusal (`StreamRefused`)."""
    import aiohttp

    await asyncio.sleep(delay)
    messages = {
        "receive_partial_transcripts": True,
        "receive_speech_events": False,
        "receive_acknowledgments": False,
        "receive_post_processing_events": False,
    }
    body = {"encoding": "wav/pcm", "bit_depth": 16, "sample_rate": SAMPLE_RATE, "channels": 1}
    post_url = "http" + url.removeprefix("ws")  # ws:// -> http://, wss:// -> https://
    async with (
        aiohttp.ClientSession() as http,
        http.post(post_url, json={**body, "messages_config": messages}, headers=headers) as answer,
    ):
        if answer.status != 201:
            raise StreamRefused(refusal(answer.status, await answer.read(), "session"), answer.status)
        session_url = (await answer.json())["url"]

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        if message["type"] == "error":
            data = message["data"]
            raise StreamRefused(f"the daemon ended the stream with error {data['code']}: {data['message']}")
        if message["type"] != "transcript":
            return None
        data = message["data"]
        if not data["is_final"]:
            return {"type": "partial", "utterance_id": data["id"]}
        return {"type": "final", "utterance_id": data["id"], "text": data["utterance"]["text"]}

    return await _stream_pcm16(session_url, audio, 0.0, {}, translate, json.dumps({"type": "stop_recording"}))


async def _stream_one_mistral(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Mistral's realtime API: the model in the URL, the audio as base64
    `input_audio.append` messages, `input_audio.end` at the end. A delta is a `partial` and a
    `transcription.segment` (each utterance the daemon's endpointing ends) the `final` of the
    utterance in progress (the API names none): the bench times the daemon's finals, not a client's
    flush; an `error` is the stream's refusal (`StreamRefused`)."""
    utterance = 0

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal utterance
        kind = message["type"]
        if kind == "error":
            error = message["error"]
            raise StreamRefused(f"the daemon sent error {error['code']}: {error['message']}", error["code"])
        if kind == "transcription.text.delta":
            return {"type": "partial", "utterance_id": utterance}
        if kind != "transcription.segment":
            return None
        utterance += 1
        return {"type": "final", "utterance_id": utterance - 1, "text": message["text"]}

    def append(chunk: bytes) -> str:
        return json.dumps({"type": "input_audio.append", "audio": base64.b64encode(chunk).decode()})

    query = f"{url}?model=voxtral-mini-transcribe-realtime-2602"
    return await _stream_pcm16(query, audio, delay, headers, translate, json.dumps({"type": "input_audio.end"}), append)


async def _stream_one_gradium(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Gradium's real-time API: the `setup` first (16 kHz PCM), the audio as base64
    `audio` messages, `end_of_stream` at the end. A `text` is a `partial` of the utterance in
    progress and its `end_text` (each utterance the daemon's endpointing ends) the utterance's
    `final`, its words joined (the API names no utterance); an `error` is the stream's refusal
    (`StreamRefused`)."""
    utterance, words = 0, []

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal utterance
        kind = message["type"]
        if kind == "error":
            raise StreamRefused(f"the daemon sent error {message['code']}: {message['message']}")
        if kind == "text":
            words.append(message["text"])
            return {"type": "partial", "utterance_id": utterance}
        if kind != "end_text":
            return None
        utterance += 1
        text = " ".join(words)
        words.clear()
        return {"type": "final", "utterance_id": utterance - 1, "text": text}

    def append(chunk: bytes) -> str:
        return json.dumps({"type": "audio", "audio": base64.b64encode(chunk).decode()})

    setup = json.dumps({"type": "setup", "model_name": "default", "input_format": f"pcm_{SAMPLE_RATE}"})
    end = json.dumps({"type": "end_of_stream"})
    return await _stream_pcm16(url, audio, delay, headers, translate, end, append, first=setup)


async def _stream_one_meta(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Meta's real-time API: the handshake first (16 kHz PCM, ENDPOINTING, cumulative
    partials; the key, if any, goes in the request's headers, which the daemon takes there too), the
    audio as binary messages, `endStream` at the end. A `transcript` is a `partial` of its turn, a
    `speechComplete` with text the turn's `final`; an `error` is the stream's refusal (`StreamRefused`):
    Meta refuses in the stream, a missing key too."""

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        kind = message.get("type")
        if kind == "error":
            status = 401 if message["code"] in ("missing_api_key", "invalid_api_key") else None
            raise StreamRefused(f"the daemon sent error {message['code']}: {message['message']}", status)
        if kind == "transcript":
            return {"type": "partial", "utterance_id": message["turnId"]}
        if kind == "speechComplete" and message["transcript"]:
            return {"type": "final", "utterance_id": message["turnId"], "text": message["transcript"]}
        return None

    handshake = {"audioEncoding": "PCM_16KHZ", "model": "muse-voice-transcribe-1.0", "mode": "ENDPOINTING"}
    end = json.dumps({"type": "endStream"})
    return await _stream_pcm16(url, audio, delay, headers, translate, end, first=json.dumps(handshake))


async def _stream_one_smallest(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Smallest AI's Pulse API, as Pipecat's service connects: an interim
    `transcription` is a `partial` of the utterance whose final comes next (the API names none), a
    final with text its `final` (an empty one still ends its utterance), the `is_last` one after
    `close_stream` nothing; an `error` is the stream's refusal (`StreamRefused`)."""
    finals = 0

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal finals
        if message["type"] == "error":
            raise StreamRefused(f"the daemon sent error {message['status']}: {message['message']}", message["status"])
        if message["type"] != "transcription" or message["is_last"]:
            return None
        text = message["transcript"]
        if message["is_final"]:
            finals += 1
            return {"type": "final", "utterance_id": finals - 1, "text": text} if text else None
        return {"type": "partial", "utterance_id": finals} if text else None

    query = f"{url}?model=pulse&language=en&encoding=linear16&sample_rate={SAMPLE_RATE}"
    return await _stream_pcm16(query, audio, delay, headers, translate, json.dumps({"type": "close_stream"}))


async def _stream_one_xai(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over xAI's real-time API, with interim results: audio as binary frames, `audio.done`
    at the end. A `transcript.partial` not final is a `partial` and a final one (`speech_final`, each
    utterance the daemon's endpointing ends) the `final` of the utterance in progress (the API names
    none), as is `transcript.done`'s text; an `error` is the stream's refusal (`StreamRefused`)."""
    utterance = 0

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal utterance
        kind = message["type"]
        if kind == "error":
            raise StreamRefused(f"the daemon sent error {message['code']}: {message['message']}")
        if kind == "transcript.partial" and not message["is_final"]:
            return {"type": "partial", "utterance_id": utterance}
        if kind not in ("transcript.partial", "transcript.done") or not message["text"]:
            return None
        utterance += 1
        return {"type": "final", "utterance_id": utterance - 1, "text": message["text"]}

    query = f"{url}?encoding=pcm&sample_rate={SAMPLE_RATE}&interim_results=true"
    return await _stream_pcm16(query, audio, delay, headers, translate, json.dumps({"type": "audio.done"}))


async def _stream_one_zoom(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Zoom's Scribe Live, as Pipecat's service streams: `session.update` first, the
    audio as binary frames, `session.close` at the end. Each `transcription.completed` (with text) is
    the `final` of the utterance in progress (the API names none, and sends no partials); an `error`
    is the stream's refusal (`StreamRefused`)."""
    utterance = 0

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal utterance
        kind = message["type"]
        if kind == "error":
            error = message["error"]
            raise StreamRefused(f"the daemon sent error {error['code']}: {error['message']}")
        if kind != "transcription.completed" or not message["transcript"]:
            return None
        utterance += 1
        return {"type": "final", "utterance_id": utterance - 1, "text": message["transcript"]}

    update = json.dumps({"type": "session.update", "language": "en-US", "audio": {"format": "pcm16"}})
    close = json.dumps({"type": "session.close"})
    return await _stream_pcm16(url, audio, delay, headers, translate, close, first=update)


async def _stream_one_sarvam(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Sarvam AI's streaming API, as LiveKit's plugin streams: each 100 ms a base64
    audio message, `end_of_stream` at the end. Each `data` (with text) is the `final` of the
    utterance in progress (the API names none, and sends no partials); an `error` is the stream's
    refusal (`StreamRefused`)."""
    utterance = 0

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal utterance
        data = message["data"]
        if message["type"] == "error":
            raise StreamRefused(f"the daemon sent error {data['code']}: {data['error']}")
        if message["type"] != "data" or not data["transcript"]:
            return None
        utterance += 1
        return {"type": "final", "utterance_id": utterance - 1, "text": data["transcript"]}

    def audio_message(chunk: bytes) -> str:
        encoded = base64.b64encode(chunk).decode()
        return json.dumps({"audio": {"data": encoded, "sample_rate": SAMPLE_RATE, "encoding": "audio/wav"}})

    query = f"{url}?language-code=en-IN&sample_rate={SAMPLE_RATE}&input_audio_codec=pcm_s16le"
    end = json.dumps({"type": "end_of_stream"})
    return await _stream_pcm16(query, audio, delay, headers, translate, end, audio_message)


async def _stream_one_sarvam_realtime(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Sarvam AI's realtime API, as Pipecat's `SarvamRealtimeSTTService` streams
    (`endpointing=vad`): each 100 ms an `audio_input`, `end` at the end. A `transcript.partial` is a
    `partial` and a `transcript.final` with text the `final` of its `utterance_idx`; an `error` is the
    stream's refusal (`StreamRefused`)."""

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        kind = message["event"]
        if kind == "error":
            raise StreamRefused(f"the daemon sent error {message['code']}: {message['message']}")
        if kind == "transcript.partial":
            return {"type": "partial", "utterance_id": message["utterance_idx"]}
        if kind != "transcript.final" or not message["text"]:
            return None
        return {"type": "final", "utterance_id": message["utterance_idx"], "text": message["text"]}

    def audio_message(chunk: bytes) -> str:
        return json.dumps({"event": "audio_input", "audio": base64.b64encode(chunk).decode()})

    query = f"{url}?language_code=en-IN&sample_rate={SAMPLE_RATE}&encoding=linear16&endpointing=vad"
    return await _stream_pcm16(query, audio, delay, headers, translate, json.dumps({"event": "end"}), audio_message)


async def _stream_one_fireworks(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Fireworks AI's streaming API, as LiveKit's plugin streams: the settings in the
    query, audio as binary frames, the checkpoint `final` at the end. A transcription names its
    segment: one whose words are all final (and with text) is that segment's `final`, any other a
    `partial` of it; an `error` is the stream's refusal (`StreamRefused`)."""

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        if "error" in message:
            error = message["error"]
            raise StreamRefused(f"the daemon sent error {error['code']}: {error['message']}")
        if message.get("task") != "transcribe" or not message["text"]:
            return None
        segment = message["segments"][0]["id"]
        if all(word["is_final"] for word in message["words"]):
            return {"type": "final", "utterance_id": segment, "text": message["text"]}
        return {"type": "partial", "utterance_id": segment}

    query = f"{url}?language=en&response_format=verbose_json&text_timeout_seconds=1.0"
    return await _stream_pcm16(query, audio, delay, headers, translate, json.dumps({"checkpoint_id": "final"}))


async def _stream_one_baseten(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Baseten's streaming API, as LiveKit's plugin (its whisper model) streams: the
    metadata first (partials on), audio as binary frames, `terminate_session` at the end. A
    `transcription` not final is a `partial` and a final one with text the `final` of the utterance
    in progress (the API names none); an `error` is the stream's refusal (`StreamRefused`)."""
    utterance = 0

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal utterance
        if message["type"] == "error":
            raise StreamRefused(f"the daemon sent error {message['code']}: {message['message']}")
        if message["type"] != "transcription" or not message["transcript"]:
            return None
        if not message["is_final"]:
            return {"type": "partial", "utterance_id": utterance}
        utterance += 1
        return {"type": "final", "utterance_id": utterance - 1, "text": message["transcript"]}

    metadata = {
        "whisper_params": {"audio_language": "en"},
        "streaming_params": {"encoding": "pcm_s16le", "sample_rate": SAMPLE_RATE, "enable_partial_transcripts": True},
    }
    end = json.dumps({"terminate_session": True})
    return await _stream_pcm16(url, audio, delay, headers, translate, end, first=json.dumps(metadata))


async def _stream_one_simplismart(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Simplismart's streaming API, as LiveKit's plugin streams: its configuration
    first, audio as binary frames. Each binary frame is the text of the `final` of the utterance in
    progress (no partials); a text message is an error, the stream's refusal (`StreamRefused`). No
    message ends the stream: an empty frame marks the end of the audio, and the client closes 10 s
    after it, by which the last final has come."""
    utterance = 0

    def parse(raw: str | bytes) -> dict[str, Any]:
        return {"type": "text", "text": raw.decode()} if isinstance(raw, bytes) else json.loads(raw)

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal utterance
        if message["type"] == "error":
            raise StreamRefused(f"the daemon sent error {message['code']}: {message['message']}")
        utterance += 1
        return {"type": "final", "utterance_id": utterance - 1, "text": message["text"]}

    first = json.dumps({"language": "en"})
    return await _stream_pcm16(url, audio, delay, headers, translate, b"", finals=sys.maxsize, first=first, parse=parse)


def wav_header(rate: int = SAMPLE_RATE, channels: int = 1, tag: int = 1, bits: int = 16) -> bytes:
    """A streaming WAV header (format `tag`, 1 for PCM), its sizes unknown and so the largest, as
    LiveKit's Telnyx plugin sends it alone before its audio."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    unknown = struct.pack("<I", 0x7FFFFFFF)
    return b"RIFF" + unknown + b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + unknown


async def _stream_one_telnyx(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Telnyx's speech-to-text WebSocket, as LiveKit's plugin streams: a WAV header
    first, then the audio as binary frames. A transcript not final is a `partial` and a final one
    with text the `final` of the utterance in progress (the API names none); an `error` is the
    stream's refusal (`StreamRefused`). No message ends the stream: the client closes 10 s after its
    last audio (an empty frame), by which the last final has come."""
    utterance = 0

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal utterance
        if message["type"] == "error":
            raise StreamRefused(f"the daemon sent error {message['code']}: {message['error']}")
        if message["type"] != "transcript" or not message["transcript"]:
            return None
        if not message["is_final"]:
            return {"type": "partial", "utterance_id": utterance}
        utterance += 1
        return {"type": "final", "utterance_id": utterance - 1, "text": message["transcript"]}

    query = f"{url}?transcription_engine=telnyx&language=en&input_format=wav"
    first = wav_header()
    return await _stream_pcm16(query, audio, delay, headers, translate, b"", finals=sys.maxsize, first=first)


async def _stream_one_inworld(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Inworld's streaming API, as LiveKit's plugin streams: `transcribeConfig` first,
    the audio as base64 `audioChunk`s, `closeStream` at the end. A `transcription` not final is a
    `partial` and a final one with text the `final` of the utterance in progress (the API names none);
    an `error` is the stream's refusal (`StreamRefused`)."""
    utterance = 0

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal utterance
        if "error" in message:
            error = message["error"]
            raise StreamRefused(f"the daemon sent error {error['details'][0]['reason']}: {error['message']}")
        transcription = message["result"].get("transcription")
        if transcription is None or not transcription["transcript"]:
            return None
        if not transcription["isFinal"]:
            return {"type": "partial", "utterance_id": utterance}
        utterance += 1
        return {"type": "final", "utterance_id": utterance - 1, "text": transcription["transcript"]}

    def audio_chunk(chunk: bytes) -> str:
        return json.dumps({"audioChunk": {"content": base64.b64encode(chunk).decode()}})

    config_message = {
        "transcribeConfig": {
            "modelId": "inworld/inworld-stt-1",
            "audioEncoding": "LINEAR16",
            "sampleRateHertz": SAMPLE_RATE,
            "numberOfChannels": 1,
            "language": "en-US",
        }
    }
    end = json.dumps({"closeStream": {}})
    return await _stream_pcm16(
        url, audio, delay, headers, translate, end, audio_chunk, first=json.dumps(config_message)
    )


async def _stream_one_azure(
    url: str, audio: Audio, delay: float, config: dict[str, Any], headers: dict[str, str]
) -> tuple[float, list[Any]]:
    """The same over Azure AI Speech's real-time protocol (USP, continuous recognition): each 100 ms
    an audio message (no WAV header: 16 kHz 16-bit PCM), an empty one at the end. `speech.hypothesis`
    is a `partial` and `speech.phrase` (with text) the `final` of the utterance in progress (USP names
    none); at `turn.end` the client closes, as the SDK does when done (the daemon keeps the
    connection for a next turn). USP refuses with the Close alone: a Close other than 1000 is the
    stream's refusal (`StreamRefused`)."""
    import websockets

    utterance, request = 0, uuid.uuid4().hex

    def translate(message: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal utterance
        if message["Path"] == "turn.end":
            return STREAM_OVER
        if message["Path"] == "speech.hypothesis":
            return {"type": "partial", "utterance_id": utterance}
        text = message.get("DisplayText", "").strip() if message["Path"] == "speech.phrase" else ""
        if not text:
            return None
        utterance += 1
        return {"type": "final", "utterance_id": utterance - 1, "text": text}

    def audio_message(chunk: bytes) -> bytes:
        head = f"Path:audio\r\nX-RequestId:{request}\r\nContent-Type:audio/x-wav\r\n".encode()
        return len(head).to_bytes(2, "big") + head + chunk

    try:
        return await _stream_pcm16(url, audio, delay, headers, translate, audio_message(b""), audio_message, parse=usp)
    except websockets.ConnectionClosedError as exc:
        if exc.rcvd is None:
            raise
        raise StreamRefused(f"the daemon ended the stream with Close {exc.rcvd.code}: {exc.rcvd.reason}") from None


def usp(raw: str | bytes) -> dict[str, Any]:
    """A USP text message as one object: its `Path` header beside its JSON body's fields."""
    head, _, body = str(raw).partition("\r\n\r\n")
    path = next(line.split(":", 1)[1] for line in head.split("\r\n") if line.lower().startswith("path:"))
    return {"Path": path, **json.loads(body)}


STREAM_OVER = {"type": "over"}
"""What a `translate` gives for the server's last message of a stream that the client closes
(USP's `turn.end`: the server keeps the connection for the client's next turn)."""


async def _stream_pcm16(
    url: str,
    audio: Audio,
    delay: float,
    headers: dict[str, str],
    translate: Callable[[dict[str, Any]], dict[str, Any] | None],
    end: str | bytes,
    frame: Callable[[bytes], str | bytes] = bytes,
    finals: int | None = None,
    first: str | bytes | None = None,
    parse: Callable[[str | bytes], dict[str, Any]] = json.loads,
) -> tuple[float, list[Any]]:
    """16 kHz 16-bit PCM at real-time pace to one of the hosted APIs (`url` with its query), after
    its `first` message if it takes its settings there (Soniox's, Speechmatics'), each 100 ms as `frame` makes it a
    message, then its `end` message; each message the server sends, read by `parse`, as `translate` makes it (None:
    left out), until the server closes, or with `finals` until that many finals came (or 10 s after
    `end`)."""
    import websockets

    await asyncio.sleep(delay)
    received: list[tuple[float, dict[str, Any]]] = []
    pcm = to_pcm16(audio).tobytes()
    step = int(FRAME_SECONDS * SAMPLE_RATE) * 2
    all_final = asyncio.Event()
    async with websockets.connect(url, max_size=1 << 20, additional_headers=headers) as ws:

        async def receive() -> None:
            async for raw in ws:
                translated = translate(parse(raw))
                if translated == STREAM_OVER:
                    return  # the server's last message: the client closes, as the API's SDK does
                if translated is not None:
                    received.append((time.monotonic(), translated))
                    if finals is not None and sum(m["type"] == "final" for _, m in received) >= finals:
                        all_final.set()

        if first is not None:
            await ws.send(first)
        receiver = asyncio.create_task(receive())
        origin = time.monotonic()
        # the server ended the stream (a refusal, or USP's Close): its reason is the receiver's
        with contextlib.suppress(websockets.ConnectionClosed):
            for index, offset in enumerate(range(0, len(pcm), step)):
                await asyncio.sleep(max(0.0, origin + (index + 1) * FRAME_SECONDS - time.monotonic()))
                if receiver.done():
                    break
                await ws.send(frame(pcm[offset : offset + step]))
            else:
                await ws.send(end)
        if finals is None:
            await receiver
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_final.wait(), 10.0)
            receiver.cancel()
    return origin, received


Streamer = Callable[[str, Audio, float, dict[str, Any], dict[str, str]], Awaitable[tuple[float, list[Any]]]]
PROTOCOLS: dict[str, tuple[str, Streamer]] = {
    "websocket": ("/v1/stream", stream_at_pace),
    "openai-realtime": ("/v1/realtime", _stream_one_realtime),
    "deepgram": ("/v1/listen", _stream_one_deepgram),
    "deepgram-flux": ("/v2/listen", _stream_one_flux),
    "assemblyai": ("/v3/ws", _stream_one_assemblyai),
    "elevenlabs": ("/v1/speech-to-text/realtime", _stream_one_elevenlabs),
    "cartesia": ("/stt/websocket", _stream_one_cartesia),
    "soniox": ("/transcribe-websocket", _stream_one_soniox),
    "speechmatics": ("/v2", _stream_one_speechmatics),
    "gladia": ("/v2/live", _stream_one_gladia),
    "mistral": ("/v1/audio/transcriptions/realtime", _stream_one_mistral),
    "xai": ("/v1/stt", _stream_one_xai),
    "gradium": ("/api/speech/asr", _stream_one_gradium),
    "meta": ("/v1/asr/realtime", _stream_one_meta),
    "sarvam": ("/speech-to-text/ws", _stream_one_sarvam),
    "zoom": ("/v2/aiservices/scribe/live", _stream_one_zoom),
    "sarvam-realtime": ("/speech-to-text-realtime/ws", _stream_one_sarvam_realtime),
    "azure": ("/speech/recognition/conversation/cognitiveservices/v1", _stream_one_azure),
    "smallest": ("/waves/v1/stt/live", _stream_one_smallest),
    "baseten": ("/environments/production/websocket", _stream_one_baseten),
    "simplismart": ("/ws/audio", _stream_one_simplismart),
    "fireworks": ("/v1/audio/transcriptions/streaming", _stream_one_fireworks),
    "telnyx": ("/v2/speech-to-text/transcription", _stream_one_telnyx),
    "inworld": ("/stt/v1/transcribe:streamBidirectional", _stream_one_inworld),
}
"""Protocol name -> (path on the daemon, client that streams one file)."""


def _timings(
    file: BenchFile, audio: Audio, origin: float, received: list[Any]
) -> tuple[list[UtteranceTiming], int, int]:
    """The utterances' timings, how many finals are missing, and how many utterances were cut."""
    spans = file.voice_spans(audio)
    finals = [(t, m) for t, m in received if m["type"] == "final"]
    timings = []
    for index, ((start, end), (arrival, final)) in enumerate(zip(spans, finals, strict=False)):
        partials = [t for t, m in received if m["type"] == "partial" and m["utterance_id"] == final["utterance_id"]]
        first_partial = partials[0] - (origin + start) if partials else None
        latency = arrival - (origin + end)
        endpoint = final.get("endpoint")
        timings.append(UtteranceTiming(file.name, index, final["text"], latency, first_partial, endpoint))
    early = sum(t.final_latency < 0 for t in timings)
    return timings, max(0, len(spans) - len(finals)), early + max(0, len(finals) - len(spans))


@contextlib.asynccontextmanager
async def bench_daemon(settings: Settings, target: str | None) -> AsyncIterator[Daemon | None]:
    """An `in_process_daemon` from `settings`, or None when `target` (a URL, a Wyoming URI) names a
    running server to load. Only the bench's own clients use that daemon, so it listens on ports
    the kernel picks on loopback and advertises nothing, beside a daemon already serving."""
    if target is not None:
        yield None
        return
    from satellite_asr.server import in_process_daemon

    private = replace(settings, host="127.0.0.1", http_port=0, wyoming_uri="tcp://127.0.0.1:0", zeroconf=False)
    async with in_process_daemon(private) as daemon:
        yield daemon


async def run_bench(
    settings: Settings,
    files: list[BenchFile],
    *,
    clients: int,
    rounds: int,
    url: str | None,
    protocol: str = "websocket",
    flooders: int = 0,
) -> BenchReport:
    """Run the load over `protocol` (see `PROTOCOLS`); starts an in-process daemon from `settings`
    unless `url` names a running one."""
    import aiohttp

    if flooders and protocol != "websocket":
        raise ValueError("--flooders floods over the WebSocket protocol: use it with --protocol websocket")
    audios = {file.name: read_wav(file.path).to_16k_mono() for file in files}
    async with bench_daemon(settings, url) as daemon:
        if daemon is not None:
            url = f"ws://127.0.0.1:{daemon.http_port}{PROTOCOLS[protocol][0]}"
        assert url is not None
        headers = key_headers(settings)
        flooding = [asyncio.create_task(_flood(url, list(audios.values()), headers)) for _ in range(flooders)]
        try:
            cpu_before, audio_seconds = time.process_time(), 0.0
            jobs = []
            for client in range(clients):
                work = [files[(client + r) % len(files)] for r in range(rounds)]
                audio_seconds += sum(audios[f.name].size for f in work) / SAMPLE_RATE
                streamer = PROTOCOLS[protocol][1]
                jobs.append(_client_rounds(streamer, url, headers, work, audios, client * STAGGER_SECONDS))
            results = await asyncio.gather(*jobs)
            cpu = (time.process_time() - cpu_before) / audio_seconds if daemon is not None else None
            address = urlsplit(url)
            metrics_url = f"{'https' if address.scheme == 'wss' else 'http'}://{address.netloc}/metrics"
            async with aiohttp.ClientSession(headers=headers) as http, http.get(metrics_url) as r:
                metrics_text = await r.text()
        finally:
            for flooder in flooding:
                flooder.cancel()
            await asyncio.gather(*flooding, return_exceptions=True)
    timings = [t for client_timings, _, _ in results for t in client_timings]
    missing = sum(m for _, m, _ in results)
    cut = sum(c for _, _, c in results)

    async with OfflineTranscriber(settings) as offline:
        offline_texts = {file.name: [f.text for f in await offline.transcribe(file.path)] for file in files}

    def wer(expected: dict[str, list[str]]) -> float:
        pairs = [(expected[t.file][t.index], t.text) for t in timings if t.index < len(expected.get(t.file, []))]
        return word_error_rate(pairs)

    final_latencies = [t.final_latency for t in timings]
    partial_latencies = [t.first_partial_latency for t in timings if t.first_partial_latency is not None]
    return BenchReport(
        clients=clients,
        utterances=len(timings),
        missing_finals=missing,
        cut_utterances=cut,
        silence_ms=settings.silence_ms,
        final_latency_p50=statistics.median(final_latencies) if final_latencies else float("nan"),
        final_latency_p95=percentile(final_latencies, 95),
        first_partial_p50=statistics.median(partial_latencies) if partial_latencies else None,
        first_partial_p95=percentile(partial_latencies, 95) if partial_latencies else None,
        frame_seconds_p50=histogram_quantile(metrics_text, "satellite_asr_frame_seconds", 0.5),
        frame_seconds_p95=histogram_quantile(metrics_text, "satellite_asr_frame_seconds", 0.95),
        cpu_seconds_per_audio_second=cpu,
        wer_vs_reference=wer({file.name: file.references for file in files}),
        wer_vs_offline=wer(offline_texts),
        details=timings,
    )


async def _flood(url: str, audios: list[Audio], headers: dict[str, str]) -> None:
    """Send every file at once in 1 s frames, then `end`, read everything; again until cancelled."""
    import websockets

    everything = np.concatenate(audios)
    while True:
        async with websockets.connect(url, max_size=1 << 20, additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "config", "partials": False}))
            for offset in range(0, everything.size, SAMPLE_RATE):
                await ws.send(everything[offset : offset + SAMPLE_RATE].astype("<f4").tobytes())
            await ws.send(json.dumps({"type": "end"}))
            async for _ in ws:
                pass


async def _client_rounds(
    stream_one: Streamer,
    url: str,
    headers: dict[str, str],
    files: list[BenchFile],
    audios: dict[str, Audio],
    delay: float,
) -> tuple[list[UtteranceTiming], int, int]:
    timings: list[UtteranceTiming] = []
    missing = cut = 0
    for round_index, file in enumerate(files):
        audio = audios[file.name]
        origin, received = await stream_one(url, audio, delay if round_index == 0 else 0.0, {}, headers)
        file_timings, file_missing, file_cut = _timings(file, audio, origin, received)
        timings.extend(file_timings)
        missing += file_missing
        cut += file_cut
    return timings, missing, cut
