"""The daemon: the shared core behind the HTTP/WebSocket and Wyoming servers.

The servers bind before the engine has loaded, so clients and health checks get answers at once;
`/health` says 503 until the engine is ready and decodes wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.http import HttpProcessingError

from satellite_asr.access import Access, error_response
from satellite_asr.config import ConfigError, Settings
from satellite_asr.core import Core
from satellite_asr.discovery import Discovery
from satellite_asr.engines.base import Engine
from satellite_asr.limits import (
    AcceptErrorLog,
    ConnectionLimit,
    CountedConnection,
    RateLimitedWarning,
    open_file_limit,
)
from satellite_asr.protocols import (
    assemblyai,
    azure,
    azure_rest,
    baseten,
    cartesia,
    cartesia_batch,
    cartesia_turns,
    deepgram,
    deepgram_flux,
    deepgram_prerecorded,
    elevenlabs,
    elevenlabs_upload,
    fireworks,
    gladia,
    gradium,
    inworld,
    meta,
    mistral,
    openai_realtime,
    openai_rest,
    sarvam,
    sarvam_realtime,
    sarvam_rest,
    simplismart,
    smallest,
    smallest_upload,
    soniox,
    speechmatics,
    streaming_apis,
    telnyx,
    websocket,
    wyoming,
    xai,
    xai_rest,
    zoom,
)
from satellite_asr.protocols.uploads import UploadApi, Uploads

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
"""The browser microphone page, served at `/` with its scripts under `/static/`."""
WEB_FILES = frozenset(path.name for path in WEB_DIR.iterdir() if path.is_file())

FILE_DESCRIPTOR_MARGIN = 128
"""File descriptors kept for what is not a capped connection: models, logs, zeroconf, the daemon's own
connections (Home Assistant, remote vLLM servers)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FINALS_SHARE = 0.5
"""At shutdown, the part of `shutdown_timeout_s` finals may take to decode (many clients' queued at
once take longer on a busy machine); the rest is for the connections' Closes."""
HANDLER_GRACE_S = 1.0
"""At shutdown, how long HTTP handlers may still run once their connections were closed or cut."""


class _MalformedRequests(logging.Filter):
    """aiohttp logs a request it could not parse (bad framing, control characters in a header, a
    body encoding it cannot decode) as an ERROR with a traceback. It has already answered 400: the
    fault is the client's, and any client on the LAN could repeat it to flood the log. Such a
    record becomes one DEBUG line; everything else passes as aiohttp logs it. A body that cannot be
    decoded comes wrapped (`RequestPayloadError`) when aiohttp reads what the handler left unread."""

    def filter(self, record: logging.LogRecord) -> bool:
        fault = record.exc_info[1] if record.exc_info else None
        if isinstance(fault, web.RequestPayloadError):
            fault = fault.__cause__
        if isinstance(fault, HttpProcessingError) and fault.code < 500:
            first_line = (fault.message or "").strip().splitlines()[:1]
            log.debug("%s: %s", record.getMessage(), first_line[0] if first_line else fault.code)
            return False
        return True


http_log = logging.getLogger(f"{__name__}.http")
"""aiohttp's server log for this daemon's HTTP server (aiohttp's own `aiohttp.server` by default)."""
http_log.addFilter(_MalformedRequests())


class _CountingRunner(web.AppRunner):
    """aiohttp's runner whose sites listen through `CountedConnection`, so that every TCP connection
    to the HTTP port is counted against `connections` (the sites ask the runner for their protocol
    factory; its own shutdown goes on using aiohttp's server, which sees only counted connections)."""

    def __init__(
        self,
        app: web.Application,
        connections: ConnectionLimit,
        refused: Callable[[str], None],
        tls: ssl.SSLContext | None,
        handshake_timeout_s: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.connections = connections
        self._refused = refused
        self._tls = tls
        self._handshake_timeout_s = handshake_timeout_s
        self._handshakes: set[asyncio.Task[None]] = set()

    async def stop_handshakes(self) -> None:
        """Shutdown: a TLS handshake still going on once the sites stopped would get a handler after."""
        for handshake in self._handshakes:
            handshake.cancel()
        await asyncio.gather(*self._handshakes, return_exceptions=True)

    @property
    def server(self) -> Callable[[], asyncio.Protocol] | None:  # type: ignore[override]  # a factory, not a Server
        server = super().server
        if server is None:
            return None
        return functools.partial(
            CountedConnection,
            server,
            self.connections,
            self._refused,
            self._tls,
            self._handshake_timeout_s,
            self._handshakes,
        )


class Daemon:
    """Start with `start()`, stop with `stop()`; `engine` may be given (tests inject doubles)."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.access = Access(settings)
        self.core = Core(settings, engine)
        self.http_port = settings.http_port
        address = wyoming.parse_uri(settings.wyoming_uri)
        self.wyoming = wyoming.WyomingServer(address, self.core) if address is not None else None
        self.uploads = Uploads(self.core)
        """Every API's uploads: one cap, one pool of decode threads."""
        self.rest = openai_rest.OpenAIRestHandler(self.core, self.uploads)
        self.prerecorded = deepgram_prerecorded.PrerecordedHandler(self.core, self.uploads)
        self.elevenlabs_upload = elevenlabs_upload.ElevenLabsUploadHandler(self.core, self.uploads)
        self.cartesia_batch = cartesia_batch.CartesiaBatchHandler(self.core, self.uploads)
        self.azure_rest = azure_rest.AzureRestHandler(self.core, self.uploads)
        self.smallest_upload = smallest_upload.SmallestUploadHandler(self.core, self.uploads)
        self.xai_rest = xai_rest.XaiRestHandler(self.core, self.uploads)
        self.sarvam_rest = sarvam_rest.SarvamRestHandler(self.core, self.uploads)
        self.simplismart_rest = simplismart.SimplismartRestHandler(self.core, self.uploads)
        self.upload_apis: dict[str, UploadApi] = {
            openai_rest.TRANSCRIPTIONS_PATH: self.rest,
            deepgram.PATH: self.prerecorded,
            elevenlabs_upload.PATH: self.elevenlabs_upload,
            cartesia_batch.PATH: self.cartesia_batch,
            azure_rest.PATH: self.azure_rest,
            smallest_upload.PATH: self.smallest_upload,
            xai_rest.PATH: self.xai_rest,
            sarvam_rest.PATH: self.sarvam_rest,
            simplismart.PATH: self.simplismart_rest,
        }
        """The upload routes (POST), by path: what an `Expect: 100-continue` is checked against."""
        self.wyoming_port: int | None = None
        """The bound Wyoming TCP port once started (None when off or on a unix socket)."""
        self.discovery: Discovery | None = None
        self.websocket = websocket.WebSocketHandler(self.core)
        self.soniox = streaming_apis.StreamingApiHandler(self.core, soniox.SONIOX_REALTIME)
        self.deepgram = streaming_apis.StreamingApiHandler(self.core, deepgram.LISTEN)
        """Not among shutdown's `close_awaiting` (a Deepgram stream's settings are in its URL: every
        connection has its session, which `close_all` ends); kept, as the others are, so that a test
        reaches a live connection (`serving`)."""
        self.gradium = streaming_apis.StreamingApiHandler(self.core, gradium.REALTIME)
        self.zoom = streaming_apis.StreamingApiHandler(self.core, zoom.LIVE)
        self.meta = streaming_apis.StreamingApiHandler(self.core, meta.REALTIME)
        self.baseten = streaming_apis.StreamingApiHandler(self.core, baseten.STREAMING)
        self.simplismart = streaming_apis.StreamingApiHandler(self.core, simplismart.STREAMING)
        self.telnyx = streaming_apis.StreamingApiHandler(self.core, telnyx.TRANSCRIPTION)
        self.inworld = streaming_apis.StreamingApiHandler(self.core, inworld.STREAMING)
        self.speechmatics = streaming_apis.StreamingApiHandler(self.core, speechmatics.REALTIME)
        self.speechmatics_agent = streaming_apis.StreamingApiHandler(self.core, speechmatics.AGENT)
        self.gladia = gladia.GladiaHandler(self.core)
        self.azure = streaming_apis.StreamingApiHandler(self.core, azure.USP)
        self.http_connections = ConnectionLimit(
            "HTTP",
            settings.max_http_connections,
            settings.max_http_connections_per_address,
            total_setting="max_http_connections",
            per_address_setting="max_http_connections_per_address",
        )
        """Every TCP connection to the HTTP port, whatever it is doing (`CountedConnection`)."""
        self._http_refusals = RateLimitedWarning()
        self._runner: _CountingRunner | None = None
        self._accept_errors = AcceptErrorLog()

    def routes(self) -> list[tuple[str, str, Handler]]:
        """Every HTTP route: method, path, handler (the page's scripts are served under `/static/`).

        Each is behind `Access` (Host, Origin, API key) unless `access.PUBLIC_PATHS` lists it.
        """
        return [
            ("GET", websocket.PATH, self.websocket.handle),
            ("POST", openai_rest.TRANSCRIPTIONS_PATH, self.rest.upload),
            ("GET", openai_rest.MODELS_PATH, self.rest.models),
            ("GET", openai_rest.MODEL_PATH, self.rest.model),
            ("GET", openai_realtime.PATH, openai_realtime.RealtimeHandler(self.core).handle),
            ("GET", deepgram.PATH, self.deepgram.handle),
            ("POST", deepgram.PATH, self.prerecorded.upload),
            ("POST", elevenlabs_upload.PATH, self.elevenlabs_upload.upload),
            ("POST", cartesia_batch.PATH, self.cartesia_batch.upload),
            ("GET", deepgram_flux.PATH, streaming_apis.StreamingApiHandler(self.core, deepgram_flux.FLUX).handle),
            (
                "GET",
                assemblyai.PATH,
                streaming_apis.StreamingApiHandler(self.core, assemblyai.UNIVERSAL_STREAMING).handle,
            ),
            (
                "GET",
                elevenlabs.PATH,
                streaming_apis.StreamingApiHandler(self.core, elevenlabs.SCRIBE_REALTIME).handle,
            ),
            ("GET", cartesia.PATH, streaming_apis.StreamingApiHandler(self.core, cartesia.STREAMING).handle),
            ("GET", cartesia_turns.PATH, streaming_apis.StreamingApiHandler(self.core, cartesia_turns.TURNS).handle),
            ("GET", soniox.PATH, self.soniox.handle),
            ("GET", mistral.PATH, streaming_apis.StreamingApiHandler(self.core, mistral.REALTIME).handle),
            ("GET", smallest.PATH, streaming_apis.StreamingApiHandler(self.core, smallest.LIVE).handle),
            ("POST", smallest_upload.PATH, self.smallest_upload.upload),
            ("GET", xai.PATH, streaming_apis.StreamingApiHandler(self.core, xai.REALTIME).handle),
            ("GET", gradium.PATH, self.gradium.handle),
            ("GET", zoom.PATH, self.zoom.handle),
            ("GET", meta.PATH, self.meta.handle),
            ("GET", fireworks.PATH, streaming_apis.StreamingApiHandler(self.core, fireworks.STREAMING).handle),
            ("GET", inworld.PATH, self.inworld.handle),
            ("GET", speechmatics.PATH, self.speechmatics.handle),
            ("GET", speechmatics.LANGUAGE_PATH, self.speechmatics.handle),
            ("GET", speechmatics.AGENT_PATH, self.speechmatics_agent.handle),
            ("POST", gladia.PATH, self.gladia.create),
            ("GET", gladia.PATH, self.gladia.streams.handle),
            *(("GET", path, self.azure.handle) for path in azure.PATHS),
            ("POST", azure_rest.PATH, self.azure_rest.upload),
            ("POST", xai_rest.PATH, self.xai_rest.upload),
            ("GET", sarvam.PATH, streaming_apis.StreamingApiHandler(self.core, sarvam.STREAMING).handle),
            (
                "GET",
                sarvam_realtime.PATH,
                streaming_apis.StreamingApiHandler(self.core, sarvam_realtime.STREAMING).handle,
            ),
            ("POST", sarvam_rest.PATH, self.sarvam_rest.upload),
            ("GET", baseten.PATH, self.baseten.handle),
            ("GET", simplismart.STREAM_PATH, self.simplismart.handle),
            ("POST", simplismart.PATH, self.simplismart_rest.upload),
            ("GET", telnyx.PATH, self.telnyx.handle),
            ("GET", "/health", self._health),
            ("GET", "/metrics", self._metrics),
            ("GET", "/", self._index),
        ]

    async def _expect_continue(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue` (curl's on any body over 1 MB): "100 Continue" only when the headers
        pass what the request will meet (`Access`, then an upload's own checks); otherwise the
        refusal it would get, at once and before its body is sent. aiohttp runs this before the
        middlewares, so the access check is made here too. The refusal closes the connection:
        the body it announced was never sent. The rest is what aiohttp's own (private) handler does,
        as its documentation asks of a custom one: 417 for another expectation, and the interim
        answer written out by the handler."""
        refused = self.access.refused(request)
        upload = self.upload_apis.get(request.path) if request.method == "POST" else None
        if refused is None and upload is not None:
            refused = upload.refused_before_body(request)
        if refused is not None:
            refused.force_close()
            return refused
        if request.version != HttpVersion11:  # an HTTP/1.0 client gets no interim answer
            return None
        expect = request.headers[hdrs.EXPECT]
        if expect.lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
        if request.transport is not None:
            request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def start(self) -> None:
        self._accept_errors.install(asyncio.get_running_loop())
        self._check_open_file_limit()
        await self.core.start()
        app = web.Application(middlewares=[self.access.middleware, _json_errors])
        for method, path, handler in self.routes():
            if method == "GET":  # and HEAD, which uptime checks use
                app.router.add_get(path, handler, expect_handler=self._expect_continue)
            else:
                app.router.add_route(method, path, handler, expect_handler=self._expect_continue)
        app.router.add_get("/static/{name}", self._static)
        app.on_response_prepare.append(_revalidate_page)
        # aiohttp's keep-alive timer also runs from the connection's start and is not pushed back by
        # a request still arriving: it is the header timeout too (a client trickling bytes is closed).
        self._runner = _CountingRunner(
            app,
            self.http_connections,
            self._refused_http_connection,
            self._ssl_context(),
            self.settings.header_timeout_s,
            handle_signals=False,
            access_log=None,
            logger=http_log,
            keepalive_timeout=self.settings.header_timeout_s,
            shutdown_timeout=HANDLER_GRACE_S,
        )
        await self._runner.setup()
        host, port = self.settings.host, self.settings.http_port
        site = web.TCPSite(self._runner, host, port)  # TLS, if any, is the runner's: see CountedConnection
        try:
            await site.start()
        except OSError as exc:
            setting = "http_port" if exc.errno in (errno.EADDRINUSE, errno.EACCES) else "host"
            raise bind_error(exc, setting, f"[{host}]:{port}" if ":" in host else f"{host}:{port}") from None
        self.http_port = self._runner.addresses[0][1]
        log.info("HTTP/WebSocket server on %s:%d (ws path %s)", host, self.http_port, websocket.PATH)
        if self.wyoming is not None:
            try:
                await self.wyoming.start()
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and self.wyoming.address.port == self.http_port:
                    message = f"wyoming_uri and http_port: both ask for port {self.http_port}; give each its own"
                    raise ConfigError(message) from None
                raise bind_error(exc, "wyoming_uri", self.settings.wyoming_uri) from None
            self.wyoming_port = self.wyoming.port
        if self.settings.zeroconf:
            http_hosts = tuple(str(address[0]) for address in self._runner.addresses)
            wyoming_hosts = self.wyoming.hosts if self.wyoming is not None else ()
            self.discovery = Discovery.from_settings(
                self.settings, (self.http_port, http_hosts), (self.wyoming_port, wyoming_hosts)
            )
            await self.discovery.start()

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.settings.tls_cert:
            return None
        return tls_context(self.settings.tls_cert, self.settings.tls_key)

    async def stop(self) -> None:
        """Shutdown within `shutdown_timeout_s`, whatever clients do: stop accepting, send pending
        finals, close every connection (WebSocket 1001, Wyoming end of stream); when time runs out,
        cut the connections left and cancel what they had in flight. Then the model is freed.
        Finals still undecoded after `FINALS_SHARE` of the time are sent with the text already
        promised, so that the Closes go out in time however many clients had finals queued."""
        timeout_s = self.settings.shutdown_timeout_s
        hurry = asyncio.get_running_loop().call_later(timeout_s * FINALS_SHARE, self.core.sessions.hurry)
        try:
            async with asyncio.timeout(timeout_s):
                await self._close_gracefully()
        except TimeoutError:
            log.warning("shutdown: connections still open after %.1f s; cutting them", timeout_s)
        finally:
            hurry.cancel()
        if self.wyoming is not None:
            await self.wyoming.abort()
        self.websocket.abort_all()
        await self.core.sessions.cancel_all("shutdown")
        if self._runner is not None:
            await self._runner.cleanup()
        await self.uploads.close()
        await self.core.close()
        self._accept_errors.uninstall()

    def _refused_http_connection(self, reason: str) -> None:
        self.core.metrics.errors.labels("too_many_connections").inc()
        refused = self._http_refusals.occurred()
        if refused is not None:
            log.warning("refused %d HTTP connection(s) since the last such warning: %s", refused, reason)

    def _check_open_file_limit(self) -> None:
        """Warn when the capped connections (HTTP, Wyoming) could exhaust file descriptors."""
        s = self.settings
        needed = s.max_http_connections + s.max_wyoming_connections + FILE_DESCRIPTOR_MARGIN
        if open_file_limit() < needed:
            log.warning(
                "the open-file limit (%d) is below the connection caps (max_http_connections + "
                "max_wyoming_connections + %d for the rest): raise ulimit -n or lower the caps",
                open_file_limit(),
                FILE_DESCRIPTOR_MARGIN,
            )

    async def _close_gracefully(self) -> None:
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()
            await self._runner.stop_handshakes()
        if self.discovery is not None:
            await self.discovery.stop()
        # Side by side, so that a client that does not read (or answer a Close) holds up only its own
        # connection; then what is left (uploads).
        protocols = (
            openai_realtime.PROTOCOL,
            deepgram.PROTOCOL,
            deepgram_flux.PROTOCOL,
            assemblyai.PROTOCOL,
            elevenlabs.PROTOCOL,
            cartesia.PROTOCOL,
            cartesia_turns.PROTOCOL,
            soniox.PROTOCOL,
            speechmatics.PROTOCOL,
            speechmatics.AGENT_PROTOCOL,
            gladia.PROTOCOL,
            mistral.PROTOCOL,
            xai.PROTOCOL,
            gradium.PROTOCOL,
            zoom.PROTOCOL,
            meta.PROTOCOL,
            sarvam.PROTOCOL,
            sarvam_realtime.PROTOCOL,
            azure.PROTOCOL,
            smallest.PROTOCOL,
            baseten.PROTOCOL,
            simplismart.PROTOCOL,
            fireworks.PROTOCOL,
            telnyx.PROTOCOL,
            inworld.PROTOCOL,
        )
        closing = [self.core.sessions.close_all("shutdown", protocol=protocol) for protocol in protocols]
        # no session: their settings have not come (or, Azure's, they are between turns)
        awaiting = (
            self.soniox,
            self.speechmatics,
            self.speechmatics_agent,
            self.azure,
            self.gradium,
            self.zoom,
            self.meta,
            self.baseten,
            self.simplismart,
            self.telnyx,
            self.inworld,
        )
        closing += [handler.close_awaiting("shutdown") for handler in awaiting]
        await asyncio.gather(self._close_wyoming(), self._close_websockets(), *closing)
        await self.core.sessions.close_all("shutdown")

    async def _close_wyoming(self) -> None:
        if self.wyoming is not None:
            await self.wyoming.stop()

    async def _close_websockets(self) -> None:
        await self.core.sessions.close_all("shutdown", protocol="websocket")
        await self.websocket.close_all()  # the connections without a session

    async def _health(self, request: web.Request) -> web.Response:
        health = {**self.core.health(), "auth_required": self.access.key_required}
        return web.json_response(health, status=200 if self.core.ready else 503)

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / "index.html")

    async def _static(self, request: web.Request) -> web.FileResponse:
        """One of the page's files by name; any other is the daemon's JSON 404, as on every path
        (aiohttp's static route answered an empty 404, and 403 for the folder itself)."""
        name = request.match_info["name"]
        if name not in WEB_FILES:
            raise web.HTTPNotFound()
        return web.FileResponse(WEB_DIR / name)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.core.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )


@contextlib.asynccontextmanager
async def in_process_daemon(settings: Settings, engine: Engine | None = None) -> AsyncIterator[Daemon]:
    """A started daemon whose engine has loaded, stopped on exit (finals flushed): what the benches,
    the soak and the tests run their clients against. `engine` replaces the one the settings would
    build (tests inject doubles). A start that fails halfway (a port taken) stops what it started."""
    daemon = Daemon(settings, engine)
    try:
        await daemon.start()
        await daemon.core.wait_ready()
        yield daemon
    finally:
        await daemon.stop()


async def _revalidate_page(request: web.Request, response: web.StreamResponse) -> None:
    """The page and its scripts are checked with the daemon on every load (their ETag), so that
    after an upgrade a browser does not go on running the old scripts against the new daemon."""
    if request.path == "/" or request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-cache"


def bind_error(exc: OSError, setting: str, address: str) -> ConfigError:
    """A server that cannot listen, as the setting to change and why, not a traceback: the port is
    taken, the host name does not resolve, no interface has the address, a socket's folder is missing."""
    if isinstance(exc, socket.gaierror):
        reason = f"the name does not resolve ({exc.strerror})"
    elif exc.errno == errno.EADDRINUSE:
        reason = "another program listens there already"
    elif exc.errno == errno.EADDRNOTAVAIL:
        reason = "no interface of this machine has that address"
    elif exc.errno == errno.ENOENT:
        reason = "its folder does not exist"
    else:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return ConfigError(f"{setting}: cannot listen on {address}: {reason}")


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """The server's TLS context, or a `ConfigError` that names the file at fault: OpenSSL's own errors
    do not ("PEM lib"), and for an encrypted key it would ask for a pass phrase on the terminal."""
    for setting, path, marker, kind in (
        ("tls_cert", cert, "-----BEGIN CERTIFICATE-----", "PEM certificate"),
        ("tls_key", key, "PRIVATE KEY-----", "PEM private key"),
    ):
        try:
            text = Path(path).read_text(encoding="ascii", errors="replace")
        except OSError as exc:
            raise ConfigError(f"{setting}: cannot read {path} ({exc.strerror or exc})") from None
        if marker not in text:
            raise ConfigError(f"{setting}: {path} holds no {kind}")

    def no_pass_phrase() -> str:
        raise ConfigError(
            f"tls_key: {key} is encrypted; give the daemon an unencrypted one (openssl pkey -in KEY -out NEW_KEY)"
        )

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key, password=no_pass_phrase)
    except ssl.SSLError as exc:
        mismatch = exc.reason in ("KEY_VALUES_MISMATCH", "KEY_TYPE_MISMATCH", "NO_CERTIFICATE_ASSIGNED")
        reason = "the key does not match the certificate" if mismatch else str(exc)
        raise ConfigError(f"tls_cert/tls_key: cannot load {cert} with {key}: {reason}") from None
    return context


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """An unknown address or method is answered in JSON, in the shape its path's clients read
    (OpenAI's error object on OpenAI's paths), not aiohttp's plain text that an SDK cannot parse."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        message = f"{request.path} takes {allowed}, not {request.method}"
        response = error_response(request.path, 405, "method_not_allowed", message)
        response.headers["Allow"] = allowed
        return response
    except web.HTTPNotFound:
        bare = request.path.rstrip("/")
        slash = bare != request.path and any(route.canonical == bare for route in request.app.router.resources())
        hint = f" (the route is {bare}, without the trailing slash)" if slash else ""
        return error_response(
            request.path, 404, "not_found", f"this daemon has nothing at {request.method} {request.path}{hint}"
        )
