"""Deepgram's pre-recorded API (docs/deepgram.md): `POST /v1/listen` with a whole audio file as the body.

The query is checked as the live API's is (`deepgram.parse_params`), the file is decoded and run
through a `Recording` as OpenAI's uploads are (`uploads`: the same cap, pace and decode threads),
and the finals come back as one Deepgram response: the transcript, its words, and with
`utterances=true` each utterance. The daemon does not fetch a URL given in a JSON body.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import re
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from aiohttp import web
from multidict import MultiMapping

from satellite_asr.core import Core
from satellite_asr.engines.base import EngineInfo
from satellite_asr.events import FinalTranscript
from satellite_asr.protocols import ProtocolError, deepgram_error
from satellite_asr.protocols.deepgram import (
    IGNORED,
    REFUSED_WHEN_GIVEN,
    REFUSED_WHEN_ON,
    REPEATABLE,
    created_now,
    language_and_terms,
    metadata,
    one_alternative,
)
from satellite_asr.protocols.streaming_apis import (
    ParameterError,
    boolean_parameter,
    check_names,
    confidence,
    refuse_features,
)
from satellite_asr.protocols.uploads import (
    READ_BYTES,
    RequestError,
    UploadApi,
    UploadPace,
    check_content_encoding,
    client_fault,
    joined_text,
    read_limited,
    too_large,
    upload_options,
)

PROTOCOL = "deepgram-prerecorded"
USED = {"language", "detect_language", "keyterm", "keywords", "model", "alternatives", "utterances", "utt_split"}
"""Parameters that set something of the transcription (docs/deepgram.md)."""
IGNORED_HERE = {"diarize_model", "custom_topic_mode", "custom_intent_mode"}
"""Settings of features refused here: alone they ask for nothing."""
REFUSED_UNLESS_FALSE = {
    **REFUSED_WHEN_ON,
    "paragraphs": "paragraphs",
    "summarize": "summaries",
    "topics": "topic detection",
    "intents": "intent recognition",
    "sentiment": "sentiment analysis",
}
"""Features asked for with `true` (`summarize` also with `v2`): refused rather than silently missing."""
REFUSED_HERE = {
    **REFUSED_WHEN_GIVEN,
    "custom_topic": "topic detection",
    "custom_intent": "intent recognition",
    "encoding": "headerless audio (send WAV, FLAC, MP3, Ogg or another container: its header says the encoding)",
    "sample_rate": "headerless audio (send WAV, FLAC, MP3, Ogg or another container: its header says the rate)",
}
"""Features refused whatever their value; a file's encoding and rate are read from its container."""
MEDIA_TYPES = ("audio/", "video/")
"""What a body's `Content-Type` may begin with, besides `FILE_TYPES`."""
FILE_TYPES = {"application/octet-stream", "application/ogg", "application/mp4"}
"""The other types of a body that is a file: any bytes (the deepgram-sdk's) and two audio containers
as their registered names (a `.ogg`, a `.mp4` or `.m4a` named so by the sender's system)."""
EDGE_PUNCTUATION = re.compile(r"^\W+|\W+$")
"""What a word's `punctuated_word` has around it that its `word` has not: quotes, commas, stops."""
Detection = Literal["detect_language", "multi"]


@dataclass(frozen=True)
class PrerecordedParams:
    """The transcription's settings from the URL's query."""

    language: str | None
    """None: the engine detects it."""
    detection: Detection | None
    """How the detected language is reported: `detected_language` in the channel, or `languages` in the alternative."""
    terms: tuple[str, ...]
    utterances: bool


def parse_params(query: MultiMapping[str], core: Core) -> PrerecordedParams:
    """The transcription's settings, or `ParameterError` naming the first parameter at fault."""
    known = USED | IGNORED | IGNORED_HERE | set(REFUSED_UNLESS_FALSE) | set(REFUSED_HERE)
    check_names(query, known, REPEATABLE | {"custom_topic", "custom_intent"})
    for name, feature in REFUSED_UNLESS_FALSE.items():
        if query.get(name, "false").lower() != "false":
            raise ParameterError(name, f"this server does not do {feature}; leave {name} out or set it to false")
    refuse_features(query, {}, REFUSED_HERE)
    one_alternative(query)
    utt_split = query.get("utt_split", "0.8")
    if not positive_number(utt_split):
        raise ParameterError("utt_split", f"utt_split must be a number of seconds above 0, got {utt_split!r}")
    language = query.get("language")
    detection: Detection | None = "multi" if language == "multi" else None
    if boolean_parameter(query, "detect_language", False):
        if language is not None:
            raise ParameterError("detect_language", "give language or detect_language=true, not both")
        detection = "detect_language"
    named, terms = language_and_terms(query, core, detect=detection is not None)
    return PrerecordedParams(named, detection, terms, boolean_parameter(query, "utterances", False))


def positive_number(value: str) -> bool:
    """A number above 0 written in ASCII: `float` also reads other scripts' digits (an Arabic-Indic
    one, U+0661), which no client means as a number here (as in `fraction_parameter`)."""
    if not value.isascii():
        return False
    try:
        number = float(value)
    except ValueError:
        return False
    return math.isfinite(number) and number > 0


def check_body_headers(request: web.Request, max_file_bytes: int) -> None:
    """What the headers tell of the body: its declared size (413), its encoding (415), and that it
    is a file (a JSON body names a URL: 400; anything else not audio: 415)."""
    if request.content_length is not None and request.content_length > max_file_bytes:
        raise too_large(max_file_bytes)
    check_content_encoding(request)
    media_type = request.content_type
    if media_type == "application/json":
        message = (
            "this server does not fetch audio from a URL: it would reach whatever address the URL names "
            "from inside your network, and it may have no internet; send the file itself as the body "
            "(Content-Type audio/* or application/octet-stream; the SDK's transcribe_file)"
        )
        raise RequestError("url_not_fetched", message)
    if media_type not in FILE_TYPES and not media_type.startswith(MEDIA_TYPES):
        message = (
            f"the body's Content-Type is {media_type!r}: send the audio file itself as the body, "
            "with Content-Type audio/* (audio/wav, audio/mpeg, ...) or application/octet-stream"
        )
        raise RequestError("unsupported_media_type", message, status=415)


_Settings = TypeVar("_Settings")


def raw_upload_settings(
    api: UploadApi, request: web.Request, protocol: str, parse: Callable[[MultiMapping[str], Core], _Settings]
) -> _Settings:
    """What can refuse an upload whose body is the file (Deepgram's, Azure's, Smallest's) before the
    body is read: its query as `parse` reads it (a `ParameterError` is a 400 naming the parameter),
    a free upload slot, and the body's headers; the query's settings."""
    try:
        settings = parse(request.query, api.core)
    except ParameterError as exc:
        raise RequestError("invalid_query_parameter", f"{exc.parameter}: {exc}") from None
    api.uploads.check_ready(protocol)
    check_body_headers(request, api.uploads.max_file_bytes)
    return settings


async def read_body(request: web.Request, max_file_bytes: int, pace: UploadPace) -> bytes:
    """The whole body, its size checked while reading; a body slower than `pace` allows is refused (408)."""
    try:
        read = functools.partial(request.content.read, READ_BYTES)
        return await read_limited(read, max_file_bytes, pace, functools.partial(too_large, max_file_bytes))
    except web.RequestPayloadError as exc:  # a body its Content-Encoding cannot decode
        raise RequestError("invalid_request", f"the request body cannot be read: {client_fault(exc)}") from None


# --- the response --------------------------------------------------------------------------------


def bare_word(token: str) -> str:
    """A token as Deepgram's `word` has it: lowercase, without the punctuation around it."""
    return EDGE_PUNCTUATION.sub("", token).lower() or token.lower()


def words(final: FinalTranscript, language: str | None) -> list[dict[str, Any]]:
    """The final's words, each spanning the whole utterance with the final's confidence: the engine
    gives no word timestamps, and a made-up time per word would look measured."""
    sureness = confidence(final)
    start, end = round(final.start, 3), round(final.end, 3)
    spans = [
        {"word": bare_word(token), "start": start, "end": end, "confidence": sureness, "punctuated_word": token}
        for token in final.text.split()
    ]
    return [{**span, "language": language} for span in spans] if language else spans


@dataclass(frozen=True)
class Transcribed:
    """A file's transcription, and what Deepgram's metadata says of the request."""

    finals: list[FinalTranscript]
    """Finals that have words, in order."""
    seconds: float
    sha256: str
    engine: EngineInfo
    """The engine that answered (`metadata`'s model)."""


def response_body(result: Transcribed, params: PrerecordedParams) -> dict[str, Any]:
    """Deepgram's response: one channel with one alternative (the finals joined by spaces), and
    the utterances when asked for."""
    finals = result.finals
    multi = params.detection == "multi"
    alternative: dict[str, Any] = {
        "transcript": joined_text(finals),
        "confidence": _mean([confidence(final) for final in finals if final.avg_logprob is not None]),
        "words": [word for final in finals for word in words(final, final.language if multi else None)],
    }
    channel: dict[str, Any] = {"alternatives": [alternative]}
    languages = _by_word_count(finals)
    if languages and multi:
        alternative["languages"] = languages
    language = next((final.language for final in finals if final.language), None)
    if language and params.detection == "detect_language":
        channel["detected_language"] = language
    results: dict[str, Any] = {"channels": [channel]}
    if params.utterances:
        results["utterances"] = [_utterance(final, final.language if multi else None) for final in finals]
    summary = metadata(str(uuid.uuid4()), result.sha256, created_now(), result.seconds, 1, result.engine)
    return {"metadata": summary, "results": results}


def _utterance(final: FinalTranscript, language: str | None) -> dict[str, Any]:
    utterance = {
        "start": round(final.start, 3),
        "end": round(final.end, 3),
        "confidence": confidence(final),
        "channel": 0,
        "transcript": final.text.strip(),
        "words": words(final, language),
        "id": str(uuid.uuid4()),
    }
    return utterance | {"languages": [language]} if language else utterance


def _by_word_count(finals: Sequence[FinalTranscript]) -> list[str]:
    """The languages the finals were heard in, the one with the most words first (Deepgram's order
    for `languages`): each utterance and its words have the language the engine reported for it."""
    counts: Counter[str] = Counter()
    for final in finals:
        if final.language:
            counts[final.language] += len(final.text.split())
    return [language for language, _ in counts.most_common()]


def _mean(values: Sequence[float]) -> float:
    """The transcript's confidence: of the finals whose engine said how sure it was (0 is no measure)."""
    return round(sum(values) / len(values), 4) if values else 0.0


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the handler ---------------------------------------------------------------------------------


class PrerecordedHandler(UploadApi):
    """aiohttp handler for `POST /v1/listen`; `Access` has checked Host, Origin and key before it runs."""

    def error_body(self, error: ProtocolError, status: int) -> Any:
        """Deepgram's error body (`UploadApi.refuse`)."""
        return deepgram_error(error.code, error.message)

    def check_headers(self, request: web.Request) -> PrerecordedParams:
        """Everything that can refuse the request before its body is read: the query first."""
        return raw_upload_settings(self, request, PROTOCOL, parse_params)

    async def answer(self, request: web.Request) -> web.Response:
        params = self.check_headers(request)
        pace = UploadPace.from_settings(self.core.settings)
        body = await read_body(request, self.uploads.max_file_bytes, pace)
        # in a decode thread (hashlib lets go of the GIL): a 25 MB body takes a tenth of a second,
        # which on the event loop every live stream would wait for
        sha256 = await asyncio.get_running_loop().run_in_executor(self.uploads.decoding, _sha256, body)
        audio_file = await self.uploads.open_file(body)
        options = upload_options(self.core.settings, params.language, "", params.terms)
        finals, seconds = await self.uploads.transcribe(request, audio_file, PROTOCOL, options)
        result = Transcribed(finals, seconds, sha256, self.core.engine_info)
        return web.json_response(response_body(result, params))
