"""Who may use the HTTP server: the Host it is addressed by, the page a request comes from, the API key.

One aiohttp middleware checks every request, so a route added later is protected by default; only
the paths in `PUBLIC_PATHS` / `PUBLIC_PREFIXES` (the browser page and `/health`) skip the checks.
In order:

1. Without an API key, `Host` must be an IP address, one of the daemon's own names, or in
   `allowed_hosts`: a page on a DNS-rebinding name (`evil.example` pointed at 192.168.1.10) is
   same-origin with itself, so the Origin check alone would let it in. With a key the check is
   moot (such a page cannot present the key: browsers send none by themselves) and is skipped,
   which spares deployments behind a proxy a list of names. 403 `host_not_allowed`.
2. `Origin`, when a browser sends one, must be the daemon's own page (the scheme the request came
   in by, the host and port of `Host`; no port in `Host` means the scheme's default) or in
   `allowed_origins`; clients without an Origin (CLI, SDKs, Home Assistant) pass. 403
   `origin_not_allowed`. `X-Forwarded-Proto` is not trusted: behind a TLS proxy, list the page.
3. With an API key set, the request must carry it: `Authorization: Bearer KEY` (or `Token KEY`,
   as Deepgram's clients send it, or `Api-Key KEY`, as Baseten's), `X-API-Key: KEY`, a WebSocket subprotocol
   `satellite-asr.key.KEY` (what a browser can send), `?api_key=KEY`, `xi-api-key: KEY` (as
   ElevenLabs' clients send it), `X-Gladia-Key: KEY` (Gladia's), `Ocp-Apim-Subscription-Key: KEY`
   (Azure AI Speech's), `api-subscription-key: KEY` (Sarvam AI's), or else the key alone in
   `Authorization`, as AssemblyAI's clients send it. On `IN_BAND_KEY_PATHS` (Soniox's and Meta's,
   whose clients may send the key in the stream's first message instead) the handler checks the key once
   that message has come (`check_key`), and refuses in the API's own message. On `TOKEN_PATHS`
   (Gladia's), a WebSocket presents the `token` that a keyed POST issued, which its handler checks.
   Compared in constant time and never logged. 401 `missing_api_key` / `invalid_api_key`.
4. A key offered as a subprotocol comes with `satellite-asr` beside it, the subprotocol every
   WebSocket route answers with: without it a browser fails the connection. 400 `invalid_subprotocol`.

Refusals are JSON: the project's `{"type":"error","code","message"}` (Meta's shape too, on
`META_PATHS`), OpenAI's `{"error":{...}}`
on the OpenAI-compatible paths (`OPENAI_PREFIXES`), Deepgram's `{"err_code","err_msg","request_id"}`
on Deepgram's (`DEEPGRAM_PATHS`), AssemblyAI's `{"error","code"}` on its (`ASSEMBLYAI_PATHS`),
ElevenLabs' `{"detail":{"status","message"}}` on its (`ELEVENLABS_PREFIX`), Cartesia's
`{"error_code","title","message","request_id"}` on its (`CARTESIA_PATHS`), Soniox's
`{"error_code","error_message"}` on its (`SONIOX_PATHS`), Speechmatics' `{"code","error"}` on its
(`speechmatics_path`), Gladia's `{"statusCode","message",...}` on its (`GLADIA_PATHS`), Mistral's
`{"object","message","type","param","code"}` on its (`MISTRAL_PATHS`), Azure AI Speech's
`{"error":{"code","message"}}` on its (`AZURE_PATHS`), Smallest AI's
`{"type","status","code","message"}` on its (`SMALLEST_PATHS`), xAI's `{"code","error"}` on its
(`XAI_PATHS`), Gradium's `{"type","message","code"}` on its (`GRADIUM_PATHS`), Sarvam AI's
`{"error":{"message","code"}}` on its (`SARVAM_PATHS`), Zoom's `{"code","error_code","message"}` on
Scribe Live's (`ZOOM_PATHS`), Telnyx's `{"errors": [{"code", "title", "detail"}]}` on its
(`TELNYX_PATHS`), Inworld's gRPC status `{"code","message","details"}` on its
(`INWORLD_PATHS`, whose clients send the key as `Authorization: Basic KEY`). Cartesia's
clients send the key as `X-API-Key` or `Authorization: Bearer`, Speechmatics' as `Authorization:
Bearer` (a browser's as `?jwt=KEY`, also taken there), both ways above; Azure's JavaScript SDK
sends `?Ocp-Apim-Subscription-Key=KEY` (or `?Authorization=Bearer KEY`), taken on its paths;
Fireworks AI's browser clients send `?Authorization=KEY`, taken on its (`FIREWORKS_PATHS`).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from satellite_asr.config import ConfigError, Settings
from satellite_asr.protocols import (
    assemblyai_error,
    azure_error,
    cartesia_error,
    deepgram_error,
    elevenlabs_error,
    gladia_error,
    gradium_error,
    inworld_error,
    mistral_error,
    openai_error,
    sarvam_error,
    smallest_error,
    soniox_error,
    speechmatics_error,
    telnyx_error,
    xai_error,
    zoom_error,
)

PUBLIC_PATHS = frozenset({"/", "/health"})
"""Served to anyone who can reach the daemon: the page and the health check."""
PUBLIC_PREFIXES = ("/static/",)
"""The page's scripts and styles."""
OPENAI_PREFIXES = ("/v1/audio/", "/v1/models", "/v1/realtime")
DEEPGRAM_PATHS = frozenset({"/v1/listen", "/v2/listen"})
"""Paths whose errors take Deepgram's `{"err_code", "err_msg", "request_id"}` shape."""
ASSEMBLYAI_PATHS = frozenset({"/v3/ws"})
"""Paths whose errors take AssemblyAI's `{"error": ...}` shape."""
ELEVENLABS_PREFIX = "/v1/speech-to-text"
"""ElevenLabs' speech-to-text paths (the upload and `/realtime`), whose errors take its `{"detail": ...}` shape."""
CARTESIA_PATHS = frozenset({"/stt", "/stt/websocket", "/stt/turns/websocket"})
"""Cartesia's speech-to-text paths (the upload and the two streams), whose errors take its
`{"error_code", ...}` shape."""
ELEVENLABS_KEY_HEADER = "xi-api-key"
SONIOX_PATHS = frozenset({"/transcribe-websocket"})
"""Paths whose errors take Soniox's `{"error_code", "error_message"}` shape."""
MISTRAL_PATHS = frozenset({"/v1/audio/transcriptions/realtime"})
"""Mistral's realtime path, under OpenAI's prefix: its errors take Mistral's `{"object": "error", ...}` shape."""
SMALLEST_PATHS = frozenset({"/waves/v1/stt/live", "/waves/v1/stt/"})
"""Smallest AI's Pulse paths (the stream and the upload), whose errors take its
`{"type": "error", "status", "message"}` shape."""
XAI_PATHS = frozenset({"/v1/stt"})
"""xAI's speech-to-text path, whose errors take its `{"code", "error"}` shape."""
GRADIUM_PATHS = frozenset({"/api/speech/asr"})
"""Gradium's speech-to-text path (its clients send the key as `x-api-key`), whose errors take its
`{"type": "error", "message", "code"}` shape."""
SARVAM_PATHS = frozenset({"/speech-to-text", "/speech-to-text/ws", "/speech-to-text-realtime/ws"})
"""Sarvam AI's speech-to-text paths (the upload, the stream and the realtime stream), whose errors take its
`{"error": {"message", "code"}}` shape; its clients send the key in `api-subscription-key`."""
SARVAM_KEY_HEADER = "api-subscription-key"
ZOOM_PATHS = frozenset({"/v2/aiservices/scribe/live"})
"""Zoom's Scribe Live path (its clients send the key as `Authorization: Bearer`), whose refusals take
Zoom's `{"code", "error_code", "message"}` shape."""
TELNYX_PATHS = frozenset({"/v2/speech-to-text/transcription"})
"""Telnyx's speech-to-text WebSocket (its clients send the key as `Authorization: Bearer`), whose
refusals take Telnyx's `{"errors": [{"code", "title", "detail"}]}` shape."""
GLADIA_PATHS = frozenset({"/v2/live"})
"""Gladia's live API: its POST (keyed, `X-Gladia-Key`) and its session's WebSocket, whose `token`
stands for the key (`TOKEN_PATHS`); errors take Gladia's `{"statusCode", "message", ...}` shape."""
GLADIA_KEY_HEADER = "X-Gladia-Key"
INWORLD_PATHS = frozenset({"/stt/v1/transcribe:streamBidirectional"})
"""Inworld's streaming speech-to-text path, whose clients send the key as `Authorization: Basic KEY`
(Inworld's key is its Base64 credentials, sent as they are: the whole of it is the key), and whose
refusals take a gRPC status's `{"code", "message", "details"}` shape."""
AZURE_PATHS = frozenset(
    {
        "/speech/recognition/interactive/cognitiveservices/v1",
        "/speech/recognition/conversation/cognitiveservices/v1",
        "/speech/recognition/dictation/cognitiveservices/v1",
        "/speech/universal/v2",
        "/stt/speech/universal/v2",
    }
)
"""Azure AI Speech's real-time paths, whose errors take its `{"error": {"code", "message"}}` shape,
and whose JavaScript SDK sends the key in the query too (a browser's WebSocket has no headers):
`?Ocp-Apim-Subscription-Key=KEY`, or a token as `?Authorization=Bearer KEY`."""
AZURE_KEY_HEADER = "Ocp-Apim-Subscription-Key"
TOKEN_PATHS = GLADIA_PATHS
"""Paths whose WebSocket (a GET with a `token` query) is authenticated by the token a keyed POST
issued: the handler checks it; the client does not send the key again."""
FIREWORKS_PATHS = frozenset({"/v1/audio/transcriptions/streaming"})
"""Fireworks AI's streaming path, whose browser clients send the key as `?Authorization=KEY`
(taken there); its errors take OpenAI's shape (`OPENAI_PREFIXES`), as Fireworks' API answers."""
META_PATHS = frozenset({"/v1/asr/realtime"})
"""Meta's real-time speech recognition path, whose clients send the key in the handshake (its
`authorization.accessToken`); its errors take the project's `{"type": "error", "code", "message"}`
shape, which is Meta's."""
IN_BAND_KEY_PATHS = SONIOX_PATHS | META_PATHS
"""Paths whose clients may send the key in the stream's first message (Soniox's `api_key`, Meta's
handshake's `authorization.accessToken`): the
handler checks it there (`check_key`), with the key the request carries, if any."""

SPEECHMATICS_PATH = re.compile(r"/v2(/[^/]+)?")
"""Speechmatics' real-time API (`/v2`, `/v2/<language>`) and its Agent STT API (`/v2/agent`), whose
errors take its `{"code", "error"}` shape, and whose browser clients send the key as `?jwt=KEY`."""
SPEECHMATICS_KEY_QUERY_PARAMETER = "jwt"

SUBPROTOCOL = "satellite-asr"
"""The WebSocket subprotocol the daemon accepts (and echoes) beside a key entry."""
KEY_SUBPROTOCOL_PREFIX = "satellite-asr.key."
"""A browser sends the key as the subprotocol `satellite-asr.key.KEY`, next to `satellite-asr`."""
KEY_QUERY_PARAMETER = "api_key"
ANY = "*"
DEFAULT_PORTS = {"http": 80, "https": 443}

_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")
"""A DNS name as `allowed_hosts` lists it: no scheme, port or spaces."""
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
"""HTTP token characters: what fits a header value and a WebSocket subprotocol unchanged."""


def load_api_key(settings: Settings) -> str | None:
    """The key from `api_key` or the first line of `api_key_file`; None when neither is set."""
    key, origin = settings.api_key, "api_key"
    if settings.api_key_file:
        origin = f"api_key_file {settings.api_key_file}"
        try:
            lines = Path(settings.api_key_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"{origin}: cannot be read ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{origin}: not UTF-8 text; its first line must be the key") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise ConfigError(f"{origin}: the file is empty; its first line must be the key")
    if not key:
        return None
    if not _TOKEN.match(key):
        raise ConfigError(
            f"{origin}: the key may only hold letters, digits and !#$%&'*+.^_`|~- (so that a browser can send it "
            "as a WebSocket subprotocol); e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return key


def mdns_host_label() -> str:
    """The label of the `LABEL.local` name zeroconf advertises the daemon's services at (the
    ServiceInfo's server, whose address records it answers): the host name's first label, with
    what a DNS host name may not hold made dashes."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]).strip("-") or "satellite-asr"


def own_host_names(settings: Settings) -> frozenset[str]:
    """Names that resolve to the daemon without `allowed_hosts`: localhost, its host name (DNS,
    /etc/hosts), `HOST.local` (avahi or systemd-resolved) and the name zeroconf points its services
    at. Not `zeroconf_name.local`: that names a service instance, and no address record answers it."""
    host = socket.gethostname().lower().rstrip(".")
    label = host.split(".")[0]
    names = {"localhost", host, label, f"{label}.local", f"{mdns_host_label().lower()}.local"}
    if settings.host not in ("", "0.0.0.0", "::"):
        names.add(settings.host.lower())
    return frozenset(names)


def split_host(value: str) -> tuple[str, int | None] | None:
    """`Host` header -> (lowercase name or address, port); None when it is not a host[:port]."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    else:
        name, _, port = value.partition(":")
    if not name or (port and not port.isdigit()):
        return None
    return name.rstrip("."), int(port) if port else None


def listed_host(entry: str) -> str:
    """An `allowed_hosts` entry as `Host` names are compared: a bare name, lowercase, an international
    name in the xn-- form a client sends. A port or a scheme would never match (the port is not part
    of the check), so it is refused, not ignored."""
    name = _ascii_name(entry.strip().lower().rstrip("."), "allowed_hosts", entry)
    if _is_ip(name.removeprefix("[").removesuffix("]")) or _HOST_NAME.fullmatch(name):
        return name
    bare = (split_host(urlsplit(name).netloc or name) or ("", None))[0]
    hint = f" (e.g. {bare!r})" if _HOST_NAME.fullmatch(bare) else ""
    raise ConfigError(f"allowed_hosts: {entry!r} is not a host name; list the name alone, without scheme or port{hint}")


def listed_origin(entry: str) -> str:
    """An `allowed_origins` entry as a browser sends `Origin`. A web page's (http, https) is
    scheme://host[:port], lowercase, the host in its xn-- form, without the scheme's default port:
    anything else could never match, so it is refused. An app's or an extension's origin
    (`capacitor://localhost`, `chrome-extension://ID`) and `null` are kept as written."""
    value = entry.strip().lower().rstrip("/")
    scheme, separator, rest = value.partition("://")
    if value == "null" or (separator and scheme not in DEFAULT_PORTS and rest and "/" not in rest):
        return value
    example = "e.g. https://ha.example.org or http://192.168.1.10:8123"
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:
        raise ConfigError(f"allowed_origins: {entry!r} has a port that is not a number ({example})") from None
    if url.scheme not in DEFAULT_PORTS or not url.hostname or url.path or url.query or url.fragment:
        raise ConfigError(
            f"allowed_origins: {entry!r} is not an origin: scheme://host[:port], nothing after ({example})"
        )
    if url.username is not None or url.password is not None:
        raise ConfigError("allowed_origins: an entry holds a user or password; an origin is scheme://host[:port]")
    hostname = _ascii_name(url.hostname, "allowed_origins", entry)
    host = f"[{hostname}]" if ":" in hostname else hostname
    return f"{url.scheme}://{host}" + (f":{port}" if port not in (None, DEFAULT_PORTS[url.scheme]) else "")


def _ascii_name(name: str, setting: str, entry: str) -> str:
    """An international domain name in the xn-- form that clients send in `Host` and `Origin`."""
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigError(f"{setting}: {entry!r} is not a valid international domain name") from None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Access:
    """The checks of the module docstring, configured once from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.api_key = load_api_key(settings)
        self.any_host = ANY in settings.allowed_hosts
        self.hosts = own_host_names(settings) | {listed_host(h) for h in settings.allowed_hosts if h != ANY}
        self.any_origin = ANY in settings.allowed_origins
        self.origins = frozenset(listed_origin(o) for o in settings.allowed_origins if o != ANY)

    @property
    def key_required(self) -> bool:
        return self.api_key is not None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = self.refused(request)
        return refused if refused is not None else await handler(request)

    def refused(self, request: web.Request) -> web.Response | None:
        """The refusal's response, in the shape the path's clients read, when the request may not go on."""
        refusal = self.refusal(request)
        return None if refusal is None else error_response(request.path, *refusal)

    def refusal(self, request: web.Request) -> tuple[int, str, str] | None:
        """(HTTP status, error code, message) when the request may not go on, else None."""
        if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES):
            return None
        host = request.headers.get("Host")
        if self.api_key is None and host is not None and not self.host_allowed(host):
            name = (split_host(host) or (host, None))[0]
            explanation = f"this daemon is not served as {name!r}; use its address, list the name in allowed_hosts"
            return 403, "host_not_allowed", explanation + " or set an api_key"
        origin = request.headers.get("Origin")
        if origin is not None and not self.origin_allowed(origin, host, request.scheme):
            return 403, "origin_not_allowed", f"pages from {origin} may not use this daemon; see allowed_origins"
        if self.api_key is not None and request.path in IN_BAND_KEY_PATHS:
            request[KEY_CHECK] = self
        elif request.path in TOKEN_PATHS and request.method == "GET" and "token" in request.query:
            pass  # the session's token, issued to a keyed POST, is checked by the handler
        elif self.api_key is not None:
            presented = presented_key(request)
            refusal = self.key_refusal([presented] if presented is not None else [], path=request.path)
            if refusal is not None:
                return refusal
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if any(p.startswith(KEY_SUBPROTOCOL_PREFIX) for p in offered) and SUBPROTOCOL not in offered:
            explanation = f"a client sending its key as a subprotocol must also offer the subprotocol {SUBPROTOCOL!r}"
            return 400, "invalid_subprotocol", explanation
        return None

    def key_refusal(
        self, offered: list[str], in_band_field: str | None = None, path: str = ""
    ) -> tuple[int, str, str] | None:
        """401 when `offered`, the keys a request carries, is empty or holds one that is not the daemon's.
        `in_band_field` names where the stream's first message may carry it, and `path` the request's
        (Inworld's clients send `Basic`), for the sentence."""
        assert self.api_key is not None
        if not offered:
            in_band = f", or in the first message's {in_band_field}" if in_band_field else ""
            basic = "Authorization: Basic KEY (Inworld's clients), " if path in INWORLD_PATHS else ""
            message = (
                f"this daemon requires an API key: send {basic}Authorization: Bearer KEY or X-API-Key: KEY{in_band} "
                f"(browsers: the WebSocket subprotocol {KEY_SUBPROTOCOL_PREFIX}KEY)"
            )
            return 401, "missing_api_key", message
        expected = self.api_key.encode()
        # surrogatepass: a header's undecodable byte and a JSON key's "\ud800" both encode (the key is ASCII)
        if not all(hmac.compare_digest(key.encode("utf-8", "surrogatepass"), expected) for key in offered):
            return 401, "invalid_api_key", "the API key is not valid"
        return None

    def host_allowed(self, header: str) -> bool:
        if self.any_host:
            return True
        parsed = split_host(header)
        if parsed is None:
            return False
        name = parsed[0]
        # A rebinding attack needs a DNS name: an address typed as such is not one.
        return _is_ip(name) or name in self.hosts or name.endswith(".localhost")

    def origin_allowed(self, origin: str, host: str | None, scheme: str) -> bool:
        """Listed, or the daemon's own page: `scheme` (the request's: http or https) and `Host`'s name
        and port, the scheme's default port when `Host` has none."""
        if self.any_origin or origin.lower().rstrip("/") in self.origins:
            return True
        own = split_host(host) if host is not None else None
        try:
            url = urlsplit(origin)
            origin_port = url.port
        except ValueError:
            return False
        if own is None or url.scheme != scheme or scheme not in DEFAULT_PORTS or url.hostname is None:
            return False
        name, port = own
        default = DEFAULT_PORTS[scheme]
        return url.hostname.rstrip(".") == name and (origin_port or default) == (port or default)


KEY_CHECK = web.RequestKey("key_check", Access)
"""Where an `IN_BAND_KEY_PATHS` request holds the `Access` whose key its handler checks; absent
when the daemon has no key."""


def presented_key(request: web.Request) -> str | None:
    """The key the request carries, by the first of the ways that it uses; an Authorization
    header of no scheme (the key alone, as AssemblyAI's clients send it) only when none of them is
    used, so that such a header of another kind (a proxy's) does not stop a key sent another way."""
    authorization = request.headers.get("Authorization", "").strip()
    scheme, _, credentials = authorization.partition(" ")
    if (
        scheme.lower() in ("bearer", "token", "api-key") and credentials.strip()
    ):  # Token: Deepgram's; Api-Key: Baseten's
        return credentials.strip()
    if scheme.lower() == "basic" and credentials.strip() and request.path in INWORLD_PATHS:
        return credentials.strip()
    if "X-API-Key" in request.headers:
        return request.headers["X-API-Key"].strip()
    if GLADIA_KEY_HEADER in request.headers:
        return request.headers[GLADIA_KEY_HEADER].strip()
    if AZURE_KEY_HEADER in request.headers:
        return request.headers[AZURE_KEY_HEADER].strip()
    for protocol in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        if protocol.strip().startswith(KEY_SUBPROTOCOL_PREFIX):
            return protocol.strip()[len(KEY_SUBPROTOCOL_PREFIX) :]
    if KEY_QUERY_PARAMETER in request.query:
        return request.query[KEY_QUERY_PARAMETER]
    if SPEECHMATICS_KEY_QUERY_PARAMETER in request.query and speechmatics_path(request.path):
        return request.query[SPEECHMATICS_KEY_QUERY_PARAMETER]
    if request.path in AZURE_PATHS and AZURE_KEY_HEADER in request.query:
        return request.query[AZURE_KEY_HEADER]
    if request.path in AZURE_PATHS | FIREWORKS_PATHS and "Authorization" in request.query:
        token_scheme, _, token = request.query["Authorization"].partition(" ")
        return token.strip() if token_scheme.lower() == "bearer" else request.query["Authorization"].strip()
    if ELEVENLABS_KEY_HEADER in request.headers:
        return request.headers[ELEVENLABS_KEY_HEADER].strip()
    if SARVAM_KEY_HEADER in request.headers:
        return request.headers[SARVAM_KEY_HEADER].strip()
    if authorization and not credentials and scheme.lower() not in ("bearer", "token", "api-key"):  # the key alone
        return authorization
    return None


def speechmatics_path(path: str) -> bool:
    """`/v2`, `/v2/agent` and `/v2/<language>`: not Deepgram's `/v2/listen` nor Gladia's `/v2/live`."""
    return SPEECHMATICS_PATH.fullmatch(path) is not None and path not in DEEPGRAM_PATHS | GLADIA_PATHS


def check_key(request: web.Request, in_band: str | None, in_band_field: str) -> tuple[int, str, str] | None:
    """For an `IN_BAND_KEY_PATHS` handler: the refusal when the daemon has a key and neither the
    request nor its stream's first message (`in_band`, from its field `in_band_field`) carries it,
    or either carries another."""
    access: Access | None = request.get(KEY_CHECK)
    if access is None:
        return None
    offered = [key for key in (presented_key(request), in_band) if key is not None]
    return access.key_refusal(offered, in_band_field)


def error_response(
    path: str, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A refusal in the shape the path's clients read: OpenAI's on its paths, the project's elsewhere."""
    headers = {**(headers or {}), **({"WWW-Authenticate": 'Bearer realm="satellite-asr"'} if status == 401 else {})}
    if path in MISTRAL_PATHS:
        body: dict[str, object] = mistral_error(status, code, message)
    elif path.startswith(OPENAI_PREFIXES):
        kind = {401: "authentication_error", 403: "permission_error"}.get(status, "invalid_request_error")
        body = {"error": openai_error(code, message, kind=kind)}
    elif path in DEEPGRAM_PATHS:
        body = deepgram_error(code, message)
    elif path in ASSEMBLYAI_PATHS:
        body = assemblyai_error(code, message)
    elif path == ELEVENLABS_PREFIX or path.startswith(ELEVENLABS_PREFIX + "/"):
        body = elevenlabs_error(code, message)
    elif path in CARTESIA_PATHS:
        body = cartesia_error(code, message)
    elif path in SONIOX_PATHS:
        body = soniox_error(status, message)
    elif speechmatics_path(path):
        body = speechmatics_error(status, message)
    elif path in GLADIA_PATHS:
        body = gladia_error(path, status, message)
    elif path in AZURE_PATHS:
        body = azure_error(status, message)
    elif path in SMALLEST_PATHS:
        body = smallest_error(status, code, message)
    elif path in XAI_PATHS:
        body = xai_error(code, message)
    elif path in GRADIUM_PATHS:
        body = gradium_error(message)
    elif path in SARVAM_PATHS:
        body = sarvam_error(code, message)
    elif path in ZOOM_PATHS:
        body = zoom_error(status, code, message)
    elif path in TELNYX_PATHS:
        body = telnyx_error(status, code, message)
    elif path in INWORLD_PATHS:
        body = inworld_error(status, code, message)
    else:
        body = {"type": "error", "code": code, "message": message}
    return web.json_response(body, status=status, headers=headers)
