"""Device selection shared by every verb."""

from __future__ import annotations

import torch

from deepadversaries.errors import DeepAdvError, check_choice

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeepAdvError("--device cuda was asked for, but no CUDA GPU is available")
        return torch.device(device)
    check_choice(device, DEVICE_CHOICES, "device")
    return torch.device("cpu")
