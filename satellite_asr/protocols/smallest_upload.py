"""Smallest AI's Pulse pre-recorded API (docs/smallest.md): `POST /waves/v1/stt/?model=pulse` with the
audio file as the body, as LiveKit's `smallestai.STT.recognize` sends a WAV.

The body is read as every upload is (`uploads`: the same cap, pace and decode threads; the headers
checked as Deepgram's pre-recorded API checks its raw body), decoded by its own header and run
through a `Recording`; the finals come back as Smallest's `{status, transcription, words,
utterances, language, audio_length, metadata}`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from multidict import MultiMapping

from satellite_asr.audio import MAX_RATE, MIN_RATE
from satellite_asr.core import Core
from satellite_asr.protocols import ProtocolError, smallest_error
from satellite_asr.protocols.deepgram_prerecorded import raw_upload_settings, read_body
from satellite_asr.protocols.smallest import ENCODINGS as STREAMED
from satellite_asr.protocols.smallest import language_and_terms, utterance, word_spans
from satellite_asr.protocols.streaming_apis import (
    ParameterError,
    boolean_parameter,
    check_names,
    refuse_features,
    whole_parameter,
)
from satellite_asr.protocols.uploads import UploadApi, UploadPace, joined_text, upload_options

PROTOCOL = "smallest-upload"
PATH = "/waves/v1/stt/"
MODELS = ("pulse", "pulse-pro", "pulse-2")
"""Smallest's pre-recorded models: any is accepted, and the daemon's engine answers."""
ENCODINGS = (*STREAMED, "linear32", "opus", "ogg_opus")
"""Smallest's `encoding` names: any is accepted, as the body is decoded by its own header (an Ogg
Opus file is transcribed as the stream's Opus is not)."""
REFUSED_WHEN_ON = {"diarize": "speaker diarization"}
REFUSED_WHEN_GIVEN = {"webhook_url": "webhooks (the transcript is the answer to the request)"}


def parse_query(query: MultiMapping[str], core: Core) -> tuple[str | None, tuple[str, ...]]:
    """The language (None: detected) and keywords; `model` is required, as Smallest requires it.
    `encoding` and `sample_rate` are checked and not applied: the file's header says."""
    check_names(
        query,
        {"model", "language", "encoding", "sample_rate", "word_timestamps", "keywords", "diarize", "webhook_url"},
        set(),
    )
    refuse_features(query, REFUSED_WHEN_ON, REFUSED_WHEN_GIVEN)
    if query.get("model") not in MODELS:
        raise ParameterError("model", f"model is required, one of {', '.join(MODELS)}")
    if query.get("encoding", "linear16") not in ENCODINGS:
        raise ParameterError("encoding", f"encoding must be one of {', '.join(ENCODINGS)}")
    whole_parameter(query, "sample_rate", None, MIN_RATE, MAX_RATE)
    boolean_parameter(query, "word_timestamps", False)
    return language_and_terms(query, core)


class SmallestUploadHandler(UploadApi):
    """aiohttp handler for the POST; `Access` has checked Host, Origin and key before it runs."""

    def error_body(self, error: ProtocolError, status: int) -> Any:
        return smallest_error(status, error.code, error.message)

    def check_headers(self, request: web.Request) -> tuple[str | None, tuple[str, ...]]:
        """Everything that can refuse the request before its body is read; the query's settings."""
        return raw_upload_settings(self, request, PROTOCOL, parse_query)

    async def answer(self, request: web.Request) -> web.Response:
        language, terms = self.check_headers(request)
        body = await read_body(request, self.uploads.max_file_bytes, UploadPace.from_settings(self.core.settings))
        audio_file = await self.uploads.open_file(body)
        options = upload_options(self.core.settings, language, "", terms)
        finals, seconds = await self.uploads.transcribe(request, audio_file, PROTOCOL, options)
        spoken = [final for final in finals if final.text.strip()]
        detected = next((final.language for final in spoken if final.language), None)
        result: dict[str, Any] = {
            "status": "success",
            "transcription": joined_text(spoken),
            "words": [word for final in spoken for word in word_spans(final)],
            "utterances": [utterance(final) for final in spoken],
            "language": detected or language or self.core.settings.default_language,
            "audio_length": round(seconds, 3),
            "metadata": {"duration": round(seconds, 3), "fileSize": len(body)},
        }
        return web.json_response(result)
