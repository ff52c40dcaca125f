"""The protocol every encoder follows. The indexer and search code see nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from mmfind.media.image import ImageSpec


@runtime_checkable
class Encoder(Protocol):
    """Maps inputs of one embedding space to L2-normalised float32 vectors."""

    model_id: str  # what the index records; reloading it must give the same vectors
    space: str  # the embedding space it fills, e.g. "clip"
    dim: int
    device: str

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, unit rows."""
        ...


@runtime_checkable
class ImageEncoder(Encoder, Protocol):
    """An encoder whose space also holds images."""

    image_spec: ImageSpec  # what decode workers must produce

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB, already at image_spec.size -> (N, dim) float32, unit rows."""
        ...


def resolve_device(device: str) -> str:
    """'auto' picks cuda, then mps, then cpu; an explicit device must exist."""
    import torch

    from mmfind.errors import UsageError

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available to this torch build")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: Apple's Metal backend is not available here")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise UsageError(f"--device must be auto, cpu, cuda or mps, not {device!r}")
    return device
