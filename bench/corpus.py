"""Generated inputs for the benchmarks: photo-like JPEGs, many tiny files, CLIP-like unit
vectors and a random-init checkpoint of the default model's architecture.

Everything is deterministic (seeded) and written under bench/corpus/ (git-ignored). A corpus
folder carries a manifest of the parameters that made it, so a second run reuses it instead of
writing it again, and a change of parameters rewrites it.

Heavy imports (torch, open_clip) happen inside the functions that need them: decode workers
spawned by the indexer re-import the benchmark's main module, and must stay light.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

BENCH_DIR = Path(__file__).resolve().parent
CORPUS_DIR = BENCH_DIR / "corpus"
MANIFEST = "manifest.json"

# Sizes (width, height) of the photo corpora: ~0.3 MP, 2 MP and 12 MP, 4:3 like most cameras.
SIZE_03MP = (640, 480)
SIZE_2MP = (1632, 1224)
SIZE_12MP = (4000, 3000)

DEFAULT_ARCH = "ViT-B-32-256"  # the architecture of the `default` preset
CHECKPOINT_SEED = 5


# --- caching -----------------------------------------------------------------------------------


def cached_dir(path: Path, params: dict[str, Any], build: Callable[[Path], None]) -> bool:
    """Make `path` hold what `build(path)` writes for `params`; reuse it when its manifest says
    it already does. Returns True when it was (re)built now."""
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            if json.loads(manifest.read_text()) == params:
                return False
        except ValueError:
            pass
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    build(path)
    manifest.write_text(json.dumps(params, sort_keys=True))
    return True


# --- photos ------------------------------------------------------------------------------------


def _octave_noise(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Texture at several scales (coarse blobs to fine grain), like foliage, fabric or gravel:
    random fields drawn small and enlarged bicubically, amplitude falling with frequency."""
    out = np.zeros((h, w), np.float32)
    cells = 4
    amplitude = 26.0
    while cells < max(w, h) // 2:
        field = rng.normal(0.0, 1.0, (max(2, cells * h // w), cells)).astype(np.float32)
        img = Image.fromarray(field, mode="F").resize((w, h), Image.Resampling.BICUBIC)
        out += amplitude * np.asarray(img)
        cells *= 3
        amplitude *= 0.62
    return out


def photo(size: tuple[int, int], seed: int) -> Image.Image:
    """A photo-like RGB picture: smooth gradients (sky, walls), blurred shapes with edges
    (objects), multi-scale texture and sensor noise. Its JPEG (quality 90) costs about
    1.3-1.6 bits per pixel, in the range of camera photos, so entropy decoding costs what a real
    photo's does."""
    w, h = size
    rng = np.random.default_rng(seed)
    # Gradients and shapes are drawn at up to ~0.5 MP and enlarged bicubically: enlarging softens
    # their edges as a lens does, and costs far less than blurring 12 MP.
    step = max(1, round(min(w, h) / 600))
    sw, sh = -(-w // step), -(-h // step)
    x = np.linspace(0.0, 1.0, sw, dtype=np.float32)[None, :]
    y = np.linspace(0.0, 1.0, sh, dtype=np.float32)[:, None]
    base = np.empty((sh, sw, 3), np.float32)
    for c in range(3):
        fx, fy, px, py = rng.uniform(0.3, 2.5, 4)
        base[..., c] = rng.uniform(70, 180) + 50 * np.sin(6.28 * (fx * x + px))
        base[..., c] += 40 * np.cos(6.28 * (fy * y + py))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(10, 24))):
        x0, x1 = sorted(rng.integers(0, sw, 2).tolist())
        y0, y1 = sorted(rng.integers(0, sh, 2).tolist())
        fill = tuple(rng.integers(0, 256, 3).tolist())
        shape = rng.random()
        if shape < 0.4:
            draw.ellipse((x0, y0, x1 + 1, y1 + 1), fill=fill)
        elif shape < 0.8:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            points = [tuple(p) for p in rng.integers(0, [sw, sh], (5, 2)).tolist()]
            draw.polygon(points, fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    if step > 1:
        img = img.resize((w, h), Image.Resampling.BICUBIC)
    img = img.crop((0, 0, w, h)) if img.size != (w, h) else img
    # texture whose strength varies over the frame (a sharp subject, a smoother background)
    xs = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    mask = 0.35 + 0.65 * np.clip(0.5 + 0.5 * np.sin(6.28 * xs * rng.uniform(0.5, 1.5)), 0, 1)
    grain = _octave_noise(rng, w, h) * mask
    grain += rng.normal(0.0, 3.0, (h, w)).astype(np.float32)  # luminance sensor noise
    pixels = np.asarray(img, np.float32)
    pixels += grain[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _write_photo(job: tuple[Path, tuple[int, int], int, int]) -> None:
    path, size, seed, quality = job
    photo(size, seed).save(path, quality=quality)


def write_photos(
    folder: Path, count: int, size: tuple[int, int], seed: int = 0, quality: int = 90
) -> bool:
    """`count` JPEGs of `size` in `folder` (reused when already there), written by one process
    per core. True when written now."""

    def build(path: Path) -> None:
        jobs = [
            (path / f"img{i:05d}.jpg", size, seed * 1_000_003 + i, quality) for i in range(count)
        ]
        workers = min(os.cpu_count() or 1, max(1, count))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_write_photo, jobs, chunksize=max(1, count // (4 * workers))))

    params = {"kind": "photos", "count": count, "size": list(size), "seed": seed, "q": quality}
    return cached_dir(folder, params, build)


def jpeg_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.jpg"))


# --- many tiny files ---------------------------------------------------------------------------


def tiny_png(i: int) -> bytes:
    """A valid 2x1 RGB PNG whose pixels encode `i` (so every file has its own content hash)."""
    raw = b"\x00" + bytes([i & 255, (i >> 8) & 255, (i >> 16) & 255, 7, 7, 7])

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 2, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def write_tiny_files(folder: Path, count: int, per_dir: int = 1000) -> bool:
    """`count` distinct tiny PNGs, `per_dir` to a sub-folder (a photo library's day folders)."""

    def build(path: Path) -> None:
        for start in range(0, count, per_dir):
            sub = path / f"d{start // per_dir:04d}"
            sub.mkdir()
            for i in range(start, min(count, start + per_dir)):
                (sub / f"p{i:07d}.png").write_bytes(tiny_png(i))

    return cached_dir(folder, {"kind": "tiny", "count": count, "per_dir": per_dir}, build)


# --- vectors -----------------------------------------------------------------------------------


class ClipLikeVectors:
    """Unit vectors shaped like CLIP embeddings, for the ANN benchmarks.

    Uniform random unit vectors are the wrong test: real embeddings share a mean direction (two
    random photos have cosine ~0.4), cluster by content, and have a decaying spectrum (a few
    directions carry most of the variance). Text queries sit apart from the images (the
    "modality gap": the best image match of a text has cosine ~0.3-0.45). This generator has all
    four: image = 0.8·m + 0.8·c_k + 0.55·noise, query = 0.8·m_t + 0.3·m + 0.35·c_k + 0.6·noise,
    with 2000 cluster centres c_k and noise drawn with standard deviations ∝ i^-1/2 over the
    dimensions, then normalised. Measured on 20,000: mean image-image cosine 0.41; a query's
    best match 0.45, its 10th 0.41, its mean 0.18. Recall of an HNSW graph on these is lower
    than on plain clustered data at the same ef (the queries are off the images' manifold), which
    is the realistic and the harder case.
    """

    def __init__(self, dim: int = 512, seed: int = 0, clusters: int = 2000) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.seed = seed
        spectrum = np.arange(1, dim + 1, dtype=np.float32) ** -0.5
        self.spectrum = spectrum / np.sqrt(float((spectrum**2).sum()))
        m = rng.standard_normal(dim).astype(np.float32)
        self.mean = m / np.linalg.norm(m)
        t = rng.standard_normal(dim).astype(np.float32)
        t -= (t @ self.mean) * self.mean
        self.text_mean = t / np.linalg.norm(t)
        self.centres = rng.standard_normal((clusters, dim)).astype(np.float32) * self.spectrum

    def _noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.standard_normal((n, self.dim), dtype=np.float32) * self.spectrum

    def images(self, n: int, chunk: int = 100_000, *, start: int = 0) -> np.ndarray:
        """(n - start, dim) float32 unit rows: rows start..n-1. Row i is the same whatever n and
        start (chunks have their seeds); start must be a multiple of chunk."""
        if start % chunk:
            raise ValueError("start must be a multiple of chunk")
        out = np.empty((max(n - start, 0), self.dim), np.float32)
        for first in range(start, n, chunk):
            stop = min(n, first + chunk)
            rng = np.random.default_rng((self.seed, 1, first // chunk))
            labels = rng.integers(0, len(self.centres), stop - first)
            v = 0.8 * self.mean + 0.8 * self.centres[labels] + 0.55 * self._noise(rng, stop - first)
            out[first - start : stop - start] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out

    def queries(self, n: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, 2))
        labels = rng.integers(0, len(self.centres), n)
        v = 0.8 * self.text_mean + 0.3 * self.mean + 0.35 * self.centres[labels]
        v = v + 0.6 * self._noise(rng, n)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def exact_top_k(data: np.ndarray, queries: np.ndarray, k: int, chunk: int = 200_000) -> np.ndarray:
    """Ids of the k largest inner products per query (ground truth), in chunks of the data."""
    best_ids = np.zeros((len(queries), 0), np.int64)
    best_scores = np.zeros((len(queries), 0), np.float32)
    for start in range(0, len(data), chunk):
        scores = queries @ data[start : start + chunk].T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        ids = np.concatenate([best_ids, top + start], axis=1)
        vals = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        order = np.argsort(-vals, axis=1)[:, :k]
        best_ids = np.take_along_axis(ids, order, axis=1)
        best_scores = np.take_along_axis(vals, order, axis=1)
    return best_ids


# --- checkpoint --------------------------------------------------------------------------------


def random_checkpoint(path: Path, arch: str = DEFAULT_ARCH) -> bool:
    """A random-init open_clip `arch` saved as safetensors (real FLOPs and load cost, no
    download). Written once; True when written now."""
    stamp = path.with_suffix(".json")
    params = {"arch": arch, "seed": CHECKPOINT_SEED}
    if path.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == params:
        return False
    import logging

    import open_clip
    import torch
    from safetensors.torch import save_file

    logging.getLogger().setLevel(logging.ERROR)  # "No pretrained weights loaded": on purpose
    torch.manual_seed(CHECKPOINT_SEED)
    model = open_clip.create_model(arch, pretrained=None, device="cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)
    stamp.write_text(json.dumps(params))
    return True
