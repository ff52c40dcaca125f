"""The NumPy pieces the light text towers are built of: LayerNorm, activations, attention.

Each computes what its torch counterpart computes in fp32, to float rounding: LayerNorm and the
activations in float64 and rounded once, GELU through an erfc approximation (scipy's import
alone costs ~0.4 s). Linear layers are plain `x @ W.T + b`, with W.T stored contiguous.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

# the activations a tower may name: GELU (erf), GELU's tanh approximation, QuickGELU
# (x·sigmoid(1.702x)), ReLU, tanh
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "relu", "tanh")


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis."""
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=-1, keepdims=True)
    y = ((x64 - mean) / np.sqrt(var + eps)).astype(np.float32)
    result: np.ndarray = y * weight + bias
    return result


def activation(name: str, x: np.ndarray) -> np.ndarray:
    """One of ACTIVATIONS, elementwise, in fp32."""
    if name == "relu":
        relu: np.ndarray = np.maximum(x, np.float32(0.0))
        return relu
    x64 = x.astype(np.float64)
    if name == "quick_gelu":
        y = x64 / (1.0 + np.exp(-1.702 * x64))
    elif name == "gelu_tanh":
        y = 0.5 * x64 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64**3)))
    elif name == "gelu":
        y = 0.5 * x64 * erfc(-x64 / math.sqrt(2.0))
    elif name == "tanh":
        y = np.tanh(x64)
    else:
        raise ValueError(f"unknown activation {name!r}")
    return y.astype(np.float32)


def attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, n: int, mask: np.ndarray
) -> np.ndarray:
    """Scaled dot-product attention of (n × length, width) query/key/value rows, `heads` heads.

    `mask` is added to the scores (0 or -inf): (length, length) for all texts alike, or
    (n, 1, 1, length) to hide each text's padding keys. Returns (n × length, width)."""
    width = q.shape[-1]
    length = len(q) // n
    head = width // heads

    def split(x: np.ndarray) -> np.ndarray:  # -> (n, heads, length, head)
        return x.reshape(n, length, heads, head).transpose(0, 2, 1, 3)

    scores = (split(q) @ split(k).transpose(0, 1, 3, 2)) * np.float32(1.0 / math.sqrt(head))
    scores = scores + mask
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    scores /= scores.sum(axis=-1, keepdims=True)
    out: np.ndarray = (scores @ split(v)).transpose(0, 2, 1, 3).reshape(n * length, width)
    return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (as torch's F.normalize, eps 1e-12), float32."""
    x = x.astype(np.float32, copy=False)
    norm = np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    result: np.ndarray = (x / norm).astype(np.float32)
    return result


def row_crcs(table: np.ndarray) -> np.ndarray:
    """CRC32 of every row of an embedding table (what a light tower checks rows against)."""
    rows = np.ascontiguousarray(table)
    return np.array([zlib.crc32(r.data) for r in rows], dtype=np.uint32)


def erfc(x: Any) -> Any:
    """erfc in float64 with a relative error below 1.2e-7 (Numerical Recipes' erfcc), so GELU
    comes out at float32 precision without scipy."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))
    poly = 0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * poly))
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * poly))
    ans = t * np.exp(-z * z + poly)
    return np.where(x >= 0, ans, 2.0 - ans)
