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
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from satellite_asr.config import ConfigError, load_settings
from satellite_asr.discovery import WEBSOCKET_TYPE, WYOMING_TYPE, instance_name
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
