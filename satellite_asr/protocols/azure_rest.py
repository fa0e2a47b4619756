"""Azure AI Speech's REST API for short audio (docs/azure.md): `POST` a whole recording, WAV or Ogg
in the body, to the conversation path, and get one phrase back.

The body is read as every upload is (`uploads`: the same cap, pace and decode threads; the headers
checked as Deepgram's pre-recorded API checks its raw body), decoded and run through a `Recording`;
the finals come back as Azure's `{RecognitionStatus, DisplayText, Offset, Duration}` (with
`format=detailed` an `NBest`), the query read as the WebSocket's is. Some clients that cannot speak
USP (curl, a plain HTTP library) use it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from satellite_asr.protocols import ProtocolError, azure_error
from satellite_asr.protocols.azure import UrlSettings, phrase_body, url_settings
from satellite_asr.protocols.deepgram_prerecorded import raw_upload_settings, read_body
from satellite_asr.protocols.streaming_apis import confidence
from satellite_asr.protocols.uploads import UploadApi, UploadPace, joined_text, upload_options

PROTOCOL = "azure-rest"
PATH = "/speech/recognition/conversation/cognitiveservices/v1"


class AzureRestHandler(UploadApi):
    """aiohttp handler for the POST; `Access` has checked Host, Origin and key before it runs."""

    def error_body(self, error: ProtocolError, status: int) -> Any:
        """Azure's error body, the daemon's code before the sentence, as in the WebSocket's Close."""
        return azure_error(status, f"{error.code}: {error.message}")

    def check_headers(self, request: web.Request) -> UrlSettings:
        """Everything that can refuse the request before its body is read; the query's settings."""
        return raw_upload_settings(self, request, PROTOCOL, url_settings)

    async def answer(self, request: web.Request) -> web.Response:
        settings = self.check_headers(request)
        detailed = settings.detailed
        body = await read_body(request, self.uploads.max_file_bytes, UploadPace.from_settings(self.core.settings))
        audio_file = await self.uploads.open_file(body)
        options = upload_options(self.core.settings, settings.language, "", ())
        finals, seconds = await self.uploads.transcribe(request, audio_file, PROTOCOL, options)
        if not finals:
            return web.json_response(phrase_body("", 0.0, seconds, 0.0, detailed))
        sureness = min(confidence(final) for final in finals)  # the least sure of its utterances
        return web.json_response(phrase_body(joined_text(finals), finals[0].start, finals[-1].end, sureness, detailed))
