"""ElevenLabs' batch speech-to-text API (docs/elevenlabs.md): `POST /v1/speech-to-text` with the file
in a multipart form.

The form is read as OpenAI's uploads are (`uploads`: the same cap, pace, form reader and decode
threads), the file is decoded and run through a `Recording`, and the finals come back as one
ElevenLabs transcript: the text, and its words and the spaces between them. Features the daemon
does not have (diarization, webhooks, entity detection, a URL to fetch...) are refused by name
rather than left silently out. Whatever `model_id` the client sends, the engine's model answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import MultiDict, MultiMapping

from satellite_asr.audio import SAMPLE_RATE
from satellite_asr.biasing.context import MAX_CLIENT_TERMS, client_terms
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript
from satellite_asr.protocols import ProtocolError, checked_biasing, elevenlabs_error
from satellite_asr.protocols.iso639 import declared_language, three_letter
from satellite_asr.protocols.streaming_apis import (
    ParameterError,
    boolean_parameter,
    check_names,
    fraction_parameter,
    refuse_features,
    whole_parameter,
)
from satellite_asr.protocols.uploads import (
    FormFields,
    RequestError,
    UploadApi,
    UploadPace,
    bad_field,
    check_form_headers,
    read_form,
    upload_options,
)
from satellite_asr.session import SessionOptions

PROTOCOL = "elevenlabs-upload"
PATH = "/v1/speech-to-text"

SINGLE_FIELDS = {
    "model_id",
    "file",
    "file_format",
    "language_code",
    "tag_audio_events",
    "timestamps_granularity",
    "num_speakers",
    "temperature",
    "seed",
    "numbers_format",
    "no_verbatim",
    "multichannel_output_style",
    # refused when they ask for something (REFUSED_WHEN_ON, REFUSED_WHEN_GIVEN, URL_FIELDS)
    "diarize",
    "diarization_threshold",
    "use_multi_channel",
    "webhook",
    "webhook_id",
    "webhook_metadata",
    "entity_detection",
    "entity_redaction",
    "entity_redaction_mode",
    "transcript_edit",
    "additional_formats",
    "detect_speaker_roles",
    "use_speaker_library",
    "cloud_storage_url",
    "source_url",
}
MAX_SECONDARY_LANGUAGES = 20
REPEATED_FIELDS = {"keyterms": MAX_CLIENT_TERMS, "secondary_language_codes": MAX_SECONDARY_LANGUAGES}
"""Fields a client repeats to give a list (the SDK and the plugins send one part per item), and how often."""
REFUSED_WHEN_ON = {
    "diarize": "speaker diarization",
    "use_multi_channel": "a transcript per channel (the channels are mixed into one)",
    "webhook": "webhooks (the transcript is the answer to the request)",
    "detect_speaker_roles": "speaker roles",
    "use_speaker_library": "speaker identification",
}
REFUSED_WHEN_GIVEN = {
    "diarization_threshold": "speaker diarization",
    "webhook_id": "webhooks (the transcript is the answer to the request)",
    "entity_redaction_mode": "entity redaction",
    "transcript_edit": "transcript editing",
}
JSON_FIELDS = {
    "webhook_metadata": "webhooks (the transcript is the answer to the request)",
    "entity_detection": "entity detection",
    "entity_redaction": "entity redaction",
    "additional_formats": "additional formats (the transcript comes as JSON)",
}
"""Fields the SDK sends as JSON, and always sends: `null` (and an empty list) asks for nothing."""
URL_FIELDS = ("cloud_storage_url", "source_url")
CHOICES = {
    "file_format": ("other", "pcm_s16le_16"),
    "timestamps_granularity": ("word", "none", "character"),
    "numbers_format": ("digits", "words"),
    "multichannel_output_style": ("separate", "combined"),
}
"""Fields with a fixed set of values, the default first."""
QUERY = {"enable_logging", "token"}
MAX_SPEAKERS = 32
MAX_SEED = 2_147_483_647
NOT_REPORTED = 0.0
"""A word's `logprob` when the engine did not report one (Qwen3-ASR, a failed decode), and the
`language_probability` of a detected language (no engine reports how sure it is): the SDK requires
numbers. Not a measurement; docs/elevenlabs.md says so."""


def refused(name: str, feature: str) -> RequestError:
    return bad_field(name, f"this server does not do {feature}; leave {name} out")


@dataclass(frozen=True)
class ConvertRequest:
    """A checked `POST /v1/speech-to-text`."""

    file: bytes
    pcm: bool
    """The file is headerless 16 kHz mono 16-bit PCM (`file_format` `pcm_s16le_16`)."""
    options: SessionOptions
    granularity: str


def parse_query(query: MultiMapping[str]) -> None:
    """`enable_logging` is read and has no effect (the daemon keeps no transcripts); a `token` is
    refused, as the daemon makes none."""
    try:
        check_names(query, QUERY, set())
        boolean_parameter(query, "enable_logging", True)
    except ParameterError as exc:
        raise bad_field(exc.parameter, str(exc)) from None
    if "token" in query:
        message = "this server makes no single-use tokens; send the API key in the xi-api-key header"
        raise bad_field("token", message)


def _choice(fields: Mapping[str, str], name: str) -> str:
    choices = CHOICES[name]
    value = fields.get(name, choices[0])
    if value not in choices:
        raise ParameterError(name, f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _refuse_features(fields: MultiDict[str]) -> None:
    """The features the daemon does not have, refused when the form asks for them."""
    for name in URL_FIELDS:
        if fields.get(name, ""):
            message = (
                f"this server does not fetch audio from a URL ({name}): it would reach whatever address the "
                "URL names from inside your network, and it may have no internet; send the file itself in the "
                "`file` field"
            )
            raise RequestError("url_not_fetched", message, param=name)
    for name, feature in JSON_FIELDS.items():
        value = fields.get(name)
        if value is not None and value.strip() not in ("", "null", "[]"):
            raise refused(name, feature)
    try:
        refuse_features(fields, REFUSED_WHEN_ON, REFUSED_WHEN_GIVEN)
    except ParameterError as exc:
        raise bad_field(exc.parameter, str(exc)) from None


def parse_form(file: bytes | None, fields: MultiDict[str], core: Core) -> ConvertRequest:
    """The form's fields checked, as session options; `model_id` is required, and not checked."""
    _refuse_features(fields)
    if not fields.get("model_id", "").strip():
        raise bad_field("model_id", "model_id is required (scribe_v1, scribe_v2: the daemon's engine answers any)")
    if file is None:
        raise bad_field("file", "the form has no `file` field with the audio")
    try:
        file_format = _choice(fields, "file_format")
        granularity = _choice(fields, "timestamps_granularity")
        _choice(fields, "numbers_format")
        _choice(fields, "multichannel_output_style")
        for name in ("tag_audio_events", "no_verbatim"):
            boolean_parameter(fields, name, False)
        whole_parameter(fields, "num_speakers", None, 1, MAX_SPEAKERS)
        whole_parameter(fields, "seed", None, 0, MAX_SEED)
        fraction_parameter(fields, "temperature", 0.0, 2.0)
    except ParameterError as exc:
        raise bad_field(exc.parameter, str(exc)) from None
    secondary = [("secondary_language_codes", code) for code in fields.getall("secondary_language_codes", [])]
    language = declared_language(core, ("language_code", fields.get("language_code")), secondary, detect=False)
    terms = client_terms(fields.getall("keyterms", []))
    checked_biasing(core, "", terms, "keyterms", "keyterms")
    options = upload_options(core.settings, language, "", terms)
    return ConvertRequest(file, file_format == "pcm_s16le_16", options, granularity)


class Form(FormFields):
    """The form's fields: too many `keyterms`, or one too long to read, are refused as biasing over
    its limits."""

    def __init__(self, max_context_chars: int) -> None:
        super().__init__(SINGLE_FIELDS, REPEATED_FIELDS, {"keyterms": "keyterms"}, max_context_chars)


# --- the response --------------------------------------------------------------------------------


def words(finals: list[FinalTranscript], granularity: str) -> list[dict[str, Any]]:
    """ElevenLabs' words: each word, and a `spacing` between two. The engine gives no word timestamps:
    each word spans its utterance (and each of its characters, with `character`), and the space
    between two utterances spans the pause; a made-up time per word would look measured."""
    if granularity == "none":
        return []
    entries: list[dict[str, Any]] = []
    for final in finals:
        tokens = final.text.split()
        if not tokens:  # a noise: no words, and no space before it
            continue
        start, end = round(final.start, 3), round(final.end, 3)
        logprob = NOT_REPORTED if final.avg_logprob is None else final.avg_logprob
        if entries:
            entries.append(_entry(" ", "spacing", entries[-1]["end"], start, logprob))
        for index, token in enumerate(tokens):
            if index:
                entries.append(_entry(" ", "spacing", start, end, logprob))
            word = _entry(token, "word", start, end, logprob)
            if granularity == "character":
                word["characters"] = [{"text": char, "start": start, "end": end} for char in token]
            entries.append(word)
    return entries


def _entry(text: str, kind: str, start: float, end: float, logprob: float) -> dict[str, Any]:
    return {"text": text, "start": start, "end": end, "type": kind, "speaker_id": None, "logprob": logprob}


def response_body(finals: list[FinalTranscript], seconds: float, parsed: ConvertRequest) -> dict[str, Any]:
    """ElevenLabs' transcript: `language_probability` is 1 when the language was set (by the client or
    `default_language`) rather than detected, and `NOT_REPORTED` when the engine detected it. The
    text's words are single-spaced, as `words` spaces them, so that its entries joined are the text."""
    declared = parsed.options.language
    language = declared or next((final.language for final in finals if final.language), None) or ""
    return {
        "language_code": three_letter(language) if language else "",
        "language_probability": 1.0 if declared else NOT_REPORTED,
        "text": " ".join(word for final in finals for word in final.text.split()),
        "words": words(finals, parsed.granularity),
        "transcription_id": uuid.uuid4().hex,
        "audio_duration_secs": round(seconds, 3),
    }


# --- the handler ---------------------------------------------------------------------------------


class ElevenLabsUploadHandler(UploadApi):
    """aiohttp handler for `POST /v1/speech-to-text`; `Access` has checked Host, Origin and key before it runs."""

    def error_body(self, error: ProtocolError, status: int) -> Any:
        """ElevenLabs' error body (`UploadApi.refuse`)."""
        return elevenlabs_error(error.code, error.message)

    def check_headers(self, request: web.Request) -> None:
        parse_query(request.query)
        self.uploads.check_ready(PROTOCOL)
        check_form_headers(request, self.uploads.max_file_bytes)

    async def answer(self, request: web.Request) -> web.Response:
        self.check_headers(request)
        pace = UploadPace.from_settings(self.core.settings)
        form = Form(self.core.settings.max_context_chars)
        file, fields = await read_form(request, form, self.uploads.max_file_bytes, pace)
        parsed = parse_form(file, fields, self.core)
        audio_file = await self.uploads.open_file(parsed.file, pcm=("s16le", SAMPLE_RATE) if parsed.pcm else None)
        finals, seconds = await self.uploads.transcribe(request, audio_file, PROTOCOL, parsed.options)
        return web.json_response(response_body(finals, seconds, parsed))
