"""Zeroconf (mDNS) advertisement, so Home Assistant and WebSocket clients find the daemon.

Two services: `_wyoming._tcp.local.` (Home Assistant's `wyoming` integration discovers it) and
`_satellite-asr._tcp.local.` (the WebSocket endpoint, its path and formats in TXT properties).
Registering takes a few hundred milliseconds of probing, so it runs in the background and never
delays serving; if multicast is unavailable the daemon logs one warning and serves on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass

import ifaddr
from zeroconf import InterfaceChoice
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from satellite_asr import __version__
from satellite_asr.access import mdns_host_label
from satellite_asr.audio import ENCODINGS, MAX_RATE, MIN_RATE
from satellite_asr.config import Settings
from satellite_asr.protocols import websocket

log = logging.getLogger(__name__)

WYOMING_TYPE = "_wyoming._tcp.local."
WEBSOCKET_TYPE = "_satellite-asr._tcp.local."
MAX_LABEL_BYTES = 63
"""DNS label limit: the instance name is cut to fit it."""
RENAME_ROOM_BYTES = 3
"""Left free for the "-2" (up to "-99") python-zeroconf appends when another service has the name:
a renamed name over the limit fails to register."""


IPV4_WILDCARD = "0.0.0.0"
"""Listening on it is listening on every interface's IPv4 address."""
IPV6_WILDCARD = "::"
"""Listening on it is listening on every address (IPv4 too, on a dual-stack socket: Linux's default)."""


@dataclass(frozen=True)
class Advertisement:
    """What to advertise: each server's port and the addresses its sockets listen on;
    `wyoming_port` None when the Wyoming server is off or on a unix socket."""

    name: str
    interfaces: tuple[str, ...]
    http_port: int
    http_hosts: tuple[str, ...]
    wyoming_port: int | None
    wyoming_hosts: tuple[str, ...]
    tls: bool = False


def instance_name(configured: str) -> str:
    """The configured name, else the host name's first label; at most 60 bytes of UTF-8, so that
    a rename still fits a DNS label, and never ending in a dot (clients could not resolve it)."""
    name = configured.strip() or socket.gethostname().split(".")[0] or "satellite-asr"
    return name.encode()[: MAX_LABEL_BYTES - RENAME_ROOM_BYTES].decode(errors="ignore").rstrip(". ")


def advertised_addresses(interfaces: tuple[str, ...]) -> list[str]:
    """The chosen interface addresses (each must belong to this host); with none chosen, every
    non-loopback IPv4 address (or loopback if that is all there is). OSError when there is none."""
    ips = [ip.ip if isinstance(ip.ip, str) else ip.ip[0] for adapter in ifaddr.get_adapters() for ip in adapter.ips]
    if interfaces:
        chosen = [str(ipaddress.ip_address(address)) for address in interfaces]
        missing = [address for address in chosen if address not in ips]
        if missing:
            raise OSError(f"no interface has the address {', '.join(missing)}")
        return chosen
    ipv4 = [ip for ip in ips if ipaddress.ip_address(ip).version == 4]
    outside = [address for address in ipv4 if not ipaddress.ip_address(address).is_loopback]
    if not ipv4:
        raise OSError("no interface has an IPv4 address")
    return outside or ipv4


def reachable_addresses(listening: tuple[str, ...], advertised: list[str], chosen: bool) -> list[str]:
    """The addresses to advertise for a server whose sockets listen on `listening`, of the host's
    `advertised` ones: all of them (or all IPv4 ones) for a wildcard, else only those it listens on.
    A loopback address counts only when `chosen` as an interface: other machines would be sent to
    themselves."""
    # A link-local address comes with its interface (fe80::1%eth0), which an mDNS record cannot hold.
    bound = [str(ipaddress.ip_address(address.split("%")[0])) for address in listening]
    if IPV6_WILDCARD in bound:
        return advertised
    if IPV4_WILDCARD in bound:
        return [address for address in advertised if ipaddress.ip_address(address).version == 4]
    if chosen:
        return [address for address in bound if address in advertised]
    return [address for address in bound if not ipaddress.ip_address(address).is_loopback]


def _unreachable(server: str, listening: tuple[str, ...], interfaces: tuple[str, ...]) -> None:
    where = ", ".join(listening)
    if interfaces:
        reason = f"not among zeroconf_interface ({', '.join(interfaces)})"
    else:
        reason = "which other machines cannot reach (set zeroconf_interface to it to advertise it on this machine)"
    log.warning("zeroconf: not advertising the %s server: it listens on %s only, %s", server, where, reason)


def service_infos(ad: Advertisement) -> list[AsyncServiceInfo]:
    """One service per server, on the addresses it can be reached by: the Wyoming server and the
    HTTP one may listen on different addresses. None for a server reached by none (a warning says why).
    OSError when the host has no address to advertise (`advertised_addresses`)."""
    advertised = advertised_addresses(ad.interfaces)
    properties = {
        "path": websocket.PATH,
        "protocol": websocket.PROTOCOL_VERSION,
        "scheme": "wss" if ad.tls else "ws",
        "encodings": ",".join(ENCODINGS),
        "rates": f"{MIN_RATE}-{MAX_RATE}",
        "http_port": str(ad.http_port),
        "version": __version__,
    }
    services: list[tuple[str, str, int, tuple[str, ...], dict[str, str] | bytes]] = [
        ("HTTP/WebSocket", WEBSOCKET_TYPE, ad.http_port, ad.http_hosts, properties)
    ]
    if ad.wyoming_port is not None:
        services.insert(0, ("Wyoming", WYOMING_TYPE, ad.wyoming_port, ad.wyoming_hosts, b""))
    infos = []
    for server, service_type, port, listening, txt in services:
        try:  # one server's trouble does not keep the other from being advertised
            addresses = reachable_addresses(listening, advertised, bool(ad.interfaces))
            if not addresses:
                _unreachable(server, listening, ad.interfaces)
                continue
            info = AsyncServiceInfo(
                service_type,
                f"{ad.name}.{service_type}",
                port=port,
                properties=txt,
                parsed_addresses=addresses,
                server=f"{mdns_host_label()}.local.",
            )
        except Exception as exc:
            log.warning("zeroconf: not advertising the %s server (%s)", server, exc)
            continue
        infos.append(info)
    return infos


class Discovery:
    """Registers the services on `start`, unregisters them (goodbye packets) on `stop`."""

    def __init__(self, advertisement: Advertisement) -> None:
        self.advertisement = advertisement
        self._zeroconf: AsyncZeroconf | None = None
        self._registering: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        http: tuple[int, tuple[str, ...]],
        wyoming: tuple[int | None, tuple[str, ...]],
    ) -> Discovery:
        """`http` and `wyoming`: each server's port and the addresses it listens on."""
        name = instance_name(settings.zeroconf_name)
        tls = bool(settings.tls_cert)
        return cls(Advertisement(name, settings.zeroconf_interface, *http, *wyoming, tls))

    async def start(self) -> None:
        try:
            infos = service_infos(self.advertisement)
            if not infos:
                return
            self._zeroconf = AsyncZeroconf(interfaces=list(self.advertisement.interfaces) or InterfaceChoice.All)
        except Exception as exc:
            log.warning("zeroconf is unavailable, not advertising (%s); serving on", exc)
            return
        self._registering = asyncio.create_task(self._register(self._zeroconf, infos), name="zeroconf-register")

    async def _register(self, zeroconf: AsyncZeroconf, infos: list[AsyncServiceInfo]) -> None:
        try:
            for info in infos:
                await (await zeroconf.async_register_service(info, allow_name_change=True))
                addresses = ", ".join(info.parsed_addresses())
                log.info("zeroconf: advertising %s on %s port %d", info.name, addresses, info.port)
        except Exception as exc:
            log.warning("zeroconf advertisement failed (%s); serving on without it", exc)

    async def stop(self) -> None:
        if self._registering is not None:
            self._registering.cancel()
            await asyncio.gather(self._registering, return_exceptions=True)
        if self._zeroconf is not None:
            try:
                await self._zeroconf.async_unregister_all_services()
            except Exception as exc:
                log.debug("zeroconf: unregistering failed: %s", exc)
            await self._zeroconf.async_close()
            self._zeroconf = None
