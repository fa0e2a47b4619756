"""Audio files people upload (wav, flac, mp3, ogg/opus, webm, m4a, ...) decoded to the daemon's format.

PyAV (FFmpeg, a faster-whisper dependency) reads the container from memory and resamples the first
audio stream to 16 kHz mono float32. Decoding yields chunks as it goes, so a long file never exists
twice in memory, and runs in a worker thread, so the event loop keeps serving live streams.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Generator, Iterator
from concurrent.futures import Executor

import av
import av.container
import numpy as np

from satellite_asr.audio import SAMPLE_RATE, Audio

log = logging.getLogger(__name__)

NOTHING_BEYOND_THE_UPLOAD = {"protocol_whitelist": "none"}
"""FFmpeg options under which an upload opens nothing but itself. Playlist formats (ffconcat, HLS,
DASH) name other files and URLs, which FFmpeg would otherwise read from the daemon's own disk or
network; no protocol is called "none", so each such open is refused and the upload is not audio."""

RAW_DEMUXERS = {"s16le": "s16le", "f32le": "f32le", "pcmu": "mulaw", "pcma": "alaw"}
"""FFmpeg's raw demuxer for each of the daemon's PCM encodings (`audio.ENCODINGS`)."""

CHUNK_SECONDS = 0.5
"""Audio handed on per chunk: small enough that the shared VAD interleaves it with live frames."""

MIN_SAMPLE_RATE = 4000
"""Lowest sample rate accepted: half the telephone's 8 kHz, the lowest rate speech is recorded at
(a few old formats go down to 5.5 kHz). Below it no speech is left to transcribe, and resampling
to 16 kHz would make each decoded sample into many (a 4 Hz WAV header: 4000 per sample)."""

RESAMPLE_STEP_SAMPLES = 1 << 14
"""Most of a frame's samples resampled in one step: FFmpeg hands over frames as large as the file
says (a WAV's block_align can make one 60,000 samples), and a frame is resampled in pieces of this
many, so one step makes at most 16 kHz / `MIN_SAMPLE_RATE` times as many samples (4 s of audio)."""

MAX_BAD_PACKETS_IN_A_ROW = 100
"""Packets in a row that do not decode before the file is refused. A damaged stretch (2 KB of noise
over an MP3) costs a few; skipping on without limit made a 24 MB ADTS file of 9-byte bad packets
hold a worker thread for 50 s to no end (in the spirit of ffmpeg's -max_error_rate)."""

MAX_BAD_PACKET_SHARE = 2 / 3
"""Share of the packets read that may fail to decode once `MAX_BAD_PACKETS_IN_A_ROW` have been
read: above it the file is mostly not audio, even if good packets are sprinkled between bad ones."""


class FileRefused(ValueError):
    """The upload cannot be transcribed; the message says why."""


class NotAudioError(FileRefused):
    """The bytes are not an audio file FFmpeg can decode."""


class AudioTooLongError(FileRefused):
    """The file's audio is longer than the caller takes: its container says so, or decoding found it."""


class AudioFile:
    """An uploaded file opened for decoding; `open` checks that it is audio before anything is streamed.

    The first chunk is decoded when opening, so a file whose header parses but whose audio does not
    is refused at once; close with `close()` (or `chunks()` to the end, which closes it). Audio
    longer than `max_seconds` is refused: when opening if the container says so, else when decoding
    gets past it (a container's duration is what the file says, not what it holds).
    """

    def __init__(self, container: av.container.InputContainer, stream: av.AudioStream, max_seconds: float) -> None:
        self._container = container
        self._max_seconds = max_seconds
        self._decoded = 0
        """16 kHz samples decoded so far."""
        self._stream = stream
        self._resampler = _to_16k_mono()
        self._source: tuple[str, str, int] | None = None
        """The sample format, layout and rate of the frames `_resampler` was set up for."""
        self._skipped_packets = 0
        """Packets `_decoded_frames` skipped because they do not decode."""
        self._frames = (piece for frame in self._decoded_frames() for piece in _pieces(frame))
        self._pending: deque[Audio] = deque()
        self._pending_size = 0
        self._done = False
        self._lock = threading.Lock()
        self._decoding = False
        """A thread is in `_take()`: `close()` must leave FFmpeg and the frames to it."""
        self._closing = False

    @classmethod
    def open(cls, data: bytes, max_seconds: float) -> AudioFile:
        return cls._open(data, max_seconds, None)

    @classmethod
    def open_pcm(cls, data: bytes, max_seconds: float, encoding: str, rate: int) -> AudioFile:
        """Headerless mono PCM in one of `RAW_DEMUXERS`' encodings at `rate`, read where it is
        (FFmpeg's raw demuxer) rather than copied into a WAV file beside it."""
        return cls._open(data, max_seconds, (encoding, rate))

    @classmethod
    def _open(cls, data: bytes, max_seconds: float, pcm: tuple[str, int] | None) -> AudioFile:
        if not data:
            raise NotAudioError("the file is empty")
        options, demuxer = dict(NOTHING_BEYOND_THE_UPLOAD), None
        if pcm is not None:
            demuxer = RAW_DEMUXERS[pcm[0]]
            options |= {"sample_rate": str(pcm[1]), "ch_layout": "mono"}
        try:
            container = av.open(io.BytesIO(data), mode="r", format=demuxer, options=options)
        except (av.FFmpegError, UnicodeDecodeError) as exc:
            raise NotAudioError(f"not an audio file FFmpeg can read ({_reason(exc)})") from None
        if not container.streams.audio:
            container.close()
            raise NotAudioError("the file has no audio stream")
        declared = (container.duration or 0) / av.time_base
        if declared > max_seconds:
            container.close()
            raise AudioTooLongError(f"the file says its audio lasts {declared:.0f} s, over the {max_seconds:g} s limit")
        audio_file = cls(container, container.streams.audio[0], max_seconds)
        try:
            audio_file._fill()
        except FileRefused:
            audio_file.close()
            raise
        return audio_file

    def chunks(self) -> Generator[Audio, None, None]:
        """16 kHz mono float32 chunks of `CHUNK_SECONDS` (the last may be shorter), then closes."""
        try:
            while (chunk := self._decode_chunk()) is not None:
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        """Free FFmpeg's buffers and the decoded audio not handed on; safe to call again. Called
        while another thread decodes a chunk (a handler ending at shutdown), it leaves the closing
        to that thread, which does it when the chunk is done: FFmpeg is not closed under it."""
        with self._lock:
            self._closing = True
            if self._decoding:
                return
        self._frames.close()  # its generator refers back to this object: a cycle until closed
        self._container.close()
        self._pending.clear()
        self._pending_size = 0

    def _decode_chunk(self) -> Audio | None:
        """`_take()`, or None once `close()` has been called (before or while it decodes)."""
        with self._lock:
            if self._closing:
                return None
            self._decoding = True
        try:
            chunk = self._take()
        finally:
            with self._lock:
                self._decoding = False
                closing = self._closing
        return None if closing else chunk

    def _take(self) -> Audio | None:
        """The next chunk, cut from the front of `_pending` (the audio behind it is not copied)."""
        wanted = int(CHUNK_SECONDS * SAMPLE_RATE)
        while self._pending_size < wanted and not self._done:
            self._fill()
        if not self._pending_size:
            return None
        parts: list[Audio] = []
        size = 0
        while self._pending and size < wanted:
            head = self._pending.popleft()
            if head.size > wanted - size:
                head, rest = head[: wanted - size], head[wanted - size :]
                self._pending.appendleft(rest)
            parts.append(head)
            size += head.size
        self._pending_size -= size
        return np.concatenate(parts)

    def _fill(self) -> None:
        """Decode one more frame, or piece of one (or flush the resampler at the end), into `_pending`."""
        try:
            frame = next(self._frames, None)
            if frame is None:
                self._done = True
                if self._skipped_packets and self._source is None:  # no frame reached the resampler
                    raise NotAudioError(_undecodable(self._skipped_packets, self._skipped_packets))
                out = self._resampler.resample(None)
            else:
                out = self._resample(frame)
        except FileRefused:
            raise
        except (av.FFmpegError, ValueError) as exc:  # PyAV raises ValueError for frames it cannot convert
            raise NotAudioError(f"the audio cannot be decoded ({_reason(exc)})") from None
        for resampled in out:
            samples = resampled.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            np.nan_to_num(samples, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            self._pending.append(np.clip(samples, -1.0, 1.0))
            self._pending_size += samples.size
            self._decoded += samples.size
        if self._decoded > self._max_seconds * SAMPLE_RATE:
            raise AudioTooLongError(f"the audio goes on past the {self._max_seconds:g} s limit")

    def _decoded_frames(self) -> Iterator[av.AudioFrame]:
        """The stream's frames. A packet that does not decode (a damaged one, a last frame cut short)
        is skipped, as the ffmpeg command does, so that the rest of the file is still transcribed;
        the file is refused once such packets dominate (`MAX_BAD_PACKETS_IN_A_ROW`, `MAX_BAD_PACKET_SHARE`)."""
        read = in_a_row = 0
        try:
            for packet in self._container.demux(self._stream):
                read += 1
                try:
                    frames = packet.decode()
                except (av.FFmpegError, ValueError):
                    self._skipped_packets += 1
                    in_a_row += 1
                    if in_a_row > MAX_BAD_PACKETS_IN_A_ROW or (
                        read > MAX_BAD_PACKETS_IN_A_ROW and self._skipped_packets > MAX_BAD_PACKET_SHARE * read
                    ):
                        raise NotAudioError(_undecodable(self._skipped_packets, read)) from None
                    continue
                in_a_row = 0
                yield from frames
        finally:
            if self._skipped_packets:
                log.debug("skipped %d audio packets that do not decode", self._skipped_packets)

    def _resample(self, frame: av.AudioFrame) -> list[av.AudioFrame]:
        """`frame` resampled. A resampler takes only frames like its first, and a stream may change
        midway (ADTS AAC joined from a mono and a stereo recording): a frame unlike the ones before
        gets a new resampler, after the old one's tail."""
        source = (frame.format.name, frame.layout.name, frame.rate)
        if source == self._source:
            return self._resampler.resample(frame)
        if frame.rate < MIN_SAMPLE_RATE:
            raise NotAudioError(
                f"its sample rate is {frame.rate} Hz, below the {MIN_SAMPLE_RATE} Hz this server takes "
                "(speech is recorded at 8 kHz and above)"
            )
        tail = self._resampler.resample(None)  # nothing before the first frame
        self._resampler = _to_16k_mono()
        self._source = source
        return [*tail, *self._resampler.resample(frame)]


def _pieces(frame: av.AudioFrame) -> Iterator[av.AudioFrame]:
    """`frame` as frames of at most `RESAMPLE_STEP_SAMPLES` samples (the resampler makes the same
    audio of them as of the whole). Only a frame's real planes are copied: PyAV lists more for
    many channels (9 for 8 planar ones, the last pointing at no buffer; reading it crashes)."""
    if frame.samples <= RESAMPLE_STEP_SAMPLES:
        yield frame
        return
    channels = frame.layout.nb_channels
    planes = channels if frame.format.is_planar else 1
    sample_bytes = frame.format.bytes * (1 if frame.format.is_planar else channels)
    for start in range(0, frame.samples, RESAMPLE_STEP_SAMPLES):
        count = min(RESAMPLE_STEP_SAMPLES, frame.samples - start)
        piece = av.AudioFrame(format=frame.format.name, layout=frame.layout, samples=count)
        for source, target in zip(frame.planes[:planes], piece.planes[:planes], strict=True):
            target.update(bytes(memoryview(source)[start * sample_bytes : (start + count) * sample_bytes]))
        piece.sample_rate = frame.sample_rate
        yield piece


def _undecodable(bad: int, read: int) -> str:
    if bad == read:
        return f"none of its first {read} audio packets decode"
    return f"{bad} of its first {read} audio packets do not decode"


def _to_16k_mono() -> av.AudioResampler:
    return av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


async def decoded_chunks(audio_file: AudioFile, executor: Executor) -> AsyncIterator[Audio]:
    """`audio_file.chunks()` decoded in a thread of `executor`, one chunk at a time.

    Cancelled, it waits for the chunk being decoded (milliseconds) before closing the file, so
    FFmpeg is never closed under a thread that is still using it.
    """
    chunks = audio_file.chunks()
    try:
        while True:
            decoding = asyncio.get_running_loop().run_in_executor(executor, next, chunks, None)
            try:
                chunk = await asyncio.shield(decoding)
            except asyncio.CancelledError:
                await asyncio.gather(decoding, return_exceptions=True)
                raise
            if chunk is None:
                return
            yield chunk
    finally:
        chunks.close()
