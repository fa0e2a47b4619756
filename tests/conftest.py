"""Hooks for the whole suite."""

from __future__ import annotations

import os
import sys

import pytest

SESSION = pytest.StashKey[pytest.Session]()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    session.config.stash[SESSION] = session


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Once pytest is done, leave with its status and without the interpreter's teardown if LiveKit's
    native runtime (livekit-ffi, which the LiveKit plugins' tests start) was started: disposed at
    exit, its tokio workers can abort the process ("panic in a function that cannot unwind", status
    134) after every test passed, and the run's status must be the tests'."""
    ffi = sys.modules.get("livekit.rtc._ffi_client")
    session = config.stash.get(SESSION, None)
    if ffi is None or ffi.FfiClient._instance is None or session is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(session.exitstatus))
