"""xAI's speech-to-text REST API (docs/xai.md): `POST /v1/stt` with the file in a multipart form,
which LiveKit's `xai.STT.recognize` and any HTTP client send.

The form is read as every upload is (`uploads`: the same cap, pace, form reader and decode
threads), the file is decoded and run through a `Recording`, and the finals come back as xAI's
`{text, language, duration, words}`. A file is any container FFmpeg reads; with `audio_format`
`pcm`, `mulaw` or `alaw` and a `sample_rate` it is headerless audio of that encoding and rate.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from multidict import MultiDict

from satellite_asr.core import Core
from satellite_asr.events import FinalTranscript
from satellite_asr.protocols import ProtocolError, checked_biasing, checked_language, xai_error
from satellite_asr.protocols.streaming_apis import ParameterError, boolean_parameter, refuse_features, whole_parameter
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
from satellite_asr.protocols.xai import ENCODINGS, MAX_CHANNELS, MAX_KEYTERMS, REFUSED_WHEN_ON, SAMPLE_RATES, spanning
from satellite_asr.session import SessionOptions

PROTOCOL = "xai-rest"
PATH = "/v1/stt"
CONTAINERS = {"wav", "mp3", "ogg", "opus", "flac", "aac", "mp4", "m4a", "mkv"}
"""`audio_format` hints of containers, which FFmpeg finds in the file itself: taken, not needed."""
SINGLE_FIELDS = {
    "file",
    "url",
    "audio_format",
    "sample_rate",
    "sample_rate_hertz",
    "language",
    "format",
    "multichannel",
    "channels",
    "diarize",
    "filler_words",
}


def parse_form(fields: MultiDict[str], core: Core) -> tuple[SessionOptions, tuple[str, int] | None]:
    """The session's options and, for headerless audio, its encoding (the daemon's name) and rate;
    `bad_field` (or `context_too_long`) naming the field at fault."""
    if "url" in fields:
        raise bad_field("url", "this server does not fetch audio; send the file in the `file` field")
    try:
        refuse_features(fields, REFUSED_WHEN_ON, {})
        boolean_parameter(fields, "format", False)  # the engine writes its own formatting
        boolean_parameter(fields, "filler_words", False)
        channels = whole_parameter(fields, "channels", 1, 1, MAX_CHANNELS)
        raw = raw_format(fields)
        if raw is not None and channels != 1:
            raise ParameterError("channels", "headerless audio is read as one channel here; send a WAV for more")
        terms = tuple(term.strip() for term in fields.getall("keyterm", []) if term.strip())
        language = checked_language(core, fields.get("language"), "language")
        checked_biasing(core, "", terms, "keyterm", "keyterm")
    except ParameterError as exc:
        raise bad_field(exc.parameter, str(exc)) from None
    return upload_options(core.settings, language, "", terms), raw


def raw_format(fields: MultiDict[str]) -> tuple[str, int] | None:
    """`audio_format` and `sample_rate` (or `sample_rate_hertz`) of headerless audio; None for a
    container, whose own header says them."""
    audio_format = fields.get("audio_format")
    if audio_format is None or audio_format in CONTAINERS:
        return None
    if audio_format not in ENCODINGS:
        known = ", ".join([*ENCODINGS, *sorted(CONTAINERS)])
        raise ParameterError("audio_format", f"audio_format must be one of {known}, got {audio_format!r}")
    name = "sample_rate" if "sample_rate" in fields else "sample_rate_hertz"
    rate = fields.get(name)
    if rate not in {str(known) for known in SAMPLE_RATES}:
        listed = ", ".join(str(known) for known in SAMPLE_RATES)
        raise ParameterError(name, f"{audio_format} audio needs a sample_rate of {listed}, got {rate!r}")
    return ENCODINGS[audio_format], int(rate)


def response_body(finals: list[FinalTranscript], seconds: float, options: SessionOptions) -> dict[str, Any]:
    """xAI's transcript. The engine gives no word timings: each word spans its utterance; `words`
    is left out when there are none, as xAI does."""
    words = [word for final in finals for word in spanning(final.text, final.start, final.end)]
    body: dict[str, Any] = {
        "text": joined_text(finals),
        "language": options.language or next((final.language for final in finals if final.language), ""),
        "duration": round(seconds, 2),
    }
    if words:
        body["words"] = words
    return body


class XaiRestHandler(UploadApi):
    """aiohttp handler for `POST /v1/stt`; `Access` has checked Host, Origin and key before it runs."""

    def error_body(self, error: ProtocolError, status: int) -> Any:
        """xAI's `{"code", "error"}`, the field at fault named in the sentence."""
        named = error.param and not error.message.startswith(f"{error.param}: ")
        return xai_error(error.code, f"{error.param}: {error.message}" if named else error.message)

    def check_headers(self, request: web.Request) -> None:
        self.uploads.check_ready(PROTOCOL)
        check_form_headers(request, self.uploads.max_file_bytes)

    async def answer(self, request: web.Request) -> web.Response:
        self.check_headers(request)
        form = FormFields(
            SINGLE_FIELDS, {"keyterm": MAX_KEYTERMS}, {"keyterm": "keyterm"}, self.core.settings.max_context_chars
        )
        pace = UploadPace.from_settings(self.core.settings)
        file, fields = await read_form(request, form, self.uploads.max_file_bytes, pace)
        options, raw = parse_form(fields, self.core)
        if file is None:
            raise bad_field("file", "the form has no `file` field with the audio")
        audio_file = await self.uploads.open_file(file, pcm=raw)
        finals, seconds = await self.uploads.transcribe(request, audio_file, PROTOCOL, options)
        return web.json_response(response_body(finals, seconds, options))
