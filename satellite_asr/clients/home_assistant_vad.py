"""Where Home Assistant ends a voice command for a speech-to-text server that needs external VAD.

Home Assistant's voice pipeline reads each speech-to-text service's `requires_external_vad`
(Wyoming `asr` info; wyoming-faster-whisper says yes unless started with `--vad-endpointing`,
this daemon says no). For a service that needs it, the pipeline scores every 10 ms chunk with
microVAD (the `pymicro-vad` release Home Assistant pins) and counts the command's speech and
silence with its `VoiceCommandSegmenter` (`assist_pipeline/vad.py`); when the segmenter says the
command is over, the audio stream ends and the server gets `audio-stop`. `command_end` does the same
offline, so that the Wyoming bench drives such a server as Home Assistant does. Both models are
causal and see the same chunks, so computing the end ahead of streaming gives the chunk Home
Assistant would stop at.

MicroVAD keeps its speech probability high for about half a second after the voice stops, so
Home Assistant's `audio-stop` comes well over `silence_seconds` after the true end of speech.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from satellite_asr.audio import SAMPLE_RATE, Audio, to_pcm16

CHUNK_SAMPLES = SAMPLE_RATE // 100
"""MicroVAD scores 10 ms of 16 kHz audio at a time, as Home Assistant's pipeline chunks it."""
CHUNK_SECONDS = CHUNK_SAMPLES / SAMPLE_RATE
SILENCE_SECONDS = 0.7
"""Home Assistant's "finished speaking detection" at its default; 0.25 aggressive, 1.25 relaxed."""


@dataclass
class CommandSegmenter:
    """Home Assistant's `VoiceCommandSegmenter` rules, with its defaults: a command starts after
    `speech_seconds` of speech, lasts at least `command_seconds`, and ends after `silence_seconds`
    of silence counted over the whole command (the count refills only after `reset_seconds` of
    unbroken speech), or after `timeout_seconds` in all."""

    silence_seconds: float = SILENCE_SECONDS
    speech_seconds: float = 0.3
    command_seconds: float = 1.0
    reset_seconds: float = 1.0
    timeout_seconds: float = 15.0
    before_command_threshold: float = 0.2
    """Probability above which a chunk counts as speech before the command has started."""
    in_command_threshold: float = 0.5
    """... and once it has."""
    in_command: bool = field(default=False, init=False)
    _speech_left: float = field(default=0.0, init=False)
    _command_left: float = field(default=0.0, init=False)
    _silence_left: float = field(default=0.0, init=False)
    _reset_left: float = field(default=0.0, init=False)
    _timeout_left: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._speech_left = self.speech_seconds
        self._silence_left = self.silence_seconds
        self._reset_left = self.reset_seconds
        self._timeout_left = self.timeout_seconds

    def finished(self, seconds: float, probability: float) -> bool:
        """Count one chunk of `seconds` with microVAD's `probability`; True once the command is over
        (or the timeout passed)."""
        self._timeout_left -= seconds
        if self._timeout_left <= 0:
            return True
        if not self.in_command:
            self._before_command(seconds, probability > self.before_command_threshold)
            return False
        self._command_left -= seconds
        if probability > self.in_command_threshold:
            self._reset_left -= seconds
            if self._reset_left <= 0:
                self._silence_left, self._reset_left = self.silence_seconds, self.reset_seconds
            return False
        self._reset_left = self.reset_seconds
        self._silence_left -= seconds
        return self._silence_left <= 0 and self._command_left <= 0

    def _before_command(self, seconds: float, speech: bool) -> None:
        if not speech:
            self._reset_left -= seconds
            if self._reset_left <= 0:
                self._speech_left, self._reset_left = self.speech_seconds, self.reset_seconds
            return
        self._reset_left = self.reset_seconds
        self._speech_left -= seconds
        if self._speech_left <= 0:
            self.in_command = True
            self._command_left = self.command_seconds - self.speech_seconds
            self._silence_left = self.silence_seconds


def command_end(audio: Audio, silence_seconds: float = SILENCE_SECONDS) -> float:
    """Seconds into `audio` (16 kHz mono) at which Home Assistant sends `audio-stop`: when the chunk
    its segmenter finished on has been recorded (Home Assistant does not forward that chunk, silence
    by then; the bench sends it, which moves no timing). Past the audio a microphone goes on
    recording silence; the segmenter's timeout bounds the wait."""
    try:
        from pymicro_vad import MicroVad
    except ImportError as exc:
        raise ValueError(
            "--wyoming-end ha-vad scores audio with Home Assistant's microVAD: in the checkout, "
            ".venv/bin/pip install -e '.[ha-vad]'"
        ) from exc
    segmenter = CommandSegmenter(silence_seconds)
    pcm = to_pcm16(audio)
    silence = np.zeros(CHUNK_SAMPLES, dtype="<i2")
    vad = MicroVad()
    start = 0
    while True:
        chunk = pcm[start : start + CHUNK_SAMPLES]
        chunk = np.concatenate([chunk, silence[: CHUNK_SAMPLES - len(chunk)]])
        start += CHUNK_SAMPLES
        if segmenter.finished(CHUNK_SECONDS, vad.Process10ms(chunk.tobytes())):
            return start / SAMPLE_RATE
