"""HTTPS/WSS with `--tls-cert/--tls-key`: the secure context browsers need for the microphone on a LAN."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from satellite_asr.clients.audio_source import WavSource
from satellite_asr.clients.stream_client import stream_source
from tests.certificates import self_signed
from tests.helpers import EXPECTED, FIXTURES, WER_TOLERANCE, running_daemon, word_error_rate

pytestmark = pytest.mark.timeout(120)


async def test_page_and_stream_over_tls(tmp_path: Path) -> None:
    cert = self_signed(tmp_path, ["satellite.local", "localhost"], ["127.0.0.1"])
    trusting = cert.client_context()
    async with running_daemon(tls_cert=str(cert.cert), tls_key=str(cert.key)) as daemon:
        base = f"https://127.0.0.1:{daemon.http_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/", ssl=trusting) as response:
                assert response.status == 200
                assert "<title>Satellite ASR" in await response.text()
            async with http.get(base + "/static/app.js", ssl=trusting) as response:
                assert response.status == 200
                assert "javascript" in response.content_type
        wss = f"wss://127.0.0.1:{daemon.http_port}/v1/stream"
        messages = await stream_source(WavSource(FIXTURES / "weather.wav", realtime=False), wss, ssl_context=trusting)
        finals = [m for m in messages if m["type"] == "final"]
        assert len(finals) == 1
        assert word_error_rate(EXPECTED["weather.wav"][0], finals[0]["text"]) <= WER_TOLERANCE

        with pytest.raises(ssl.SSLCertVerificationError):
            await stream_source(
                WavSource(FIXTURES / "weather.wav", realtime=False), wss, ssl_context=ssl.create_default_context()
            )


def test_unreadable_certificate_stops_start_up_with_a_message(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "satellite_asr",
            "serve",
            "--host",
            "127.0.0.1",
            "--http-port",
            "0",
            "--wyoming-uri",
            "none",
            "--no-zeroconf",
            "--tls-cert",
            missing,
            "--tls-key",
            missing,
        ],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 2, result.stderr
    assert f"tls_cert/tls_key: cannot load {missing}" in result.stderr
    assert "Traceback" not in result.stderr
