"""Speechmatics' real-time API (`/v2`, `/v2/<language>`) and its Agent STT API (`/v2/agent`)
(docs/speechmatics.md): wire messages <-> `Session` calls.

Both take the stream's settings in the first message, `StartRecognition`; the session opens then
and `RecognitionStarted` answers. Audio comes as binary messages, each acknowledged by `AudioAdded`.
The real-time API (the `speechmatics-rt` SDK's) sends each utterance as `AddPartialTranscript`s and
one `AddTranscript` (words in `results`), with `EndOfUtterance` after it when the client asked for
end-of-utterance detection. The Agent STT API (LiveKit's plugin and Pipecat's service speak it) sends
`AddPartialSegment`s and one `AddSegment`, framed by `StartOfTurn` / `EndOfTurn` when the service
closes turns (`turn_detection_mode` `vad`). `ForceEndOfUtterance` ends the utterance in progress now;
`EndOfStream` ends the audio: the finals still to come, `EndOfTranscript`, the Close. Every refusal is
an `Error` `{type, reason}`, then the Close; an engine's failure to decode one utterance is a
`Warning`, since every client drops the session on an `Error` and the final that follows would be lost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from multidict import MultiMapping

from satellite_asr.audio import MAX_RATE, MIN_RATE, PcmDecoder
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript
from satellite_asr.protocols import ProtocolError, ReadAhead, echoable, json_object
from satellite_asr.protocols.iso639 import engine_language
from satellite_asr.protocols.streaming_apis import (
    Api,
    Control,
    InOrderConnection,
    ParameterError,
    StreamParams,
    check_fields,
    check_names,
    confidence,
    is_control,
    number_within,
    refuse_in_band,
    replacing_terms,
)
from satellite_asr.session import SessionOptions

PATH = "/v2"
LANGUAGE_PATH = "/v2/{language}"
"""The older form, the language in the path: it must be the configuration's. Routed after Deepgram's
`/v2/listen` and `AGENT_PATH`, which aiohttp matches first."""
AGENT_PATH = "/v2/agent"
PROTOCOL = "speechmatics"
AGENT_PROTOCOL = "speechmatics-agent"
QUERY = {"sm-sdk", "sm-app", "jwt"}
"""What the clients put in the URL: their names (checked, not used) and a browser's key (`jwt`)."""
ENCODINGS = {"pcm_s16le": "s16le", "pcm_f32le": "f32le", "mulaw": "pcmu"}
"""Speechmatics' raw encodings and the daemon's names of them."""
MODELS = {"standard", "enhanced", "melia-1", "linden-1"}
"""The model names the clients send (the SDK's `enhanced`, the Agent STT clients' `linden-1`): all
are the daemon's one engine."""
PUNCTUATION = ".,?!;:"
SENTENCE_ENDS = ".?!"
ERROR_TYPES = {
    "timeout": "idle_timeout",
    "idle_timeout": "idle_timeout",
    "shutdown": "job_error",
    "server_busy": "job_error",
    "engine_error": "job_error",
    "frame_too_large": "invalid_message",
    "invalid_audio": "invalid_message",
    "context_too_long": "invalid_config",
    "invalid_type": "invalid_config",
    "missing_api_key": "not_authorised",
    "invalid_api_key": "not_authorised",
}
"""Speechmatics' `type` for each of the daemon's error codes; its own types are sent as they are.
Only the types Speechmatics documents (its real-time API's `ErrorTypeEnum`): not `data_error` or
`internal_error`, which it no longer sends. `server_busy` (`max_sessions`) is `job_error`, which the
clients retry, rather than `quota_exceeded`, a contract's limit that Pipecat takes as permanent."""
AGENT_ERROR_TYPES = {**ERROR_TYPES, "timeout": "start_recognition_timeout", "idle_timeout": "job_error"}
"""The Agent STT API's: its `Error` types are fewer (no `idle_timeout`) and one its own, for a
`StartRecognition` that did not come in time."""
CLOSE_CODES = {
    "protocol_error": 1003,
    "not_authorised": 4001,
    "not_allowed": 4003,
    "invalid_model": 4004,
    "quota_exceeded": 4005,
    "timelimit_exceeded": 4006,
    "job_error": 4013,
}
"""The Close after an `Error` of each type, with the type as its reason, as Speechmatics closes;
every other type's is 1008 (`policy_violation`)."""
FIELDS = {
    "language",
    "model",
    "operating_point",
    "enable_partials",
    "max_delay",
    "max_delay_mode",
    "additional_vocab",
    "conversation_config",
    "punctuation_overrides",
    "output_locale",
    "streaming_mode",
    "audio_filtering_config",
    "diarization",
    "enable_entities",
    "emit_sentences",
}
"""The `transcription_config` fields taken; those not applied are checked and documented."""
REFUSED = {
    "speaker_diarization_config": "speaker diarization",
    "channel_diarization_labels": "channel diarization",
    "domain": "domain language packs",
    "transcript_filtering_config": "transcript filtering",
    "ctrl": "engine control",
    "language_hints": "language hints",
    "language_hints_strict": "language hints",
}
"""Features the daemon does not have, refused when given (null is not given)."""
MID_SESSION = {
    "language",
    "enable_partials",
    "max_delay",
    "max_delay_mode",
    "audio_filtering_config",
    "conversation_config",
}
"""What `SetRecognitionConfig` may hold on the real-time API (Speechmatics refuses the rest);
the Agent STT API's, `AGENT_MID_SESSION`, is fewer."""
AGENT_MID_SESSION = {"language", "enable_partials"}
MESSAGE_REFUSED = {"translation_config": "translation", "audio_events_config": "audio event detection"}


@dataclass(frozen=True)
class SpeechmaticsConfig:
    """The stream's settings from `StartRecognition` (and `SetRecognitionConfig`'s changes)."""

    encoding: str
    sample_rate: int
    language: str | None
    partials: bool
    end_of_utterance: bool
    """`conversation_config.end_of_utterance_silence_trigger` asked for `EndOfUtterance` messages."""
    terms: tuple[str, ...]
    service_turns: bool
    """Agent STT's `turn_detection_mode` `vad`: `StartOfTurn` / `EndOfTurn` frame each segment."""

    def decoder(self) -> PcmDecoder:
        return PcmDecoder(ENCODINGS[self.encoding], self.sample_rate)

    def session_options(self, core: Core) -> SessionOptions:
        return SessionOptions.from_settings(core.settings, partials=True, language=self.language, terms=self.terms)


def parse_query(query: MultiMapping[str], core: Core) -> StreamParams | None:
    """None: the settings come in `StartRecognition`; the URL carries the clients' names, a key."""
    check_names(query, QUERY, set())
    return None


def parse_start(message: WSMessage, core: Core, agent: bool, path_language: str | None) -> SpeechmaticsConfig:
    """The stream's settings from its first message, or `ProtocolError` with Speechmatics' type."""
    if message.type != WSMsgType.TEXT:
        raise ProtocolError("protocol_error", "the first message must be StartRecognition, not audio")
    start = json_object(message.data)
    if isinstance(start, str):
        raise ProtocolError("invalid_message", f"StartRecognition must be a JSON object; this one {start}")
    if start.get("message") != "StartRecognition":
        raise ProtocolError("protocol_error", "the first message must be StartRecognition")
    known = {"message", "audio_format", "transcription_config", *MESSAGE_REFUSED, *(["turn_config"] if agent else [])}
    unknown = sorted(set(start) - known)
    if unknown:
        raise ProtocolError("invalid_message", f"StartRecognition has no field {echoable(unknown[0])!r}")
    for name, feature in MESSAGE_REFUSED.items():
        if start.get(name) is not None:
            raise ProtocolError("invalid_config", f"this server does not do {feature}; leave {name} out")
    encoding, rate = audio_format(start.get("audio_format"))
    config = start.get("transcription_config")
    if not isinstance(config, dict):
        raise ProtocolError("invalid_message", "StartRecognition needs a transcription_config object")
    service_turns = agent and turn_mode(start.get("turn_config")) == "vad"
    parsed = transcription(core, config, None, agent)
    if path_language is not None and path_language.lower() != str(config["language"]).lower():
        raise ProtocolError(
            "invalid_config", f"the URL's language {echoable(path_language)!r} is not the configuration's"
        )
    return SpeechmaticsConfig(encoding, rate, parsed.language, parsed.partials, parsed.eou, parsed.terms, service_turns)


def audio_format(value: object) -> tuple[str, int]:
    """`audio_format`'s encoding and rate: raw audio only (a file would need decoding)."""
    if not isinstance(value, dict):
        raise ProtocolError("invalid_message", "StartRecognition needs an audio_format object")
    unknown = sorted(set(value) - {"type", "encoding", "sample_rate"})
    if unknown:
        raise ProtocolError("invalid_message", f"audio_format has no field {echoable(unknown[0])!r}")
    if value.get("type") != "raw":
        raise ProtocolError("invalid_audio_type", "this server takes raw audio: audio_format.type must be 'raw'")
    encoding, rate = value.get("encoding"), value.get("sample_rate")
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise ProtocolError("invalid_audio_type", f"audio_format.encoding must be one of {', '.join(ENCODINGS)}")
    if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError(
            "invalid_audio_type", f"audio_format.sample_rate must be a whole number from {MIN_RATE} to {MAX_RATE}"
        )
    return encoding, rate


def turn_mode(value: object) -> str:
    """Agent STT's `turn_config.turn_detection_mode`: `vad` (the default) or `external`."""
    if value is None:
        return "vad"
    mode = value.get("turn_detection_mode", "vad") if isinstance(value, dict) else None
    if not isinstance(value, dict) or set(value) - {"turn_detection_mode"} or mode not in ("vad", "external"):
        raise ProtocolError("invalid_config", 'turn_config must be {"turn_detection_mode": "vad" or "external"}')
    return str(mode)


@dataclass(frozen=True)
class Transcription:
    """What a `transcription_config` sets."""

    language: str | None
    partials: bool
    eou: bool
    terms: tuple[str, ...]


def transcription(core: Core, config: dict[str, Any], before: Transcription | None, agent: bool) -> Transcription:
    """A `transcription_config` checked; `before`: the session's, which `SetRecognitionConfig` changes
    (its language and vocabulary are the session's and may not). On the Agent STT API partials are
    on unless turned off (LiveKit's plugin leaves `enable_partials` out and expects interims), and
    `diarization` `speaker` alone (LiveKit's default) is taken and not applied: segments name no speaker."""
    given = {name: value for name, value in config.items() if value is not None}
    for name, feature in REFUSED.items():
        if name in given:
            raise ProtocolError("invalid_config", f"this server does not do {feature}; leave {name} out")
    unknown = sorted(set(given) - FIELDS)
    if unknown:
        raise ProtocolError("invalid_config", f"transcription_config has no field {echoable(unknown[0])!r}")
    model = given.get("model", given.get("operating_point", "enhanced"))
    if not isinstance(model, str) or model not in MODELS:
        raise ProtocolError(
            "invalid_model", f"model {echoable(str(model))!r} is not one of {', '.join(sorted(MODELS))}"
        )
    for name in ("enable_partials", "streaming_mode", "emit_sentences", "enable_entities"):
        if name in given and not isinstance(given[name], bool):
            raise ProtocolError("invalid_config", f"{name} must be true or false")
    if given.get("enable_entities"):
        raise ProtocolError("invalid_config", "this server does not tag entities; leave enable_entities false")
    if given.get("diarization", "none") not in ("none", *(["speaker"] if agent else [])):
        raise ProtocolError("invalid_config", "this server does not do diarization; leave diarization 'none'")
    if "max_delay" in given and not number_within(given["max_delay"], 0.7, 4.0, False):
        raise ProtocolError("invalid_config", "max_delay must be a number of seconds from 0.7 to 4")
    if given.get("max_delay_mode", "flexible") not in ("flexible", "fixed"):
        raise ProtocolError("invalid_config", "max_delay_mode must be 'flexible' or 'fixed'")
    if not isinstance(given.get("output_locale", ""), str):
        raise ProtocolError("invalid_config", "output_locale must be a text")
    check_objects(given)
    eou = end_of_utterance(given.get("conversation_config"))
    if before is not None:
        if "language" in given and language_of(core, given["language"]) != before.language:
            raise ProtocolError("invalid_config", "the language cannot change during a session; start a new one")
        if "additional_vocab" in given and vocabulary(core, given["additional_vocab"]) != before.terms:
            raise ProtocolError("invalid_config", "additional_vocab cannot change during a session; start a new one")
        return Transcription(before.language, given.get("enable_partials", before.partials), eou, before.terms)
    language = given.get("language")
    if not isinstance(language, str):
        raise ProtocolError("invalid_config", "transcription_config.language is required: a language code")
    terms = vocabulary(core, given.get("additional_vocab", []))
    return Transcription(language_of(core, language), given.get("enable_partials", agent), eou, terms)


def language_of(core: Core, code: object) -> str | None:
    """The engine's code of a language, or `invalid_model`: Speechmatics' refusal of a language pack
    it does not have."""
    try:
        return engine_language(core, code, "language")
    except ProtocolError as exc:
        raise ProtocolError("invalid_model", exc.message) from None


def check_objects(given: dict[str, Any]) -> None:
    """The settings taken and not applied, checked: `punctuation_overrides` and `audio_filtering_config`."""
    punctuation = given.get("punctuation_overrides", {})
    marks = punctuation.get("permitted_marks", []) if isinstance(punctuation, dict) else None
    sensitivity = punctuation.get("sensitivity", 0.5) if isinstance(punctuation, dict) else None
    if not isinstance(marks, list) or not all(isinstance(mark, str) for mark in marks):
        raise ProtocolError("invalid_config", "punctuation_overrides.permitted_marks must be a list of texts")
    if not number_within(sensitivity, 0.0, 1.0, False):
        raise ProtocolError("invalid_config", "punctuation_overrides.sensitivity must be a number from 0 to 1")
    filtering = given.get("audio_filtering_config", {})
    threshold = filtering.get("volume_threshold", 0) if isinstance(filtering, dict) else None
    if not number_within(threshold, 0, 100, False):
        raise ProtocolError("invalid_config", "audio_filtering_config.volume_threshold must be a number from 0 to 100")


def end_of_utterance(value: object) -> bool:
    """Whether `conversation_config` asks for `EndOfUtterance`: a silence trigger over 0 (up to 2 s);
    the daemon's own turn detection decides when."""
    if value is None:
        return False
    trigger = value.get("end_of_utterance_silence_trigger", 0) if isinstance(value, dict) else None
    if trigger is None:
        trigger = 0
    if not isinstance(value, dict) or not number_within(trigger, 0, 2, False):
        raise ProtocolError("invalid_config", "conversation_config.end_of_utterance_silence_trigger must be 0 to 2 s")
    return trigger > 0


def vocabulary(core: Core, value: object) -> tuple[str, ...]:
    """`additional_vocab`'s words, texts or `{content, sounds_like}` objects: they bias the decode as
    other APIs' keyterms do; `sounds_like` is checked, not used."""
    if not isinstance(value, list):
        raise ProtocolError("invalid_config", "additional_vocab must be a list")
    words = []
    for item in value:
        if isinstance(item, dict):
            sounds = item.get("sounds_like") or []
            if set(item) - {"content", "sounds_like"} or not isinstance(sounds, list):
                raise ProtocolError("invalid_config", "an additional_vocab entry is {content, sounds_like}")
            if not all(isinstance(sound, str) for sound in sounds):
                raise ProtocolError("invalid_config", "additional_vocab sounds_like must be a list of texts")
            item = item.get("content")
        if not isinstance(item, str):
            raise ProtocolError("invalid_config", "each additional_vocab entry's content must be a text")
        words.append(item)
    try:
        return replacing_terms(core, words, "additional_vocab")
    except ProtocolError as exc:
        raise ProtocolError("invalid_config", exc.message) from None


def ends_stream(message: WSMessage) -> bool:
    """`EndOfStream`: what the client sent before its Close is still wanted."""
    return is_control(message, "EndOfStream", "message")


class SpeechmaticsConnection(InOrderConnection):
    """A client of the real-time API: its `StartRecognition`, audio and controls; each utterance's
    `AddPartialTranscript`s and `AddTranscript`."""

    protocol: ClassVar[str] = PROTOCOL
    invalid_message = "invalid_message"
    type_field = "message"
    errors_end_stream = True
    agent: ClassVar[bool] = False
    error_types: ClassVar[dict[str, str]] = ERROR_TYPES

    def __init__(
        self,
        ws: web.WebSocketResponse,
        core: Core,
        request: web.Request,
        reading: ReadAhead,
        params: StreamParams | None,
    ) -> None:
        super().__init__(ws, core, request, reading, params)
        self.path_language = request.match_info.get("language")
        self.config: SpeechmaticsConfig | None = None
        self.seq_no = 0
        self.speakers_at_end = False
        """A `GetSpeakers` with `final` true: its `SpeakersResult` comes before `EndOfTranscript`."""

    async def read_settings(self, message: WSMessage) -> None:
        self.config = self.params = parse_start(message, self.core, self.agent, self.path_language)
        self.open_session()
        await self.opened()

    async def opened(self) -> None:
        assert self.config is not None
        language = self.config.language or self.core.settings.default_language or "auto"
        await self.send(
            {
                "message": "RecognitionStarted",
                "id": self.request_id,
                "language_pack_info": {
                    "language_description": language,
                    "word_delimiter": " ",
                    "writing_direction": "left-to-right",
                    "itn": True,
                    "adapted": False,
                },
            }
        )

    async def closing(self) -> None:
        if self.speakers_at_end:
            await self.send(SPEAKERS_RESULT)
        await self.send({"message": "EndOfTranscript"})

    async def close_by_server(self, reason: str) -> None:
        """Idle timeout or shutdown, once the finals are sent: Speechmatics' in-band `Error`, then the Close."""
        self.finished = True
        await self.error(reason, self.server_close_sentence(reason), counted=True)

    async def error(self, code: str, message: str, *, fatal: bool = False, counted: bool = False) -> None:
        """Speechmatics' `Error`, then the Close (an engine's failure to decode one utterance: a
        `Warning`, and the session goes on). `message` may quote the client."""
        if not counted:
            self.core.metrics.errors.labels(code).inc()
        kind = self.error_types.get(code, code)
        if code == "engine_error" and not fatal:
            await self.send({"message": "Warning", "type": kind, "reason": echoable(message)})
            return
        self.finished = self.failed = True
        try:
            await self.send({"message": "Error", "type": kind, "reason": echoable(message)})
        finally:
            if kind in CLOSE_CODES:
                await self.close(CLOSE_CODES[kind], kind)
            else:
                await self.close(WSCloseCode.POLICY_VIOLATION, "policy_violation")

    async def on_binary(self, data: bytes) -> None:
        """Audio, acknowledged by `AudioAdded` with its number."""
        await super().on_binary(data)
        self.seq_no += 1
        await self.send({"message": "AudioAdded", "seq_no": self.seq_no})

    def controls(self) -> dict[str, Control]:
        return {
            "ForceEndOfUtterance": self.force_end,
            "SetRecognitionConfig": self.set_config,
            "EndOfStream": self.end_of_stream,
            "StartRecognition": self.second_start,
            "GetSpeakers": self.get_speakers,
        }

    async def end_of_stream(self, message: dict[str, Any]) -> None:
        check_fields(message, "EndOfStream", {"last_seq_no"}, "message")
        last = message.get("last_seq_no", 0)
        if not number_within(last, 0, math.inf, True):
            raise ProtocolError("invalid_message", "EndOfStream's last_seq_no must be a whole number")
        await self.end()

    async def get_speakers(self, message: dict[str, Any]) -> None:
        """No speaker identifiers, the daemon not diarizing: an empty `SpeakersResult`, now or (`final`
        true) at the end. LiveKit asks when its diarization is on (its default, taken on `/v2/agent`);
        an `Error` would end its session."""
        final = message.get("final", False)
        if not isinstance(final, bool) or set(message) - {"message", "final"}:
            raise ProtocolError("invalid_message", "GetSpeakers is {message, final}; final must be true or false")
        if final:
            self.speakers_at_end = True
        else:
            await self.send(SPEAKERS_RESULT)

    async def second_start(self, message: dict[str, Any]) -> None:
        raise ProtocolError("protocol_error", "the session has started; StartRecognition comes once")

    async def set_config(self, message: dict[str, Any]) -> None:
        """A `transcription_config` whose partials and end-of-utterance switch take effect now."""
        config = message.get("transcription_config")
        if not isinstance(config, dict) or set(message) - {"message", "transcription_config"}:
            raise ProtocolError("invalid_message", "SetRecognitionConfig is {message, transcription_config}")
        given = sorted(name for name, value in config.items() if value is not None)
        fixed = [name for name in given if name not in (AGENT_MID_SESSION if self.agent else MID_SESSION)]
        if fixed:
            raise ProtocolError(
                "invalid_config", f"SetRecognitionConfig cannot set {echoable(fixed[0])!r}; start a new session"
            )
        assert self.config is not None
        before = Transcription(
            self.config.language, self.config.partials, self.config.end_of_utterance, self.config.terms
        )
        after = transcription(self.core, config, before, self.agent)
        self.config = replace(self.config, partials=after.partials, end_of_utterance=after.eou)

    async def force_end(self, message: dict[str, Any]) -> None:
        """The utterance in progress ends now; its final answers, or an empty one when none was in
        progress (`answer_alone`). `timestamp` is checked and not used."""
        check_fields(message, "ForceEndOfUtterance", {"timestamp"}, "message")
        timestamp = message.get("timestamp")
        if timestamp is not None and not number_within(timestamp, 0, math.inf, False):
            raise ProtocolError("invalid_message", "ForceEndOfUtterance's timestamp must be a number of seconds")
        if not await self.flush_for_client() and not self.failed:
            await self.answer_alone()

    async def answer_alone(self) -> None:
        """A `ForceEndOfUtterance` with no utterance to end: `EndOfUtterance` alone."""
        await self.send(end_of_utterance_message(self.seconds, forced=True))

    def partials_wanted(self) -> bool:
        assert self.config is not None
        return self.config.partials

    async def partial(self, utterance_id: int, text: str) -> None:
        start = self.pending.starts.get(utterance_id, self.seconds)
        await self.send(self.transcript("AddPartialTranscript", text, start, self.seconds, 0.0, None))

    async def final(self, event: FinalTranscript) -> None:
        """The utterance's final, when it has words or takes back a partial; `EndOfUtterance` after
        it when asked for, or when it answers `ForceEndOfUtterance` (once); then the partial held back for it."""
        assert self.config is not None
        spoken = self.pending.final(event.utterance_id) or bool(event.text.strip())
        answered_before = self.flush_answered
        answers = self.answers_flush(event.utterance_id) and not answered_before
        forced = {"forced": True} if answers else {}
        if spoken:
            language = event.language or self.config.language
            text = event.text.strip() + " " if event.text.strip() else ""
            final = self.transcript("AddTranscript", text, event.start, event.end, confidence(event), language)
            await self.send({**final, **forced})
        if answers or (spoken and self.config.end_of_utterance):
            await self.send(end_of_utterance_message(event.end, forced=answers))
        await self.release_held()

    def transcript(
        self, kind: str, text: str, start: float, end: float, sureness: float, language: str | None
    ) -> dict[str, Any]:
        """`AddTranscript` / `AddPartialTranscript`: each word spans the utterance (the engine gives no
        word timings), punctuation after a word its own result attached to it."""
        start, end = round(start, 3), round(max(start, end), 3)
        named = {"language": language} if language else {}
        results = []
        for token in text.split():
            word = token.rstrip(PUNCTUATION)
            if word:
                alternative = {"content": word, "confidence": sureness, **named}
                results.append({"type": "word", "start_time": start, "end_time": end, "alternatives": [alternative]})
            for mark in token[len(word) :]:
                results.append(
                    {
                        "type": "punctuation",
                        "start_time": end,
                        "end_time": end,
                        "attaches_to": "previous",
                        "is_eos": mark in SENTENCE_ENDS,
                        "alternatives": [{"content": mark, "confidence": 1.0, **named}],
                    }
                )
        metadata = {"transcript": text, "start_time": start, "end_time": end}
        return {"message": kind, "format": "2.9", "metadata": metadata, "results": results}


SPEAKERS_RESULT = {"message": "SpeakersResult", "speakers": []}


def end_of_utterance_message(at: float, *, forced: bool) -> dict[str, Any]:
    """`EndOfUtterance` at `at` s, `forced` (marked so) when it answers `ForceEndOfUtterance`."""
    at = round(at, 3)
    return {
        "message": "EndOfUtterance",
        "metadata": {"start_time": at, "end_time": at},
        **({"forced": True} if forced else {}),
    }


class AgentConnection(SpeechmaticsConnection):
    """A client of the Agent STT API: the same requests; each utterance's `AddPartialSegment`s and
    `AddSegment`, framed by `StartOfTurn` / `EndOfTurn` when the service closes turns."""

    protocol: ClassVar[str] = AGENT_PROTOCOL
    agent: ClassVar[bool] = True
    error_types: ClassVar[dict[str, str]] = AGENT_ERROR_TYPES

    def __init__(
        self,
        ws: web.WebSocketResponse,
        core: Core,
        request: web.Request,
        reading: ReadAhead,
        params: StreamParams | None,
    ) -> None:
        super().__init__(ws, core, request, reading, params)
        self.turns: set[int] = set()
        """The utterances whose `StartOfTurn` was sent (with the service's turns)."""

    async def partial(self, utterance_id: int, text: str) -> None:
        start = self.pending.starts.get(utterance_id, self.seconds)
        await self.turn_starts(utterance_id, start)
        await self.send(self.segment("AddPartialSegment", text, start, self.seconds))

    async def turn_starts(self, utterance_id: int, start: float) -> None:
        """`SpeechStarted` and `StartOfTurn` before a turn's first segment, with the service's turns:
        sent then, not on speech heard, so that they come after the turn before it ended."""
        assert self.config is not None
        if self.config.service_turns and utterance_id not in self.turns:
            self.turns.add(utterance_id)
            for kind in ("SpeechStarted", "StartOfTurn"):
                await self.send({"message": kind, "metadata": {"start_time": round(start, 3)}})

    async def final(self, event: FinalTranscript) -> None:
        """The segment, when it has words or takes back a partial (an empty one answers a
        `ForceEndOfUtterance` that ended nothing else); `SpeechEnded` and `EndOfTurn` after it with the
        service's turns, `EndOfTurn` alone after one answering `ForceEndOfUtterance` with the client's
        (Speechmatics: "flushed as an `AddSegment`, followed by `EndOfTurn`")."""
        assert self.config is not None
        shown = self.pending.final(event.utterance_id)
        answered_before = self.flush_answered
        answers = self.answers_flush(event.utterance_id) and not answered_before
        text = event.text.strip()
        if text or shown or answers:
            await self.turn_starts(event.utterance_id, event.start)
            await self.send(self.segment("AddSegment", text, event.start, event.end))
        end = {"metadata": {"end_time": round(event.end, 3)}}
        if event.utterance_id in self.turns:
            self.turns.discard(event.utterance_id)
            await self.send({"message": "SpeechEnded", **end})
            await self.send({"message": "EndOfTurn", **end})
        elif answers:
            await self.send({"message": "EndOfTurn", **end})
        await self.release_held()

    async def answer_alone(self) -> None:
        """A `ForceEndOfUtterance` with no utterance to end: an empty `AddSegment`, then (with the
        client's turns) `EndOfTurn`."""
        assert self.config is not None
        await self.send(self.segment("AddSegment", "", self.seconds, self.seconds))
        if not self.config.service_turns:  # with them, no turn is open to end
            await self.send({"message": "EndOfTurn", "metadata": {"end_time": round(self.seconds, 3)}})

    def segment(self, kind: str, text: str, start: float, end: float) -> dict[str, Any]:
        metadata = {"start_time": round(start, 3), "end_time": round(max(start, end), 3)}
        return {"message": kind, "segment": {"transcript": text}, "metadata": metadata}


async def refuse_parameters(
    core: Core, request: web.Request, ws: web.WebSocketResponse, exc: ParameterError
) -> web.StreamResponse:
    """A bad query refused after the upgrade, as Speechmatics refuses: an `Error`, then 1008."""
    error = {"message": "Error", "type": "invalid_message", "reason": echoable(f"{exc.parameter}: {exc}")}
    return await refuse_in_band(core, request, ws, error, WSCloseCode.POLICY_VIOLATION, ends_stream)


REALTIME = Api(PATH, "Speechmatics' real-time API", parse_query, SpeechmaticsConnection, ends_stream, refuse_parameters)
AGENT = Api(AGENT_PATH, "Speechmatics' Agent STT API", parse_query, AgentConnection, ends_stream, refuse_parameters)
