"""Hooks for the whole suite."""

from __future__ import annotations

import os
import sys

import pytest
from xdist.scheduler import LoadScopeScheduling

ONE_WORKER = {
    "tests/vllm/": "one vLLM engine loads at a time, each module's once (a module-scoped fixture)",
    "tests/test_zeroconf.py": "its daemons advertise on the one loopback multicast and browse it",
    "tests/test_addon.py": "its wheel (a module-scoped fixture) is built once",
    "tests/test_home_assistant_real.py": "its Home Assistant (a module-scoped fixture) starts once",
    "tests/test_home_assistant_assist.py": "its Home Assistant (a module-scoped fixture) starts once",
}
"""The tests (by path prefix) that run whole on one pytest-xdist worker (scripts/test runs 2), and why."""

SESSION = pytest.StashKey[pytest.Session]()


class OneWorkerGroups(LoadScopeScheduling):
    """pytest-xdist's `load` scheduling, test by test, but for the groups of `ONE_WORKER`. (Its own
    `xdist_group` mark no longer groups under pytest 9.2: it suffixes a node id pytest now derives.)"""

    def _split_scope(self, nodeid: str) -> str:
        return next((group for group in ONE_WORKER if nodeid.startswith(group)), nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> LoadScopeScheduling | None:
    """`OneWorkerGroups` for `-n N` with pytest-xdist's default `--dist load`; another `--dist` as asked."""
    return OneWorkerGroups(config, log) if config.getvalue("dist") == "load" else None


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
