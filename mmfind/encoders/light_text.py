"""A CLIP text tower run with NumPy: text query vectors without importing torch or open_clip.

A cold `mmfind query TEXT` spends most of its time importing torch (~1.2 s) and open_clip
(~2.3 s) and building the model (~1.6 s), only to run the text tower. mmfind.text_towers
exports that tower into the index folder while the full model is loaded anyway (mmfind index,
or a query that had to load it); this module loads it (memory-mapped) and computes the same
unit vectors as OpenClipEncoder.encode_texts on the CPU in fp32, to float rounding.

The model is open_clip's standard text transformer: token + positional embedding, pre-norm
residual blocks (multi-head causal self-attention, an MLP with GELU or QuickGELU), a final
LayerNorm, the features at the end-of-text position (the highest token id: argmax pooling) and
the text projection. As in OpenClipEncoder, the batch is cut after its last end-of-text token:
with causal attention and argmax pooling the padding cannot change the result.

Damage. The tower file's header, size and small arrays are checked when it is opened (see
mmfind.encoders.tower_file). The large matrices are checked by function: the first encode runs
the export's probe texts in the same batch and compares their vectors with those recorded at
export; the token-embedding rows a batch uses are checked against their recorded CRC32s. Any
mismatch raises TowerError, and the caller answers with the full model instead.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmfind.encoders.blas_threads import one_blas_thread
from mmfind.encoders.clip_bpe import CLEAN_LOWER, ClipBpeTokenizer
from mmfind.encoders.tower_file import TowerFile, TowerFileError, read_tower

FORMAT = 1
KIND = "open_clip-text"
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")
PROBE_TOLERANCE = 1e-5  # max abs difference of the probes' unit vectors from the recorded ones
SEEN_LIMIT = 4096  # texts whose vectors an encoder remembers


class TowerError(Exception):
    """The tower cannot be used: missing, damaged, from another model or of an unknown form."""


class LightTextEncoder:
    """The Encoder protocol (texts only) on an exported text tower; always on the CPU."""

    device = "cpu"

    def __init__(self, tower: TowerFile) -> None:
        header = tower.header
        try:
            self.model_id = str(header["model_id"])
            self.space = str(header["space"])
            self.dim = int(header["dim"])
            self.width = int(header["width"])
            self.heads = int(header["heads"])
            self.layers = int(header["layers"])
            self.context_length = int(header["context_length"])
            self.activation = str(header["activation"])
            self.ln_eps = float(header["ln_eps"])
            self.projection = str(header["projection"])
            tok = header["tokenizer"]
            probe = header["probe"]
            self.probe_texts = [str(t) for t in probe["texts"]]
            self.probe_vectors = np.asarray(probe["vectors"], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise TowerError(f"bad tower header ({exc})") from exc
        if header.get("format") != FORMAT or header.get("kind") != KIND:
            raise TowerError("a tower of another format")
        if self.activation not in ACTIVATIONS or tok.get("clean") != CLEAN_LOWER:
            raise TowerError("a tower this version cannot run")
        self.a = tower.arrays
        self._check_shapes()
        vocab = _lines(self.a["tokenizer.vocab"])
        merges = _lines(self.a["tokenizer.merges"])
        if len(vocab) != self.a["token_embedding"].shape[0]:
            raise TowerError("the tokenizer does not match the embedding table")
        try:
            self.tokenizer = ClipBpeTokenizer(
                vocab, merges, [str(s) for s in tok["specials"]], self.context_length
            )
        except ValueError as exc:
            raise TowerError(str(exc)) from exc
        self.verified = False
        self._rows_ok: set[int] = set()
        self._seen: dict[str, np.ndarray] = {}
        mask = np.triu(np.full((self.context_length,) * 2, -np.inf, dtype=np.float32), 1)
        self._mask = mask

    # -- the Encoder protocol -----------------------------------------------------------------
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of `texts`. A text seen before by this encoder gets the very same
        vector again (as the full model gives for a text alone): the rows of a matrix product
        can differ in the last bits with the batch around them (here: the probes), and a
        query whose --not text is its own text must cancel out exactly."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        new = list(dict.fromkeys(t for t in texts if t not in self._seen))
        if new:
            probes = [] if self.verified else self.probe_texts
            tokens = self.tokenizer([*new, *probes])
            self._check_rows(tokens)
            vectors = self.forward(tokens)
            if probes:
                got = vectors[len(new) :]
                if got.shape != self.probe_vectors.shape or not (
                    float(np.max(np.abs(got - self.probe_vectors))) <= PROBE_TOLERANCE
                ):
                    raise TowerError("the tower's weights are damaged (probe texts disagree)")
                self.verified = True
            if len(self._seen) > SEEN_LIMIT:
                self._seen.clear()
            self._seen.update(zip(new, vectors[: len(new)], strict=True))
        return np.stack([self._seen[t] for t in texts]).astype(np.float32, copy=False)

    # -- the model ----------------------------------------------------------------------------
    def forward(self, tokens: np.ndarray) -> np.ndarray:
        """(n, context_length) token ids -> (n, dim) float32 unit rows."""
        with one_blas_thread():
            return self._forward(tokens)

    def _forward(self, tokens: np.ndarray) -> np.ndarray:
        a = self.a
        eot_at = tokens.argmax(axis=-1)
        length = int(eot_at.max()) + 1
        tokens = tokens[:, :length]
        x = a["token_embedding"][tokens] + a["positional_embedding"][:length]
        mask = self._mask[:length, :length]
        n = len(tokens)
        x = x.reshape(n * length, self.width)  # linear layers as 2-D products: 2x faster
        for i in range(self.layers):
            p = f"blocks.{i}."
            x = x + self._attention(self._norm(x, p + "ln_1"), p, mask, n)
            h = self._norm(x, p + "ln_2") @ a[p + "mlp.c_fc.weight.T"] + a[p + "mlp.c_fc.bias"]
            x = x + (self._act(h) @ a[p + "mlp.c_proj.weight.T"] + a[p + "mlp.c_proj.bias"])
        x = self._norm(x, "ln_final").reshape(n, length, self.width)
        pooled = x[np.arange(n), eot_at]
        if self.projection == "matrix":
            pooled = pooled @ a["text_projection"]
        elif self.projection == "linear":
            pooled = pooled @ a["text_projection.weight.T"]
            if "text_projection.bias" in a:
                pooled = pooled + a["text_projection.bias"]
        pooled = pooled.astype(np.float32, copy=False)
        norm = np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        result: np.ndarray = (pooled / norm).astype(np.float32)
        return result

    def _attention(self, h: np.ndarray, p: str, mask: np.ndarray, n: int) -> np.ndarray:
        """Causal multi-head self-attention of (n × length, width) rows."""
        a = self.a
        width = self.width
        length = len(h) // n
        head = width // self.heads
        qkv = h @ a[p + "attn.in_proj_weight.T"] + a[p + "attn.in_proj_bias"]
        qkv = qkv.reshape(n, length, 3, self.heads, head).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (n, heads, length, head)
        scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(1.0 / math.sqrt(head)) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        out = (scores @ v).transpose(0, 2, 1, 3).reshape(n * length, width)
        result: np.ndarray = out @ a[p + "attn.out_proj.weight.T"] + a[p + "attn.out_proj.bias"]
        return result

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        x64 = x.astype(np.float64)
        mean = x64.mean(axis=-1, keepdims=True)
        var = ((x64 - mean) ** 2).mean(axis=-1, keepdims=True)
        y = ((x64 - mean) / np.sqrt(var + self.ln_eps)).astype(np.float32)
        result: np.ndarray = y * self.a[name + ".weight"] + self.a[name + ".bias"]
        return result

    def _act(self, x: np.ndarray) -> np.ndarray:
        x64 = x.astype(np.float64)
        if self.activation == "quick_gelu":
            y = x64 / (1.0 + np.exp(-1.702 * x64))
        elif self.activation == "gelu_tanh":
            y = 0.5 * x64 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64**3)))
        else:
            y = 0.5 * x64 * _erfc(-x64 / math.sqrt(2.0))
        return y.astype(np.float32)

    # -- checks -------------------------------------------------------------------------------
    def _check_shapes(self) -> None:
        w, ctx, layers = self.width, self.context_length, self.layers
        if self.heads < 1 or w % self.heads or layers < 1 or ctx < 2:
            raise TowerError("implausible tower dimensions")
        try:
            vocab = self.a["token_embedding"].shape[0]
            want: dict[str, tuple[int, ...]] = {
                "token_embedding": (vocab, w),
                "token_embedding.crc32": (vocab,),
                "positional_embedding": (ctx, w),
                "ln_final.weight": (w,),
                "ln_final.bias": (w,),
            }
            for i in range(layers):  # linear weights are stored transposed: (in, out)
                p = f"blocks.{i}."
                mlp = self.a[p + "mlp.c_fc.weight.T"].shape[1]
                want |= {
                    p + "ln_1.weight": (w,), p + "ln_1.bias": (w,),
                    p + "ln_2.weight": (w,), p + "ln_2.bias": (w,),
                    p + "attn.in_proj_weight.T": (w, 3 * w), p + "attn.in_proj_bias": (3 * w,),
                    p + "attn.out_proj.weight.T": (w, w), p + "attn.out_proj.bias": (w,),
                    p + "mlp.c_fc.weight.T": (w, mlp), p + "mlp.c_fc.bias": (mlp,),
                    p + "mlp.c_proj.weight.T": (mlp, w), p + "mlp.c_proj.bias": (w,),
                }  # fmt: skip
            if self.projection == "matrix":
                want["text_projection"] = (w, self.dim)
            elif self.projection == "linear":
                want["text_projection.weight.T"] = (w, self.dim)
                if "text_projection.bias" in self.a:
                    want["text_projection.bias"] = (self.dim,)
            elif self.projection != "none" or self.dim != w:
                raise TowerError(f"unknown text projection {self.projection!r}")
            for name, shape in want.items():
                array = self.a[name]
                kind = "u" if name.endswith(".crc32") else "f"
                if array.shape != shape or array.dtype.kind != kind:
                    raise TowerError(f"{name} has shape {array.shape}, not {shape}")
        except KeyError as exc:
            raise TowerError(f"the tower lacks {exc}") from exc

    def _check_rows(self, tokens: np.ndarray) -> None:
        """The token-embedding rows this batch uses are the ones exported (CRC32 per row)."""
        table = self.a["token_embedding"]
        crcs = self.a["token_embedding.crc32"]
        for token in np.unique(tokens).tolist():
            if token in self._rows_ok:
                continue
            if zlib.crc32(np.ascontiguousarray(table[token]).data) != int(crcs[token]):
                raise TowerError(f"the tower's embedding of token {token} is damaged")
            self._rows_ok.add(token)


def open_light_encoder(path: Path, space: str, model_id: str) -> LightTextEncoder:
    """The tower at `path`, if it is intact and holds `model_id`'s text tower for `space`."""
    try:
        tower = read_tower(path)
    except (TowerFileError, ValueError) as exc:
        raise TowerError(str(exc)) from exc
    if tower.header.get("model_id") != model_id or tower.header.get("space") != space:
        raise TowerError(f"the tower holds {tower.header.get('model_id')}, not {model_id}")
    return LightTextEncoder(tower)


def row_crcs(table: np.ndarray) -> np.ndarray:
    """CRC32 of every row of an embedding table (what _check_rows compares)."""
    rows = np.ascontiguousarray(table)
    return np.array([zlib.crc32(r.data) for r in rows], dtype=np.uint32)


def _lines(blob: np.ndarray) -> list[str]:
    return bytes(np.asarray(blob)).decode("utf-8").split("\n")


def _erfc(x: Any) -> Any:
    """erfc in float64 with a relative error below 1.2e-7 (Numerical Recipes' erfcc), so GELU
    comes out at float32 precision without scipy (whose import alone costs ~0.4 s)."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))
    poly = 0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * poly))
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * poly))
    ans = t * np.exp(-z * z + poly)
    return np.where(x >= 0, ans, 2.0 - ans)
