"""Sarvam AI's speech-to-text REST API (docs/sarvam.md): `POST /speech-to-text` with the file in a
multipart form, which the `sarvamai` SDK's `speech_to_text.transcribe` and LiveKit's
`sarvam.STT.recognize` send.

The form is read as every upload is (`uploads`: the same cap, pace, form reader and decode
threads), the file (any container FFmpeg reads; with `input_audio_codec` a raw PCM one, 16-bit at
16 kHz) is run through a `Recording`, and the finals come back as Sarvam's `{request_id,
transcript, timestamps, language_code, ...}`.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web
from multidict import MultiDict

from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript
from satellite_asr.protocols import ProtocolError, sarvam_error
from satellite_asr.protocols.sarvam import check_model_and_mode, engine_language, parse_terms, sarvam_code
from satellite_asr.protocols.streaming_apis import ParameterError, boolean_parameter
from satellite_asr.protocols.uploads import (
    FormFields,
    UploadApi,
    UploadPace,
    bad_field,
    check_form_headers,
    joined_text,
    read_form,
    upload_options,
)
from satellite_asr.session import SessionOptions

PROTOCOL = "sarvam-rest"
PATH = "/speech-to-text"
RAW_CODECS = {"pcm_s16le", "pcm_l16", "pcm_raw"}
"""`input_audio_codec`s of headerless audio: 16-bit PCM at 16 kHz. Any other name (`wav`, `mp3`,
...) is a container, which FFmpeg finds in the file itself."""
SINGLE_FIELDS = {"file", "model", "mode", "language_code", "with_timestamps", "input_audio_codec", "keyterms"}


def parse_form(fields: MultiDict[str], core: Core) -> tuple[SessionOptions, str, bool, bool]:
    """The session's options, the language code asked, whether timestamps are, and whether the file
    is headerless PCM; `bad_field` naming the field at fault."""
    try:
        check_model_and_mode(fields)
        asked = fields.get("language_code", "unknown")
        language = engine_language(core, asked, "language_code")
        terms = parse_terms(core, fields.get("keyterms"), "keyterms")
        timestamps = boolean_parameter(fields, "with_timestamps", False)
    except ParameterError as exc:
        raise bad_field(exc.parameter, f"{exc.parameter}: {exc}") from None
    raw = fields.get("input_audio_codec") in RAW_CODECS
    return upload_options(core.settings, language, "", terms), asked, timestamps, raw


def response_body(finals: list[FinalTranscript], asked: str, timestamps: bool) -> dict[str, Any]:
    """Sarvam's transcript; `timestamps` (when asked) one chunk per utterance, as Sarvam's are
    chunks rather than words."""
    spoken = [final for final in finals if final.text.strip()]
    language = next((final.language for final in spoken if final.language), None)
    body: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "transcript": joined_text(spoken),
        "timestamps": None,
        "diarized_transcript": None,
        "language_code": sarvam_code(language, asked),
        "language_probability": None,
    }
    if timestamps:
        body["timestamps"] = {
            "words": [final.text.strip() for final in spoken],
            "start_time_seconds": [final.span[0] for final in spoken],
            "end_time_seconds": [final.span[1] for final in spoken],
        }
    return body


class SarvamRestHandler(UploadApi):
    """aiohttp handler for `POST /speech-to-text`; `Access` has checked Host, Origin and key before it runs."""

    def error_body(self, error: ProtocolError, status: int) -> Any:
        """Sarvam's `{"error": {"message", "code"}}`: its code for a bad request, the daemon's otherwise
        (`file_too_large` for a 413, as on every upload API)."""
        code = "invalid_request_error" if status in (400, 422) else error.code
        return sarvam_error(code, error.message)

    def check_headers(self, request: web.Request) -> None:
        self.uploads.check_ready(PROTOCOL)
        check_form_headers(request, self.uploads.max_file_bytes)

    async def answer(self, request: web.Request) -> web.Response:
        self.check_headers(request)
        form = FormFields(SINGLE_FIELDS, {}, {}, self.core.settings.max_context_chars)
        pace = UploadPace.from_settings(self.core.settings)
        file, fields = await read_form(request, form, self.uploads.max_file_bytes, pace)
        options, asked, timestamps, raw = parse_form(fields, self.core)
        if file is None:
            raise bad_field("file", "the form has no `file` field with the audio")
        audio_file = await self.uploads.open_file(file, pcm=("s16le", 16000) if raw else None)
        finals, _ = await self.uploads.transcribe(request, audio_file, PROTOCOL, options)
        return web.json_response(response_body(finals, asked, timestamps))
