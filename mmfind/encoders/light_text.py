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
mmfind.encoders.tower_file); the weights by function, by the probes and row checks every light
tower shares (mmfind.encoders.light_tower).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmfind.encoders.clip_bpe import CLEAN_LOWER, ClipBpeTokenizer
from mmfind.encoders.light_tower import LightTower, TowerError, lines
from mmfind.encoders.numpy_ops import activation, attention, unit_rows
from mmfind.encoders.tower_file import TowerFile

FORMAT = 1
KIND = "open_clip-text"
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")


class LightTextEncoder(LightTower):
    """open_clip's text tower on an exported tower file (see mmfind.encoders.light_tower)."""

    FORMAT = FORMAT
    KIND = KIND
    EMBEDDING = "token_embedding"

    def __init__(self, tower: TowerFile) -> None:
        super().__init__(tower)
        header = tower.header
        try:
            self.context_length = int(header["context_length"])
            self.projection = str(header["projection"])
            tok = dict(header["tokenizer"])
            specials = [str(s) for s in tok["specials"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise TowerError(f"bad tower header ({exc})") from exc
        if self.activation not in ACTIVATIONS or tok.get("clean") != CLEAN_LOWER:
            raise TowerError("a tower this version cannot run")
        self._check_shapes()
        try:
            vocab = lines(self.a["tokenizer.vocab"])
            merges = lines(self.a["tokenizer.merges"])
        except (KeyError, UnicodeDecodeError) as exc:
            raise TowerError(f"the tower's tokenizer cannot be read ({exc!r})") from exc
        if len(vocab) != self.a["token_embedding"].shape[0]:
            raise TowerError("the tokenizer does not match the embedding table")
        try:
            self.tokenizer = ClipBpeTokenizer(vocab, merges, specials, self.context_length)
        except ValueError as exc:
            raise TowerError(str(exc)) from exc
        mask = np.triu(np.full((self.context_length,) * 2, -np.inf, dtype=np.float32), 1)
        self._mask = mask

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        return self.tokenizer(list(texts))

    # -- the model ----------------------------------------------------------------------------
    def _forward(self, tokens: np.ndarray) -> np.ndarray:
        """(n, context_length) token ids -> (n, dim) float32 unit rows."""
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
            h = self._norm(x, p + "ln_1")
            qkv = h @ a[p + "attn.in_proj_weight.T"] + a[p + "attn.in_proj_bias"]
            q, k, v = np.split(qkv, 3, axis=-1)
            out = attention(q, k, v, self.heads, n, mask)
            x = x + (out @ a[p + "attn.out_proj.weight.T"] + a[p + "attn.out_proj.bias"])
            h = self._norm(x, p + "ln_2") @ a[p + "mlp.c_fc.weight.T"] + a[p + "mlp.c_fc.bias"]
            h = activation(self.activation, h)
            x = x + (h @ a[p + "mlp.c_proj.weight.T"] + a[p + "mlp.c_proj.bias"])
        x = self._norm(x, "ln_final").reshape(n, length, self.width)
        pooled = x[np.arange(n), eot_at]
        if self.projection == "matrix":
            pooled = pooled @ a["text_projection"]
        elif self.projection == "linear":
            pooled = pooled @ a["text_projection.weight.T"]
            if "text_projection.bias" in a:
                pooled = pooled + a["text_projection.bias"]
        return unit_rows(pooled)

    # -- checks -------------------------------------------------------------------------------
    def _check_shapes(self) -> None:
        w, ctx, layers = self.width, self.context_length, self.layers
        if ctx < 2:
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
        except KeyError as exc:
            raise TowerError(f"the tower lacks {exc}") from exc
        if self.projection == "matrix":
            want["text_projection"] = (w, self.dim)
        elif self.projection == "linear":
            want["text_projection.weight.T"] = (w, self.dim)
            if "text_projection.bias" in self.a:
                want["text_projection.bias"] = (self.dim,)
        elif self.projection != "none" or self.dim != w:
            raise TowerError(f"unknown text projection {self.projection!r}")
        self._check_arrays(want)
