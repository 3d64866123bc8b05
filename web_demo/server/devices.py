"""Which accelerator a model or worker runs on; one place that asks torch about CUDA."""

from __future__ import annotations


def gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(device: str) -> str:
    """auto -> cuda when torch sees a GPU, else cpu; anything else is returned as given."""
    if device != "auto":
        return device
    return "cuda" if gpu_available() else "cpu"
