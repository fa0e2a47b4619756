"""Sarvam AI's streaming speech-to-text API at `/speech-to-text/ws` (docs/sarvam.md): wire messages
<-> `Session` calls, so that the `sarvamai` SDK, Pipecat's `SarvamSTTService` and LiveKit's Sarvam
plugin reach the daemon by their URL alone.

The URL's query sets the stream; a bad one is refused after the upgrade, in Sarvam's `error`
message and a Close 1008. Audio comes as `{"audio": {"data", "sample_rate", "encoding"}}`, the data
base64 16-bit PCM (a WAV's header, when the data has one, is read and stripped). Each utterance the
daemon's endpointing cuts is one `data` message with its transcript: Sarvam's stream sends no
partials. With `vad_signals=true`, `events` START_SPEECH / END_SPEECH tell of speech. `{"type":
"flush"}` ends the utterance in progress; LiveKit's `end_of_stream` ends the stream (its finals,
then the Close 1000). An error is `{"type": "error", "data": {"error", "code"}}`; the stream goes on.
"""

from __future__ import annotations

import abc
import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMessage, web
from multidict import MultiMapping

from satellite_asr.audio import PcmDecoder
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript, SpeechStarted, SpeechStopped
from satellite_asr.protocols import ProtocolError, checked_biasing, checked_language, echoable
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    ErrorEventConnection,
    ParameterError,
    StreamParams,
    boolean_parameter,
    check_fields,
    check_names,
    control_message,
    fraction_parameter,
    is_control,
    refuse_in_band,
    whole_parameter,
)
from satellite_asr.session import SessionOptions

PATH = "/speech-to-text/ws"
PROTOCOL = "sarvam"
LANGUAGES = (
    "en-IN",
    "hi-IN",
    "bn-IN",
    "gu-IN",
    "kn-IN",
    "ml-IN",
    "mr-IN",
    "od-IN",
    "pa-IN",
    "ta-IN",
    "te-IN",
    "as-IN",
    "ur-IN",
    "ne-IN",
    "kok-IN",
    "ks-IN",
    "sd-IN",
    "sa-IN",
    "sat-IN",
    "mni-IN",
    "brx-IN",
    "mai-IN",
    "doi-IN",
)
"""Sarvam's language codes; `unknown` (the default) asks for detection."""
ISO_OF = {"od": "or"}
"""Sarvam's language subtags that are not the ISO 639-1 code the engines use (Odia)."""
MODELS = ("saaras:v3", "saaras:v4", "saarika:v2.5", "saarika:v2")
"""The models Sarvam lists; which one is asked changes nothing here (the daemon's engine decodes)."""
MODES = {"transcribe", "verbatim", "codemix"}
"""Modes taken: the engine transcribes in the spoken language's script. `translate` and `translit`
are refused (`REFUSED_MODES`): the engine writes neither English from another language nor Latin
script from another."""
REFUSED_MODES = {"translate": "translation into English", "translit": "transliteration into Latin script"}
CODECS = {"wav", "pcm_s16le", "pcm_l16", "pcm_raw"}
"""Sarvam's `input_audio_codec`s: all 16-bit little-endian PCM here, a WAV's header stripped."""
SAMPLE_RATES = (8000, 16000)
"""The connection rates Sarvam takes."""
MESSAGE_RATES = (8000, 16000, 22050, 24000)
"""The rates an audio message may name (the SDK's legacy per-message rate)."""
MAX_KEYTERMS = 50
VAD_NUMBERS = {
    "min_speech_frames",
    "first_turn_min_speech_frames",
    "negative_frames_count",
    "negative_frames_window",
    "interrupt_min_speech_frames",
    "pre_speech_pad_frames",
    "num_initial_ignored_frames",
}
"""Sarvam's VAD tuning in frames: checked whole numbers, not applied (the daemon's Silero decides)."""
VAD_FRACTIONS = {"positive_speech_threshold", "negative_speech_threshold"}
CHECKED_NOT_APPLIED = {"model", "high_vad_sensitivity", "start_speech_volume_threshold", *VAD_NUMBERS, *VAD_FRACTIONS}
KNOWN = {
    "language-code",
    "language_code",
    "mode",
    "sample_rate",
    "input_audio_codec",
    "vad_signals",
    "flush_signal",
    "keyterms",
}


@dataclass(frozen=True)
class SarvamParams:
    """The stream's settings from the URL's query."""

    sample_rate: int
    rate_given: bool
    """The query named the rate: Sarvam's connection rate then wins over a message's."""
    language: str | None
    language_code: str
    """What the client asked (`unknown` for detection), echoed in `data`."""
    vad_signals: bool
    terms: tuple[str, ...]

    def decoder(self) -> PcmDecoder:
        return PcmDecoder("s16le", self.sample_rate, 1)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(core.settings, partials=False, language=self.language, terms=self.terms)


def engine_language(
    core: Core, code: str, param: str, detect: str = "unknown", languages: tuple[str, ...] = LANGUAGES
) -> str | None:
    """The engine's code for one of Sarvam's `languages` (`en-IN` -> `en`), None for `detect`
    (`unknown` on the stream, `auto` on the realtime stream); `ParameterError` for a code Sarvam does
    not list or the engine does not speak."""
    if code == detect:
        return None
    if code not in languages:
        raise ParameterError(param, f"{param} must be {detect} or one of {', '.join(languages)}, got {code!r}")
    subtag = code.split("-")[0]
    try:
        return checked_language(core, ISO_OF.get(subtag, subtag), param)
    except ProtocolError as exc:
        raise ParameterError.of(exc, param) from None


def sarvam_code(
    language: str | None, asked: str, detect: str = "unknown", languages: tuple[str, ...] = LANGUAGES
) -> str | None:
    """The BCP-47 code a transcript carries: the one asked, or for detection (`detect`) the engine's
    in Sarvam's form, one of `languages` (the engine's code itself when Sarvam lists none for it)."""
    if asked != detect:
        return asked
    if not language:
        return None
    subtags = {code: code.split("-")[0] for code in languages}
    return next((code for code, subtag in subtags.items() if ISO_OF.get(subtag, subtag) == language), language)


def check_model_and_mode(query: Mapping[str, str], models: tuple[str, ...] = MODELS) -> None:
    """`model` among Sarvam's `models`, `mode` one the engine can honour (translation refused)."""
    model = query.get("model")
    if model is not None and model not in models:
        raise ParameterError("model", f"model must be one of {', '.join(models)}, got {model!r}")
    mode = query.get("mode", "transcribe")
    if mode in REFUSED_MODES:
        raise ParameterError("mode", f"mode {mode} ({REFUSED_MODES[mode]}) is not served here; use transcribe")
    if mode not in MODES:
        raise ParameterError("mode", f"mode must be one of {', '.join(sorted(MODES | set(REFUSED_MODES)))}")


def parse_terms(core: Core, value: str | None, param: str) -> tuple[str, ...]:
    """Sarvam's `keyterms`: a JSON array of up to 50 strings of up to 64 characters each (`null`,
    which the SDK's upload sends when there are none, is none)."""
    if value is None or value == "null":
        return ()
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if not isinstance(parsed, list) or not all(isinstance(term, str) for term in parsed):
        raise ParameterError(param, f'{param} must be a JSON array of strings, e.g. ["Sarvam", "New Delhi"]')
    if len(parsed) > MAX_KEYTERMS or any(len(term) > 64 for term in parsed):
        raise ParameterError(param, f"{param} holds at most {MAX_KEYTERMS} terms of at most 64 characters")
    terms = tuple(term.strip() for term in parsed if term.strip())
    try:
        checked_biasing(core, "", terms, param, param)
    except ProtocolError as exc:
        raise ParameterError.of(exc, param) from None
    return terms


def parse_query(query: MultiMapping[str], core: Core) -> StreamParams:
    """The stream's settings, or `ParameterError` naming the first parameter at fault."""
    check_names(query, KNOWN | CHECKED_NOT_APPLIED, set())
    check_model_and_mode(query)
    if "language-code" in query and "language_code" in query:
        raise ParameterError("language-code", "language-code and language_code are one setting; give one of them")
    name = "language-code" if "language-code" in query else "language_code"
    asked = query.get(name, "unknown")
    language = engine_language(core, asked, name)
    rate = query.get("sample_rate")
    if rate is not None and rate not in {str(known) for known in SAMPLE_RATES}:
        raise ParameterError("sample_rate", f"sample_rate must be 8000 or 16000, got {rate!r}")
    codec = query.get("input_audio_codec", "wav")
    if codec not in CODECS:
        raise ParameterError("input_audio_codec", f"input_audio_codec must be one of {', '.join(sorted(CODECS))}")
    for flag in ("high_vad_sensitivity", "flush_signal"):
        boolean_parameter(query, flag, False)
    for number in sorted(VAD_NUMBERS):
        whole_parameter(query, number, None, 0, 10_000)
    for fraction in sorted(VAD_FRACTIONS):
        fraction_parameter(query, fraction, 0.0, 1.0)
    fraction_parameter(query, "start_speech_volume_threshold", -200.0, 0.0)
    return SarvamParams(
        sample_rate=int(rate or 16000),
        rate_given=rate is not None,
        language=language,
        language_code=asked,
        vad_signals=boolean_parameter(query, "vad_signals", False),
        terms=parse_terms(core, query.get("keyterms"), "keyterms"),
    )


def error_message(code: str, message: str) -> dict[str, Any]:
    """Sarvam's stream error: `data` holds the sentence (`error`) and the code."""
    return {"type": "error", "data": {"error": echoable(message), "code": code}}


def ends_stream(message: WSMessage) -> bool:
    """LiveKit's `end_of_stream`: what the client sent before its Close is still wanted."""
    return is_control(message, "end_of_stream")


def pcm_of(data: bytes) -> tuple[bytes, int | None]:
    """A WAV's samples and rate, or the data as it came (headerless PCM, no rate of its own)."""
    if not data.startswith(b"RIFF"):
        return data, None
    if data[8:12] != b"WAVE" or data[12:16] != b"fmt ":
        raise ProtocolError("invalid_audio", "the audio's RIFF header is not a WAVE with its fmt chunk first")
    if int.from_bytes(data[20:22], "little") != 1 or int.from_bytes(data[34:36], "little") != 16:
        raise ProtocolError("invalid_audio", "WAV audio must be 16-bit PCM")
    if int.from_bytes(data[22:24], "little") != 1:
        raise ProtocolError("invalid_audio", "WAV audio must be mono")
    rate = int.from_bytes(data[24:28], "little")
    position = 20 + int.from_bytes(data[16:20], "little")
    while position + 8 <= len(data):
        size = int.from_bytes(data[position + 4 : position + 8], "little")
        if data[position : position + 4] == b"data":
            return data[position + 8 : position + 8 + size], rate
        position += 8 + size + size % 2
    raise ProtocolError("invalid_audio", "the WAV audio has no data chunk")


class HeldSignals(ErrorEventConnection):
    """A Sarvam client told of speech (the stream's `events`, the realtime stream's `vad.*`): a later
    utterance's signals wait until the transcript of the one before it is sent (with two decodes at
    once the next one's speech is heard meanwhile), since the clients pair a transcript with the last
    start of speech."""

    held_signals: list[tuple[int, str]]
    """VAD signals of utterances after one whose transcript is not sent yet, in order."""

    def open_session(self) -> None:
        """The session, with no VAD signal held yet (signals come of its events alone)."""
        self.held_signals = []
        super().open_session()

    def signals_wanted(self) -> bool:
        """Whether the client asked to be told of speech."""
        return True

    @abc.abstractmethod
    async def send_signal(self, utterance_id: int, kind: str) -> None:
        """The API's message that speech started (`START_SPEECH`) or stopped (`END_SPEECH`)."""

    def waits(self, utterance_id: int) -> bool:
        """Whether an utterance before this one still awaits its transcript."""
        return any(earlier < utterance_id for earlier in self.pending.starts)

    async def signal(self, utterance_id: int, kind: str) -> None:
        """START_SPEECH or END_SPEECH, now or held while an utterance before it awaits its transcript."""
        if not self.signals_wanted():
            return
        if self.waits(utterance_id):
            self.held_signals.append((utterance_id, kind))
            return
        await self.send_signal(utterance_id, kind)

    async def release_signals(self) -> None:
        """After a transcript, the held signals of the utterances no earlier one holds back any more."""
        while self.held_signals and not self.waits(self.held_signals[0][0]):
            await self.signal(*self.held_signals.pop(0))

    async def speech_started(self, event: SpeechStarted) -> None:
        await super().speech_started(event)
        await self.signal(event.utterance_id, "START_SPEECH")

    async def speech_stopped(self, event: SpeechStopped) -> None:
        await self.signal(event.utterance_id, "END_SPEECH")


class SarvamConnection(HeldSignals):
    """A client of the streaming API: its audio, flushes and end; each utterance's transcript."""

    protocol = PROTOCOL
    invalid_message = "invalid_message"
    idle_means_missing_audio = True  # Pipecat's SarvamSTTService does not reconnect (docs/sarvam.md)

    @property
    def options(self) -> SarvamParams:
        """The URL's settings, which `parse_query` gave before the connection was made."""
        assert isinstance(self.params, SarvamParams)
        return self.params

    async def opened(self) -> None:
        """Nothing: Sarvam's stream says nothing until there is speech or a transcript."""

    def signals_wanted(self) -> bool:
        return self.options.vad_signals

    async def send_signal(self, utterance_id: int, kind: str) -> None:
        data = {"event_type": "vad", "signal_type": kind, "occured_at": time.time()}
        await self.send({"type": "events", "data": data})

    async def partial(self, utterance_id: int, text: str) -> None:
        """Never called: the session runs without partials (Sarvam's stream sends none)."""

    async def final(self, event: FinalTranscript) -> None:
        """The utterance's transcript; none for an utterance without words (the clients drop it)."""
        self.pending.final(event.utterance_id)
        if event.text.strip():
            data = {
                "request_id": self.request_id,
                "transcript": event.text.strip(),
                "timestamps": None,
                "diarized_transcript": None,
                "language_code": sarvam_code(event.language or self.options.language, self.options.language_code),
                "language_probability": None,
                "speech_start": event.span[0],
                "speech_end": event.span[1],
                "metrics": {
                    "audio_duration": round(max(0.0, event.end - event.start), 3),
                    "processing_latency": round(max(0.0, self.seconds - event.end), 3),
                },
            }
            await self.send({"type": "data", "data": data})
        await self.release_signals()

    async def closing(self) -> None:
        """Nothing: the finals went out as they came."""

    def error_message(self, code: str, message: str) -> dict[str, Any]:
        return error_message(code, message)

    async def on_binary(self, data: bytes) -> None:
        raise ProtocolError("invalid_message", 'audio comes as JSON {"audio": {"data": base64}}, not binary')

    async def control(self, data: str) -> None:
        """An audio message (it has no `type`) or one of the typed controls."""
        kind, message = control_message(data, self.invalid_message, self.type_field)
        if kind is None and "audio" in message:
            check_fields(message, "audio message", {"audio"})
            await self.audio(message["audio"])
        else:
            await super().control(data)

    def controls(self) -> dict[str, Control]:
        return {"flush": self.flush, "config": self.config, "end_of_stream": self.end_of_stream}

    async def audio(self, audio: object) -> None:
        """One audio message's samples fed to the session: a WAV's at the stream's rate, headerless
        PCM's by the message's rate (`check_rate`)."""
        if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
            raise ProtocolError("invalid_audio", 'audio must be {"data": base64, "sample_rate", "encoding"}')
        check_fields(audio, "audio", {"data", "sample_rate", "encoding"})
        encoding = audio.get("encoding", "audio/wav")
        if not isinstance(encoding, str) or encoding.removeprefix("audio/") not in CODECS:
            raise ProtocolError("invalid_audio", f"audio encoding must be audio/wav, got {echoable(str(encoding))!r}")
        try:
            samples, wav_rate = pcm_of(base64.b64decode(audio["data"], validate=True))
        except (binascii.Error, ValueError):
            raise ProtocolError("invalid_audio", "audio data is not valid base64") from None
        stream_rate = self.options.sample_rate
        if wav_rate is not None:  # the header tells what the samples are, whatever the URL or message says
            if wav_rate != stream_rate:
                raise ProtocolError("invalid_audio", f"WAV audio at {wav_rate} Hz in a {stream_rate} Hz stream")
        else:
            self.check_rate(audio.get("sample_rate", stream_rate))
        await super().on_binary(samples)

    def check_rate(self, rate: object) -> None:
        """A message's rate: the stream's, unless the URL named the rate (Sarvam's connection rate
        wins then); the advice names only a rate the URL takes."""
        stream_rate = self.options.sample_rate
        if rate not in MESSAGE_RATES:
            raise ProtocolError("invalid_audio", f"audio sample_rate must be one of {MESSAGE_RATES}, got {rate!r}")
        if rate != stream_rate and not self.options.rate_given:
            advice = f"set sample_rate={rate} in the URL" if rate in SAMPLE_RATES else "send 8000 or 16000 Hz audio"
            raise ProtocolError("invalid_audio", f"audio at {rate} Hz in a {stream_rate} Hz stream; {advice}")

    async def flush(self, message: dict[str, Any]) -> None:
        """The utterance in progress ends now; its transcript comes before the next one's."""
        check_fields(message, "flush", set())
        await self.flush_for_client()

    async def config(self, message: dict[str, Any]) -> None:
        """LiveKit's `config` with a `prompt`: checked, not applied (the stream's context is set)."""
        check_fields(message, "config", {"prompt"})
        prompt = message.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise ProtocolError("invalid_message", "config's prompt must be text")
        checked_biasing(self.core, prompt or "", (), "prompt", "prompt")

    async def end_of_stream(self, message: dict[str, Any]) -> None:
        """LiveKit's last message: its audio (LiveKit's is empty) is the stream's last, then the finals
        of the audio so far, then the Close 1000."""
        check_fields(message, "end_of_stream", {"audio"})
        try:
            if message.get("audio") is not None:
                await self.audio(message["audio"])
        except ProtocolError as exc:  # its audio is lost, not the end the client asked for
            await self.error(exc.code, exc.message)
        await self.end()


async def refuse_parameters(
    core: Core, request: web.Request, ws: web.WebSocketResponse, exc: ParameterError
) -> web.StreamResponse:
    """A bad query refused after the upgrade, in Sarvam's error message, whose sentence the clients
    report (an HTTP refusal they report by its status alone), then the Close 1008."""
    error = error_message("invalid_request_error", f"{exc.parameter}: {exc}")
    return await refuse_in_band(core, request, ws, error, WSCloseCode.POLICY_VIOLATION, ends_stream)


STREAMING = Api(
    PATH, "Sarvam AI's streaming speech-to-text API", parse_query, SarvamConnection, ends_stream, refuse_parameters
)
