"""Cartesia's batch speech-to-text API (docs/cartesia.md): `POST /stt` with the file in a multipart form.

The form is read as every upload is (`uploads`: the same cap, pace, form reader and decode
threads), the file is decoded and run through a `Recording`, and the finals come back as one
Cartesia transcript: the text, its language and duration, and with `timestamp_granularities[]`
`word` its words. A file is any container FFmpeg reads; with `encoding` and `sample_rate` in the
query it is headerless PCM of that encoding and rate. Whatever `model` the client sends, the
engine's model answers.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web
from multidict import MultiDict, MultiMapping

from satellite_asr.audio import MAX_RATE, MIN_RATE
from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript
from satellite_asr.protocols import ProtocolError, cartesia_error
from satellite_asr.protocols.cartesia import ENCODINGS
from satellite_asr.protocols.iso639 import declared_language
from satellite_asr.protocols.streaming_apis import ParameterError, check_names, whole_parameter
from satellite_asr.protocols.uploads import (
    FormFields,
    UploadApi,
    UploadPace,
    bad_field,
    check_form_headers,
    read_form,
    upload_options,
)
from satellite_asr.session import SessionOptions

PROTOCOL = "cartesia-batch"
PATH = "/stt"
GRANULARITIES = "timestamp_granularities[]"
"""How the SDK names the repeated field of timestamp granularities; `word` is the one there is."""
SINGLE_FIELDS = {"file", "model", "language"}
REPEATED_FIELDS = {GRANULARITIES: 4}


class Form(FormFields):
    def __init__(self) -> None:
        super().__init__(SINGLE_FIELDS, REPEATED_FIELDS)


def parse_query(query: MultiMapping[str]) -> tuple[str, int] | None:
    """The raw audio's encoding (the daemon's name) and rate, when the query gives them: both or
    neither, as a headerless file needs both and a container says its own. `cartesia_version` is
    any text, as on the streams."""
    try:
        check_names(query, {"encoding", "sample_rate", "cartesia_version"}, set())
        rate = whole_parameter(query, "sample_rate", None, MIN_RATE, MAX_RATE)
    except ParameterError as exc:
        raise bad_field(exc.parameter, str(exc)) from None
    encoding = query.get("encoding")
    if encoding is not None and encoding not in ENCODINGS:
        raise bad_field("encoding", f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if (encoding is None) != (rate is None):
        missing = "sample_rate" if rate is None else "encoding"
        message = (
            f"{missing} is required with {'encoding' if rate is None else 'sample_rate'}: headerless audio needs both"
        )
        raise bad_field(missing, message)
    return (ENCODINGS[encoding], rate) if encoding is not None and rate is not None else None


def parse_form(fields: MultiDict[str], core: Core) -> tuple[SessionOptions, bool]:
    """The session's options and whether word timestamps were asked for; `model` is required, and not checked."""
    if not fields.get("model", "").strip():
        raise bad_field("model", "model is required (ink-whisper: the daemon's engine answers any)")
    granularities = fields.getall(GRANULARITIES, [])
    if any(value != "word" for value in granularities):
        raise bad_field(GRANULARITIES, f"{GRANULARITIES} may only be word, got {granularities!r}")
    language = declared_language(core, ("language", fields.get("language")), [], detect=False)
    return upload_options(core.settings, language, "", ()), bool(granularities)


def response_body(
    finals: list[FinalTranscript], seconds: float, options: SessionOptions, words: bool
) -> dict[str, Any]:
    """Cartesia's transcript. The engine gives no word timestamps: each word spans its utterance."""
    language = options.language or next((final.language for final in finals if final.language), None)
    body: dict[str, Any] = {
        "type": "transcript",
        "request_id": str(uuid.uuid4()),
        "text": " ".join(word for final in finals for word in final.text.split()),
        "language": language,
        "duration": round(seconds, 3),
    }
    if words:
        body["words"] = [
            {"word": word, "start": final.span[0], "end": final.span[1]}
            for final in finals
            for word in final.text.split()
        ]
    return body


class CartesiaBatchHandler(UploadApi):
    """aiohttp handler for `POST /stt`; `Access` has checked Host, Origin and key before it runs."""

    def error_body(self, error: ProtocolError, status: int) -> Any:
        """Cartesia's error body (`UploadApi.refuse`), the field at fault named in its message."""
        message = (
            f"{error.param}: {error.message}"
            if error.param and not error.message.startswith(f"{error.param}: ")
            else error.message
        )
        return cartesia_error(error.code, message)

    def check_headers(self, request: web.Request) -> tuple[str, int] | None:
        raw = parse_query(request.query)
        self.uploads.check_ready(PROTOCOL)
        check_form_headers(request, self.uploads.max_file_bytes)
        return raw

    async def answer(self, request: web.Request) -> web.Response:
        raw = self.check_headers(request)
        pace = UploadPace.from_settings(self.core.settings)
        file, fields = await read_form(request, Form(), self.uploads.max_file_bytes, pace)
        options, words = parse_form(fields, self.core)
        if file is None:
            raise bad_field("file", "the form has no `file` field with the audio")
        audio_file = await self.uploads.open_file(file, pcm=raw)
        finals, seconds = await self.uploads.transcribe(request, audio_file, PROTOCOL, options)
        return web.json_response(response_body(finals, seconds, options, words))
