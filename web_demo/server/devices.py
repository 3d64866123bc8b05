"""Which accelerator a model or worker runs on; one place that answers "is there a GPU".

Importing torch only to learn that there is no GPU costs ~220 MB and ~1.5 s per process
(every worker respawn pays it), so the cheap checks come first: without an NVIDIA driver
(no /proc/driver/nvidia/gpus entries, no /dev/nvidia0) or with CUDA_VISIBLE_DEVICES hiding
every device, the answer is no and torch is never imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

_PROC_GPUS = Path("/proc/driver/nvidia/gpus")
_DEV_NVIDIA0 = Path("/dev/nvidia0")


def nvidia_driver_present() -> bool:
    """False means no CUDA device can exist; True still needs a runtime to confirm."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return _DEV_NVIDIA0.exists() or (_PROC_GPUS.is_dir() and any(_PROC_GPUS.iterdir()))


def gpu_available() -> bool:
    """A CUDA device torch can use; imports torch only when a driver is present."""
    if not nvidia_driver_present():
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(device: str, *, gpu_probe: Callable[[], bool] = gpu_available) -> str:
    """auto -> cuda when `gpu_probe` sees a GPU, else cpu; anything else is returned as given.

    Workers that do not use torch pass their own runtime's probe (e.g. ctranslate2's).
    """
    if device != "auto":
        return device
    return "cuda" if gpu_probe() else "cpu"
