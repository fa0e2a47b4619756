"""Zeroconf advertisement seen by a real python-zeroconf browser, on loopback only.

Multicast may only go to 127.0.0.1 on these machines: every daemon and browser here is bound to it.
Instance names carry a random suffix, as other processes on the machine may advertise too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import ClassVar

import aiohttp
import ifaddr
import pytest
from zeroconf import AddressResolver, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from satellite_asr import discovery
from satellite_asr.config import ConfigError, load_settings
from satellite_asr.discovery import WEBSOCKET_TYPE, WYOMING_TYPE, Advertisement, instance_name, service_infos
from tests.helpers import running_daemon

pytestmark = pytest.mark.timeout(60)

LOOPBACK = ("127.0.0.1",)


class Browser:
    """Records what a python-zeroconf browser on loopback sees for both service types."""

    def __init__(self, zeroconf: AsyncZeroconf) -> None:
        self.zeroconf = zeroconf
        self.changes: list[tuple[str, ServiceStateChange]] = []
        self._seen = asyncio.Event()
        self._browser = AsyncServiceBrowser(zeroconf.zeroconf, [WYOMING_TYPE, WEBSOCKET_TYPE], handlers=[self._on])

    def _on(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        self.changes.append((name, state_change))
        self._seen.set()

    async def wait_for(self, names: set[str], change: ServiceStateChange) -> None:
        async with asyncio.timeout(20):
            while not names <= {n for n, c in self.changes if c == change}:
                self._seen.clear()
                await self._seen.wait()

    async def info(self, service_type: str, name: str) -> AsyncServiceInfo:
        info = AsyncServiceInfo(service_type, name)
        assert await info.async_request(self.zeroconf.zeroconf, 3000), f"{name} did not answer"
        return info

    async def close(self) -> None:
        await self._browser.async_cancel()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    zeroconf = AsyncZeroconf(interfaces=list(LOOPBACK))
    browser = Browser(zeroconf)
    yield browser
    await browser.close()
    await zeroconf.async_close()


async def test_both_services_are_found_with_their_ports_and_gone_after_shutdown(browser: Browser) -> None:
    name = f"satellite-test-{uuid.uuid4().hex[:8]}"
    wyoming_name, websocket_name = f"{name}.{WYOMING_TYPE}", f"{name}.{WEBSOCKET_TYPE}"
    async with running_daemon(
        zeroconf=True, zeroconf_interface=LOOPBACK, zeroconf_name=name, wyoming_uri="tcp://127.0.0.1:0"
    ) as daemon:
        await browser.wait_for({wyoming_name, websocket_name}, ServiceStateChange.Added)
        wyoming = await browser.info(WYOMING_TYPE, wyoming_name)
        websocket = await browser.info(WEBSOCKET_TYPE, websocket_name)
        assert wyoming.port == daemon.wyoming_port
        assert wyoming.parsed_addresses() == ["127.0.0.1"]
        assert websocket.port == daemon.http_port
        assert websocket.parsed_addresses() == ["127.0.0.1"]
        properties = websocket.decoded_properties
        assert properties["path"] == "/v1/stream"
        assert properties["protocol"] == "1"
        assert properties["scheme"] == "ws"
        assert properties["encodings"] == "f32le,s16le,pcmu,pcma"
        assert properties["rates"] == "8000-48000"
        assert properties["http_port"] == str(daemon.http_port)
        assert properties["version"]
    await browser.wait_for({wyoming_name, websocket_name}, ServiceStateChange.Removed)


async def test_without_a_wyoming_server_only_the_websocket_service_is_advertised(browser: Browser) -> None:
    name = f"satellite-test-{uuid.uuid4().hex[:8]}"
    async with running_daemon(zeroconf=True, zeroconf_interface=LOOPBACK, zeroconf_name=name) as daemon:
        await browser.wait_for({f"{name}.{WEBSOCKET_TYPE}"}, ServiceStateChange.Added)
        assert daemon.wyoming_port is None
    assert f"{name}.{WYOMING_TYPE}" not in {n for n, _ in browser.changes}


async def test_the_daemon_answers_to_the_name_its_services_point_at_not_to_its_instance_name(browser: Browser) -> None:
    """A client that found the service connects to its server name, which resolves, and sends it as
    Host; `zeroconf_name.local` resolves to nothing (the instance name names a service), so only a
    DNS-rebinding page could send it: the daemon allowed it as one of its own names."""
    name = f"kitchen-test-{uuid.uuid4().hex[:8]}"
    async with running_daemon(zeroconf=True, zeroconf_interface=LOOPBACK, zeroconf_name=name) as daemon:
        await browser.wait_for({f"{name}.{WEBSOCKET_TYPE}"}, ServiceStateChange.Added)
        server = (await browser.info(WEBSOCKET_TYPE, f"{name}.{WEBSOCKET_TYPE}")).server
        assert server is not None

        async def resolves(host: str) -> list[str]:
            resolver = AddressResolver(host)
            await resolver.async_request(browser.zeroconf.zeroconf, 1500)
            return resolver.parsed_addresses()

        async def status(host: str) -> int:
            url = f"http://127.0.0.1:{daemon.http_port}/metrics"
            async with aiohttp.ClientSession() as http, http.get(url, headers={"Host": host}) as response:
                return response.status

        assert await resolves(server) == ["127.0.0.1"]
        assert await status(f"{server.rstrip('.')}:{daemon.http_port}") == 200
        assert await resolves(f"{name}.local.") == []
        assert await status(f"{name}.local:{daemon.http_port}") == 403


async def test_an_interface_this_host_lacks_is_one_warning_and_the_daemon_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    # TEST-NET-3: no interface has this address, so nothing is sent anywhere.
    async with running_daemon(zeroconf=True, zeroconf_interface=("203.0.113.9",), wyoming_uri="tcp://127.0.0.1:0") as d:
        assert d.wyoming_port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", d.wyoming_port)
        writer.write(b'{"type": "describe"}\n')
        assert b'"info"' in await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        await writer.wait_closed()
    ours = [r for r in caplog.records if r.name == "satellite_asr.discovery" and r.levelno >= logging.WARNING]
    assert len(ours) == 1 and "zeroconf" in ours[0].getMessage()


LAN = ("192.0.2.10", "198.51.100.7")
"""TEST-NET addresses of a LAN interface the tests pretend this host has."""
LAN_IPV6 = ifaddr.IP(("2001:db8::5", 0, 0), 64, "eth0")
"""And an IPv6 address of the documentation range on it."""


class RecordingZeroconf:
    """Stands in for AsyncZeroconf where advertising for real would reach the LAN: records what
    would be registered, sends nothing."""

    started: ClassVar[list[RecordingZeroconf]] = []

    def __init__(self, interfaces: object) -> None:
        self.registered: list[AsyncServiceInfo] = []
        self.started.append(self)

    async def async_register_service(self, info: AsyncServiceInfo, allow_name_change: bool = False) -> Awaitable[None]:
        self.registered.append(info)
        return asyncio.sleep(0)

    async def async_unregister_all_services(self) -> None:
        pass

    async def async_close(self) -> None:
        pass


@pytest.fixture
def lan_host(monkeypatch: pytest.MonkeyPatch) -> list[RecordingZeroconf]:
    """This host as having LAN addresses besides loopback, with advertisements recorded, not sent."""
    adapters = [
        ifaddr.Adapter("lo", "lo", [ifaddr.IP("127.0.0.1", 8, "lo")]),
        ifaddr.Adapter("eth0", "eth0", [*(ifaddr.IP(address, 24, "eth0") for address in LAN), LAN_IPV6]),
    ]
    monkeypatch.setattr(ifaddr, "get_adapters", lambda: adapters)
    monkeypatch.setattr(discovery, "AsyncZeroconf", RecordingZeroconf)
    monkeypatch.setattr(RecordingZeroconf, "started", [])
    return RecordingZeroconf.started


async def test_a_daemon_listening_on_loopback_is_not_advertised_on_the_lan(
    lan_host: list[RecordingZeroconf], caplog: pytest.LogCaptureFixture
) -> None:
    """It listened on 127.0.0.1 and was advertised on the LAN addresses, where no client could connect."""
    caplog.set_level(logging.WARNING)
    async with running_daemon(zeroconf=True, wyoming_uri="tcp://127.0.0.1:0"):
        assert lan_host == [], "nothing to advertise: zeroconf is not even started"
    warnings = [r.getMessage() for r in caplog.records if r.name == "satellite_asr.discovery"]
    assert warnings == [
        f"zeroconf: not advertising the {server} server: it listens on 127.0.0.1 only, which other machines cannot "
        "reach (set zeroconf_interface to it to advertise it on this machine)"
        for server in ("Wyoming", "HTTP/WebSocket")
    ]


def test_each_service_is_advertised_on_the_addresses_its_own_server_listens_on(
    lan_host: list[RecordingZeroconf], caplog: pytest.LogCaptureFixture
) -> None:
    def advertised(http: tuple[str, ...], wyoming: tuple[str, ...], interfaces: tuple[str, ...] = ()) -> list[object]:
        ad = Advertisement("test", interfaces, 10301, http, 10300, wyoming)
        return [(info.type, info.parsed_addresses()) for info in service_infos(ad)]

    everywhere = list(LAN)
    assert advertised(("0.0.0.0",), ("0.0.0.0",)) == [(WYOMING_TYPE, everywhere), (WEBSOCKET_TYPE, everywhere)]
    assert advertised(("127.0.0.1",), ("0.0.0.0",)) == [(WYOMING_TYPE, everywhere)]
    assert advertised((LAN[0],), ("::",)) == [(WYOMING_TYPE, everywhere), (WEBSOCKET_TYPE, [LAN[0]])]
    loopback_chosen = advertised(("127.0.0.1", LAN[0]), ("127.0.0.1",), LOOPBACK)
    assert loopback_chosen == [(WYOMING_TYPE, ["127.0.0.1"]), (WEBSOCKET_TYPE, ["127.0.0.1"])]
    assert advertised((LAN[0],), ("127.0.0.1",), (LAN[1],)) == []
    assert f"it listens on {LAN[0]} only, not among zeroconf_interface ({LAN[1]})" in caplog.text
    # An IPv4 socket is not reached over IPv6; `::` (dual-stack) is reached over both.
    assert advertised(("0.0.0.0",), ("::",), ("2001:db8::5",)) == [(WYOMING_TYPE, ["2001:db8::5"])]
    # A link-local address comes with its interface, which an mDNS record cannot hold: it once
    # stopped both services from being advertised.
    link_local = advertised(("fe80::1%eth0",), ("0.0.0.0",))
    assert link_local == [(WYOMING_TYPE, everywhere), (WEBSOCKET_TYPE, ["fe80::1"])]


def network_namespaces_allowed() -> bool:
    return subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(
    shutil.which("unshare") is None or not network_namespaces_allowed(),
    reason="needs `unshare --net` (util-linux, and the right to make a network namespace)",
)
async def test_a_host_without_any_network_is_one_warning_and_the_daemon_serves_on(tmp_path: Path) -> None:
    """The daemon as users run it (all interfaces), in a network namespace whose only interface is
    down: no multicast anywhere. Its Wyoming server listens on a unix socket, which the test
    reaches from outside the namespace."""
    socket_path = tmp_path / "wyoming.sock"
    process = await asyncio.create_subprocess_exec(
        *("unshare", "--net", sys.executable, "-m", "satellite_asr", "serve", "--http-port", "0"),
        *("--wyoming-uri", f"unix://{socket_path}", "--log-level", "INFO"),
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    log_lines: list[str] = []
    while "whisper model ready" not in (line := (await asyncio.wait_for(process.stderr.readline(), 50)).decode()):
        assert line, "".join(log_lines)
        log_lines.append(line)
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    writer.write(b'{"type": "describe"}\n')
    answer = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    await writer.wait_closed()
    process.terminate()
    _, rest = await asyncio.wait_for(process.communicate(), 30)
    log_lines += rest.decode().splitlines(keepends=True)
    assert b'"type": "info"' in answer
    assert process.returncode == 0, "".join(log_lines)
    warnings = [line for line in log_lines if "satellite_asr.discovery" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "zeroconf is unavailable" in warnings[0], warnings


def test_instance_name_defaults_to_the_host_name_and_fits_a_dns_label_with_room_for_a_rename() -> None:
    assert instance_name("") == socket.gethostname().split(".")[0]
    assert instance_name("  Kitchen ASR ") == "Kitchen ASR"
    long = instance_name("ä" * 40)
    assert len(long.encode()) <= 60 and long == "ä" * 30
    assert instance_name("x" * 59 + ".speech") == "x" * 59, "cut before a dot, which is dropped"


async def test_a_long_name_that_another_service_has_is_renamed_and_advertised(browser: Browser) -> None:
    """python-zeroconf appends "-2" to a name that is taken; a name cut at 63 bytes then failed ("Too long")."""
    name = f"satellite-test-{uuid.uuid4().hex[:8]}-" + "x" * 50
    advertised = instance_name(name)
    first, second = f"{advertised}.{WYOMING_TYPE}", f"{advertised}-2.{WYOMING_TYPE}"
    settings = {
        "zeroconf": True,
        "zeroconf_interface": LOOPBACK,
        "zeroconf_name": name,
        "wyoming_uri": "tcp://127.0.0.1:0",
    }
    async with running_daemon(**settings):
        await browser.wait_for({first}, ServiceStateChange.Added)
        async with running_daemon(**settings) as renamed:
            await browser.wait_for({second}, ServiceStateChange.Added)
            assert (await browser.info(WYOMING_TYPE, second)).port == renamed.wyoming_port


@pytest.mark.parametrize("name", ["GPU.", ".GPU", "GPU..speech"])
def test_a_name_with_a_dot_at_an_end_or_two_in_a_row_stops_start_up(name: str) -> None:
    """Advertised, but no client could resolve it; a dot inside is fine."""
    with pytest.raises(ConfigError, match=f"zeroconf_name: '{re.escape(name)}' has a dot at its start or end"):
        load_settings(environ={}, overrides={"zeroconf_name": name})
    assert load_settings(environ={}, overrides={"zeroconf_name": "GPU.speech"}).zeroconf_name == "GPU.speech"
