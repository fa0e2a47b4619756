"""The microphone page in a real headless Chromium, against a real daemon.

Chromium's fake capture device plays a fixture WAV as the microphone, so the whole path runs:
getUserMedia, the AudioWorklet, the page's resampler, the WebSocket protocol, the transcript
display. Selenium blocks, so each scenario runs in a worker thread while the daemon serves on the
test's event loop. Needs Debian's `chromium` and `chromium-driver` (installed by .ci/run): without
them the tests skip, except in CI (`CI=true`), where a skip would hide a broken install, so they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import ssl
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import websockets
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.certificates import Certificate, self_signed
from tests.helpers import (
    EXPECTED,
    FIXTURES,
    normalise,
    of_type,
    running_daemon,
    tool_missing,
    word_error_rate,
    ws_url,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
MISSING = "needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver"

pytestmark = pytest.mark.timeout(240)

T = TypeVar("T")
Browser = Callable[..., webdriver.Chrome]
"""Starts Chromium: `browser(microphone_wav=None, *extra_flags, grant_microphone=True)`."""
ShowFile = Callable[[Path], None]


@pytest.fixture(autouse=True)
def chromium_installed() -> None:
    """Skips without Chromium, but fails in CI: there a missing browser is a broken install."""
    if os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK):
        return
    tool_missing(MISSING)


@pytest.fixture
def show_file(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> ShowFile:
    """Prints a saved file's path in pytest's own output, so CI logs show it without `-s`."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")

    def show(path: Path) -> None:
        if reporter is not None:
            with capsys.disabled():  # a test's writes are captured, the reporter's included
                reporter.ensure_newline()
                reporter.write_line(f"{request.node.name}: saved {path}")

    return show


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    """Starts headless Chromium (optionally with a WAV as its microphone); quits it afterwards."""
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium must never try to download a browser or driver
    drivers: list[webdriver.Chrome] = []

    def start(microphone: Path | None = None, *extra_flags: str, grant_microphone: bool = True) -> webdriver.Chrome:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--use-fake-device-for-media-stream",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1000,900",
            f"--user-data-dir={tmp_path / f'profile-{len(drivers)}'}",
            *extra_flags,
        ):
            options.add_argument(flag)
        if grant_microphone:
            options.add_argument("--use-fake-ui-for-media-stream")  # answers the permission prompt with yes
        if microphone is not None:
            options.add_argument(f"--use-file-for-fake-audio-capture={microphone}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        driver.set_script_timeout(60)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


def page_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/"


def events(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = driver.execute_script("return window.satelliteAsr.events")
    return result


def wait_for(driver: webdriver.Chrome, condition: Callable[[webdriver.Chrome], T], seconds: float, what: str) -> T:
    """Like WebDriverWait.until, but a time-out says what was awaited and shows the page's console."""
    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.2).until(condition)
    except TimeoutException:
        console = "\n".join(entry["message"] for entry in driver.get_log("browser"))
        state = driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")
        messages = driver.find_element(By.ID, "messages").text
        raise AssertionError(
            f"timed out waiting for {what}; page state {state!r}, messages {messages!r}\n"
            f"events: {events(driver)}\nconsole:\n{console}"
        ) from None


def start_streaming(driver: webdriver.Chrome, url: str, **settings: str) -> None:
    """Opens the page, fills in settings (element id -> text) and presses Start."""
    driver.get(url)
    toggle = driver.find_element(By.ID, "toggle")
    wait_for(driver, lambda d: toggle.is_enabled(), 30, "the Start button")
    for field, value in settings.items():
        driver.find_element(By.ID, field).send_keys(value)
    toggle.click()


def state_is(state: str) -> Callable[[webdriver.Chrome], bool]:
    return lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == state


def finals_at_least(count: int) -> Callable[[webdriver.Chrome], bool]:
    return lambda d: len(of_type(events(d), "final")) >= count


def speech_started(utterance_id: int) -> Callable[[webdriver.Chrome], bool]:
    return lambda d: any(e["utterance_id"] == utterance_id for e in of_type(events(d), "speech_start"))


SHOWN_ITEMS = """
    return [...document.querySelectorAll("#transcript li")].map((item) => ({
        className: item.className,
        text: item.querySelector(".text").textContent,
        meta: item.querySelector(".meta").textContent,
    }));
"""
"""The transcript list as shown: each item's class (partial or final), text and times."""


SHOWN_PARTIAL = """
    const text = document.querySelector("#transcript li.partial .text");
    if (!text || text.textContent === "…") return null;
    const style = getComputedStyle(text);
    return {text: text.textContent, fontStyle: style.fontStyle, color: style.color};
"""
"""The partial on screen, with how it is drawn; null while there is none with words."""


async def test_speaking_into_the_page_shows_partials_then_finals(browser: Browser, show_file: ShowFile) -> None:
    """Real capture: partials shown before finals, replaced in place; config honoured; screenshots saved."""
    expected = EXPECTED["three_commands.wav"]
    screenshots = ARTIFACTS / "browser-partial.png", ARTIFACTS / "browser-finals.png"
    async with running_daemon() as daemon:

        def scenario(start: Browser) -> tuple[list[dict[str, Any]], dict[str, str], list[dict[str, str]]]:
            driver = start(FIXTURES / "three_commands.wav")
            start_streaming(driver, page_url(daemon.http_port), silence="600", context="bedroom garage")
            partial = wait_for(driver, lambda d: d.execute_script(SHOWN_PARTIAL), 90, "a partial on screen")
            ARTIFACTS.mkdir(exist_ok=True)
            driver.save_screenshot(str(screenshots[0]))
            # The fake microphone loops the file: the first len(expected) finals are one pass. Stop
            # while the next pass's first command is spoken, so `end` forces that one's final.
            wait_for(driver, finals_at_least(len(expected)), 90, f"{len(expected)} finals")
            wait_for(driver, speech_started(len(expected) + 1), 30, "the file's second pass")
            driver.find_element(By.ID, "toggle").click()
            wait_for(driver, state_is("idle"), 30, "the page to stop after `end`")
            driver.save_screenshot(str(screenshots[1]))
            final_color = driver.execute_script(
                "return getComputedStyle(document.querySelector('#transcript li.final .text')).color"
            )
            return events(driver), {**partial, "finalColor": final_color}, driver.execute_script(SHOWN_ITEMS)

        history, partial, items = await asyncio.to_thread(scenario, browser)
    for path in screenshots:
        show_file(path)

    assert history[0]["type"] == "session_created"
    config = history[0]["config"]
    assert (config["sample_rate"], config["encoding"]) == (16000, "f32le")
    assert config["vad"]["silence_ms"] == 600 and config["context"] == "bedroom garage"
    assert {event["session"] for event in history} == {1}, "no reconnect happened"

    finals = of_type(history, "final")
    assert [f["utterance_id"] for f in finals] == list(range(1, len(expected) + 2)), "one final per utterance"
    for final, reference in zip(finals, expected, strict=False):
        assert word_error_rate(reference, final["text"]) <= 0.25, (reference, final["text"])
        assert final["is_speech_final"] is True
        assert 0 <= final["start"] < final["end"]
        assert final["audio_sent"] >= final["end"], "the final cannot come before its audio was sent"
    assert partial["fontStyle"] == "italic" and partial["color"] != partial["finalColor"], "partials look provisional"
    # Partials are best effort (docs/protocol.md): a short command on a busy machine can get none.
    # What always holds: the partial on screen came before its own final, and no partial of any
    # utterance came after its final.
    final_at = {e["utterance_id"]: i for i, e in enumerate(history) if e["type"] == "final"}
    partial_at = [(e["utterance_id"], i) for i, e in enumerate(history) if e["type"] == "partial"]
    shown_at = [(u, i) for u, i in partial_at if history[i]["text"] == partial["text"]]
    assert any(i < final_at[u] for u, i in shown_at), "the partial on screen was shown before its final"
    assert all(i < final_at[u] for u, i in partial_at), "no partial after its final"

    assert all(item["className"].startswith("final") for item in items), "every partial was replaced in place"
    shown = [normalise(item["text"]) for item in items]
    assert shown == [normalise(f["text"] or "(no words recognised)") for f in finals], "in utterance order"
    for item, final in zip(items, finals, strict=True):
        meta = item["meta"]
        assert meta.startswith(f"#{final['utterance_id']} · "), meta
        times = re.search(r"([\d.]+)\u2013([\d.]+) s · arrived ([\d.]+) s after the end of speech", meta)
        assert times is not None, meta
        shown_times = [float(value) for value in times.groups()]
        assert shown_times == pytest.approx([final["start"], final["end"], final["arrived_after"]], abs=0.006), meta
        # Wall-clock time since the end of speech was sent: more than 0 even for the final that
        # `end` forced after Stop, when no audio followed it.
        assert final["arrived_after"] >= 0.01, meta


def notice(topic: str, containing: str = "") -> Callable[[webdriver.Chrome], str | None]:
    """The page's message about `topic` (mic, connection, server), or None while it has none (with `containing`)."""

    def shown(driver: webdriver.Chrome) -> str | None:
        found = driver.find_elements(By.CSS_SELECTOR, f'#messages [data-topic="{topic}"]')
        return found[0].text if found and containing in found[0].text else None

    return shown


def session_has_final(session: int) -> Callable[[webdriver.Chrome], bool]:
    return lambda d: any(e["session"] >= session for e in of_type(events(d), "final"))


async def test_lost_connection_is_retried_with_backoff_and_streaming_resumes(browser: Browser) -> None:
    def open_page(port: int) -> webdriver.Chrome:
        driver = browser(FIXTURES / "lights_on.wav")
        start_streaming(driver, page_url(port))
        wait_for(driver, lambda d: of_type(events(d), "session_created"), 30, "the first session")
        driver.execute_script("Math.random = () => 0.9999")  # the retry delays' largest jitter
        return driver

    async with running_daemon() as first:
        port = first.http_port
        driver = await asyncio.to_thread(open_page, port)
    # The daemon has shut down (closing the stream with 1001) and nothing listens on the port now.
    # Delays 0.5, 1, 2, 4, 8 s, then the cap.
    lost = await asyncio.to_thread(wait_for, driver, notice("connection", "(attempt 6)"), 60, "failed retries")
    async with running_daemon(http_port=port):
        await asyncio.to_thread(wait_for, driver, session_has_final(2), 90, "a final after reconnecting")
        after = await asyncio.to_thread(notice("connection"), driver)
        await asyncio.to_thread(driver.find_element(By.ID, "toggle").click)
        await asyncio.to_thread(wait_for, driver, state_is("idle"), 30, "the page to stop")
        history = await asyncio.to_thread(events, driver)

    assert lost == "Connection lost (no answer from the daemon). Reconnecting in 10.0 s (attempt 6)…", lost
    assert after is None, "the warning goes once a session is open again"
    created = of_type(history, "session_created")
    assert created[0]["session"] == 1 and created[-1]["session"] > 1
    final = next(f for f in of_type(history, "final") if f["session"] > 1)
    assert word_error_rate(EXPECTED["lights_on.wav"][0], final["text"]) <= 0.25, final["text"]


async def test_denied_microphone_permission_is_explained(browser: Browser) -> None:
    async with running_daemon() as daemon:

        def scenario() -> tuple[str, str, list[dict[str, Any]]]:
            driver = browser(FIXTURES / "lights_on.wav", grant_microphone=False)
            url = page_url(daemon.http_port)
            driver.get(url)
            driver.execute_cdp_cmd(
                "Browser.setPermission",
                {"origin": url.rstrip("/"), "permission": {"name": "microphone"}, "setting": "denied"},
            )
            start_streaming(driver, url)
            message = wait_for(driver, notice("mic"), 30, "the microphone message")
            wait_for(driver, state_is("idle"), 10, "the page to go back to idle")
            return message, driver.find_element(By.ID, "toggle").text, events(driver)

        message, button, history = await asyncio.to_thread(scenario)
    assert message.startswith("Microphone permission was denied. Allow the microphone for this site")
    assert button == "Start"
    assert history == [], "no session is opened without a microphone"


async def test_server_error_is_shown_and_a_rejected_config_is_not_retried(browser: Browser) -> None:
    async with running_daemon() as daemon:

        def scenario() -> tuple[str, str, list[dict[str, Any]]]:
            driver = browser(FIXTURES / "lights_on.wav")
            start_streaming(driver, page_url(daemon.http_port), silence="50")
            server = wait_for(driver, notice("server"), 30, "the server's error")
            connection = wait_for(driver, notice("connection"), 30, "the connection message")
            wait_for(driver, state_is("idle"), 10, "the page to stop")
            time.sleep(2)  # longer than the first reconnect delay: a retry would show in the history
            return server, connection, events(driver)

        server, connection, history = await asyncio.to_thread(scenario)
    assert server.startswith("The server rejected the settings: vad.silence_ms")
    assert "(1008 invalid_config)" in connection
    assert [e["type"] for e in history] == ["error"] and history[0]["code"] == "invalid_config"
    assert {e["session"] for e in history} == {1}


async def test_page_asks_for_the_api_key_and_sends_it_as_a_subprotocol(browser: Browser) -> None:
    """A daemon with a key: the page shows the key field, refuses to start without a key or with one
    a browser cannot send, reports a wrong one without retrying, and streams with the right one."""
    key = "page-test-key_0123456789"
    async with running_daemon(api_key=key) as daemon:

        def scenario() -> tuple[bool, str, str, str, list[dict[str, Any]], list[dict[str, Any]]]:
            driver = browser(FIXTURES / "lights_on.wav")
            driver.get(page_url(daemon.http_port))
            field = driver.find_element(By.ID, "api-key")
            wait_for(driver, lambda d: field.is_displayed(), 30, "the key field (auth_required)")
            toggle = driver.find_element(By.ID, "toggle")
            wait_for(driver, lambda d: toggle.is_enabled(), 30, "the Start button")
            toggle.click()
            missing = wait_for(driver, notice("connection", "requires an API key"), 10, "the request for a key")
            field.send_keys(f"Bearer {key}")  # a space: a browser cannot send this as a subprotocol
            toggle.click()
            unsendable = wait_for(driver, notice("connection", "holds only"), 10, "the key refused by the page")
            wait_for(driver, state_is("idle"), 10, "the page to stay idle")
            no_key_events = events(driver)
            field.clear()
            field.send_keys("not-the-key")
            toggle.click()
            refused = wait_for(driver, notice("connection", "invalid_api_key"), 30, "the refused key")
            wait_for(driver, state_is("idle"), 10, "the page to stop after the refusal")
            time.sleep(2)  # longer than the first reconnect delay: a retry would show in the history
            refused_events = events(driver)
            field.clear()
            field.send_keys(key)
            toggle.click()
            wait_for(driver, finals_at_least(1), 90, "a final with the right key")
            return field.is_displayed(), missing, unsendable, refused, no_key_events + refused_events, events(driver)

        shown, missing, unsendable, refused, before, history = await asyncio.to_thread(scenario)
    assert shown
    assert "enter it in the settings" in missing
    assert unsendable.startswith("An API key holds only letters, digits and"), unsendable
    assert refused.startswith("The daemon refused the connection (invalid_api_key)")
    assert before == [], "no session and no retry without the right key"
    assert of_type(history, "session_created")
    assert word_error_rate(EXPECTED["lights_on.wav"][0], of_type(history, "final")[0]["text"]) <= 0.25


async def test_a_session_closed_for_hearing_no_speech_ends_without_reconnecting(
    browser: Browser, tmp_path: Path
) -> None:
    silence = tmp_path / "silence.wav"
    with wave.open(str(silence), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(bytes(2 * 16000))
    async with running_daemon(idle_timeout_s=1) as daemon:

        def scenario() -> tuple[str, str | None, list[dict[str, Any]]]:
            driver = browser(silence)
            start_streaming(driver, page_url(daemon.http_port))
            wait_for(driver, lambda d: of_type(events(d), "session_created"), 30, "the session")
            wait_for(driver, state_is("idle"), 30, "the page to stop after idle_timeout_s")
            time.sleep(2)  # longer than the first reconnect delay: a retry would show in the history
            return driver.find_element(By.ID, "status").text, notice("connection")(driver), events(driver)

        status, message, history = await asyncio.to_thread(scenario)
    assert status == "Stopped: no speech for a while"
    assert message is None, "no alarm: the daemon ended an idle session, as it is meant to"
    assert {e["session"] for e in history} == {1}, "no reconnect"


def upgrade_failed(driver: webdriver.Chrome) -> bool:
    """Chromium has logged a failed WebSocket upgrade (the page's `close` event comes in the same task)."""
    return any("v1/stream' failed" in entry["message"] for entry in driver.get_log("browser"))


async def test_a_late_refusal_leaves_the_session_of_a_later_start_alone(browser: Browser) -> None:
    """Start with a wrong key, then Stop and Start with the right one while the page still asks why
    its first upgrade failed (the question held in Chromium's network stack): the late answer, 401,
    is about the first run and must not stop the second."""
    key = "page-test-key_0123456789"
    async with running_daemon(api_key=key) as daemon:

        def scenario() -> tuple[str | None, str, str | None, list[dict[str, Any]]]:
            driver = browser(FIXTURES / "lights_on.wav")
            driver.get(page_url(daemon.http_port))
            field, toggle = driver.find_element(By.ID, "api-key"), driver.find_element(By.ID, "toggle")
            wait_for(driver, lambda d: field.is_displayed() and toggle.is_enabled(), 30, "the key field")
            driver.execute_cdp_cmd("Fetch.enable", {"patterns": [{"urlPattern": "*/v1/stream"}]})
            field.send_keys("not-the-key")
            toggle.click()
            wait_for(driver, upgrade_failed, 30, "the refused upgrade")
            toggle.click()  # Stop
            wait_for(driver, state_is("idle"), 10, "the page to stop")
            field.clear()
            field.send_keys(key)
            toggle.click()
            wait_for(driver, lambda d: of_type(events(d), "session_created"), 30, "the second run's session")
            driver.execute_cdp_cmd("Fetch.disable", {})  # the held question goes on, and is answered
            wait_for(driver, finals_at_least(len(of_type(events(driver), "final")) + 1), 60, "a final after that")
            body = driver.find_element(By.TAG_NAME, "body")
            state, status = body.get_attribute("data-state"), driver.find_element(By.ID, "status").text
            message = notice("connection")(driver)
            toggle.click()
            wait_for(driver, state_is("idle"), 30, "the page to stop")
            return state, status, message, events(driver)

        state, status, message, history = await asyncio.to_thread(scenario)
    assert state == "streaming" and status.startswith("Listening"), status
    assert message is None, "no refusal shown for the first run"
    assert {e["session"] for e in history} == {2}, "one connection after the first run's failed one"


async def test_plain_http_on_a_lan_name_explains_the_secure_context(browser: Browser) -> None:
    async with running_daemon() as daemon:

        def scenario() -> tuple[str, bool]:
            driver = browser(None, "--host-resolver-rules=MAP satellite.test 127.0.0.1")
            driver.get(f"http://satellite.test:{daemon.http_port}/")
            message = wait_for(driver, notice("mic"), 30, "the secure-context message")
            return message, driver.find_element(By.ID, "toggle").is_enabled()

        message, enabled = await asyncio.to_thread(scenario)
    assert "secure context" in message and "--tls-cert" in message and "localhost" in message
    assert not enabled


async def test_page_over_https_streams_over_wss(browser: Browser, tmp_path: Path) -> None:
    cert = self_signed(tmp_path, ["satellite.test"], [])
    tls = {"tls_cert": str(cert.cert), "tls_key": str(cert.key)}
    async with running_daemon(**tls, allowed_hosts=("satellite.test",)) as daemon:

        def scenario() -> tuple[bool, list[dict[str, Any]]]:
            driver = browser(
                FIXTURES / "lights_on.wav",
                "--host-resolver-rules=MAP satellite.test 127.0.0.1",
                f"--ignore-certificate-errors-spki-list={cert.spki_sha256}",
            )
            start_streaming(driver, f"https://satellite.test:{daemon.http_port}/")
            wait_for(driver, finals_at_least(1), 60, "a final")
            result = driver.execute_script("return window.isSecureContext"), events(driver)
            # Quit while the daemon runs: Chromium keeps spare TLS connections open, and a daemon
            # stopped under them leaves their sockets to the garbage collector (a ResourceWarning).
            driver.quit()
            return result

        secure, history = await asyncio.to_thread(scenario)
    assert secure
    assert word_error_rate(EXPECTED["lights_on.wav"][0], of_type(history, "final")[0]["text"]) <= 0.25


class TlsProxyDouble:
    """Test double of a reverse proxy that terminates TLS and serves the daemon under `/asr/`, as nginx's
    `location /asr/ { proxy_pass http://daemon/; }` does: the prefix stripped, `Host` passed through,
    WebSocket upgrades piped as they are. One request per connection, so each is routed by its own head."""

    PREFIX = b"/asr/"

    def __init__(self, certificate: Certificate) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certificate.cert, certificate.key)
        self.backend_port = 0
        self.port = 0
        self.targets: list[str] = []
        """Every request's path as the browser sent it."""
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TlsProxyDouble:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self.server.close()
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client_writer)
        try:
            head = await client_reader.readuntil(b"\r\n\r\n")
            request_line, _, header_block = head.partition(b"\r\n")
            method, target, version = request_line.split(b" ")
            self.targets.append(target.decode())
            if not target.startswith(self.PREFIX):
                client_writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            headers = [line for line in header_block.split(b"\r\n") if line]
            if not any(line.lower().startswith(b"upgrade:") for line in headers):
                headers = [line for line in headers if not line.lower().startswith(b"connection:")]
                headers.append(b"Connection: close")
            backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
            self._writers.add(backend_writer)
            target = b"/" + target[len(self.PREFIX) :]
            backend_writer.write(b" ".join([method, target, version]) + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n")
            await asyncio.gather(_pipe(client_reader, backend_writer), _pipe(backend_reader, client_writer))
        except (asyncio.IncompleteReadError, OSError):
            pass  # the browser dropped a spare connection, or the test is over
        finally:
            client_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def test_page_behind_a_tls_proxy_under_a_path_prefix(browser: Browser, tmp_path: Path) -> None:
    """Served as https://NAME/asr/ by a TLS proxy: until allowed_origins lists the page, the page says
    that its origin is refused and stops; then it streams, its WebSocket under /asr/ too."""
    cert = self_signed(tmp_path, ["satellite.test"], [])
    flags = (
        "--host-resolver-rules=MAP satellite.test 127.0.0.1",
        f"--ignore-certificate-errors-spki-list={cert.spki_sha256}",
    )
    async with TlsProxyDouble(cert) as proxy:
        page = f"https://satellite.test:{proxy.port}/asr/"
        origin = page.removesuffix("/asr/")
        # The daemon hears plain http from the proxy: the page's https origin is not its own.
        async with running_daemon(allowed_hosts=("satellite.test",)) as daemon:
            proxy.backend_port = daemon.http_port

            def refused_scenario() -> tuple[webdriver.Chrome, str, list[dict[str, Any]]]:
                driver = browser(FIXTURES / "lights_on.wav", *flags)
                start_streaming(driver, page)
                refused = wait_for(driver, notice("connection", "origin_not_allowed"), 30, "the refused origin")
                wait_for(driver, state_is("idle"), 10, "the page to stop after the refusal")
                return driver, refused, events(driver)

            driver, refused, refused_events = await asyncio.to_thread(refused_scenario)
        async with running_daemon(allowed_hosts=("satellite.test",), allowed_origins=(origin,)) as daemon:
            proxy.backend_port = daemon.http_port

            def scenario() -> list[dict[str, Any]]:
                driver.find_element(By.ID, "toggle").click()
                wait_for(driver, finals_at_least(1), 60, "a final through the proxy")
                history = events(driver)
                driver.quit()  # before the proxy and daemon stop, as in the HTTPS test
                return history

            history = await asyncio.to_thread(scenario)
    assert refused.startswith(f"The daemon refused the connection (origin_not_allowed): pages from {origin} may not")
    assert refused_events == []
    assert "/asr/v1/stream" in proxy.targets
    assert word_error_rate(EXPECTED["lights_on.wav"][0], of_type(history, "final")[0]["text"]) <= 0.25


async def test_too_many_connections_is_shown_while_the_page_retries(browser: Browser) -> None:
    async with running_daemon(max_websocket_connections=1) as daemon:
        held = await websockets.connect(ws_url(daemon))
        try:
            await held.send(json.dumps({"type": "config"}))  # a session: the connection stays open
            await held.recv()

            def refused_scenario() -> tuple[webdriver.Chrome, str, str | None]:
                driver = browser(FIXTURES / "lights_on.wav")
                start_streaming(driver, page_url(daemon.http_port))
                refused = wait_for(driver, notice("connection", "(attempt 2)"), 30, "a second refused attempt")
                return driver, refused, driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")

            driver, refused, state = await asyncio.to_thread(refused_scenario)
        finally:
            await held.close()
        await asyncio.to_thread(wait_for, driver, lambda d: of_type(events(d), "session_created"), 30, "a session")
        after = await asyncio.to_thread(notice("connection"), driver)
    assert refused.startswith("The daemon refused the connection (too_many_connections): the daemon has 1 websocket")
    assert "Reconnecting in" in refused and state == "reconnecting"
    assert after is None, "the message goes once a session is open"


RESAMPLE = """
const [rate, frequency, seconds, done] = arguments;
import("/static/resampler.js").then(({ StreamingResampler }) => {
  const resampler = new StreamingResampler(rate, 16000);
  const input = new Float32Array(rate * seconds);
  for (let i = 0; i < input.length; i++) input[i] = 0.5 * Math.sin((2 * Math.PI * frequency * i) / rate);
  const output = [];
  for (let i = 0; i < input.length; i += 128) output.push(...resampler.process(input.subarray(i, i + 128)));
  output.push(...resampler.flush());
  done(output);
}, (error) => done(String(error)));
"""
"""The page's resampler fed a sine in AudioWorklet-sized chunks of 128 samples."""


@pytest.mark.parametrize("rate", [48000, 44100])
async def test_resampler_keeps_tones_and_removes_what_16k_cannot_hold(browser: Browser, rate: int) -> None:
    async with running_daemon() as daemon:

        def scenario() -> tuple[Any, Any]:
            driver = browser()
            driver.get(page_url(daemon.http_port))
            return driver.execute_async_script(RESAMPLE, rate, 1000, 2), driver.execute_async_script(
                RESAMPLE, rate, 9000, 2
            )

        tone, alias = await asyncio.to_thread(scenario)
    assert isinstance(tone, list), tone
    out = np.asarray(tone)
    assert out.size == 2 * 16000, "exactly the input's duration at 16 kHz"
    spectrum = np.abs(np.fft.rfft(out * np.hanning(out.size)))
    assert np.argmax(spectrum) * 16000 / out.size == pytest.approx(1000, abs=1)
    ideal = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(out.size) / 16000)
    edge = 100  # the sine starts and stops abruptly; the filter rings there, as it should
    assert np.max(np.abs(out - ideal)[edge:-edge]) < 1e-3, "same amplitude and phase: stream time is kept"
    leaked = np.sqrt(np.mean(np.square(np.asarray(alias)[edge:-edge]))) / (0.5 / np.sqrt(2))
    assert 20 * np.log10(leaked) < -60, "a 9 kHz tone would alias to 7 kHz; the low-pass removes it"
