"""A CLAP text tower run with NumPy: audio-space text vectors without torch or transformers.

The clap space's text side is transformers' ClapTextModel (RoBERTa-like) and the text
projection of ClapModel. mmfind.encoders.clap_tower_export exports it while the model is
loaded anyway; this module computes what ClapEncoder.encode_texts computes, on the CPU in fp32,
to float rounding:

- tokens: the model's own fast tokenizer, run by the `tokenizers` library from its exported
  JSON with the settings ClapEncoder calls it with (pad to the batch's longest text, truncate
  to 77 tokens), so the ids and the attention mask are the very same;
- embeddings: word + token type 0 + position, RoBERTa's position ids (padding_idx + 1 onwards,
  counting non-padding tokens; padding tokens keep padding_idx), then LayerNorm;
- N post-LN encoder layers: self-attention with the padding keys masked, dense, residual,
  LayerNorm; dense, activation (config.hidden_act), dense, residual, LayerNorm;
- the pooler (dense + tanh on the first token), the projection (linear1, activation
  config.projection_hidden_act, linear2), L2 normalisation.

Damage is handled as for every light tower (mmfind.encoders.light_tower).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mmfind.encoders.light_tower import LightTower, TowerError, text
from mmfind.encoders.numpy_ops import ACTIVATIONS, activation, attention, unit_rows
from mmfind.encoders.tower_file import TowerFile

FORMAT = 1
KIND = "clap-text"


class LightClapTextEncoder(LightTower):
    """ClapModel's text features on an exported tower file. `tokenize` returns (n, 2, length)
    int64: the token ids and the attention mask."""

    FORMAT = FORMAT
    KIND = KIND
    EMBEDDING = "word_embeddings"

    def __init__(self, tower: TowerFile) -> None:
        super().__init__(tower)
        header = tower.header
        try:
            self.padding_idx = int(header["padding_idx"])
            self.projection_activation = str(header["projection_activation"])
            tok = dict(header["tokenizer"])
            self.max_length = int(tok["max_length"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TowerError(f"bad tower header ({exc})") from exc
        if not {self.activation, self.projection_activation} <= set(ACTIVATIONS):
            raise TowerError("a tower this version cannot run")
        self._check_shapes()
        try:
            json_text = text(self.a["tokenizer.json"])
        except (KeyError, UnicodeDecodeError) as exc:
            raise TowerError(f"the tower's tokenizer cannot be read ({exc!r})") from exc
        self.tokenizer = _backend_tokenizer(json_text, tok)

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] > self.max_length:
            raise TowerError("the tokenizer did not pad and truncate as exported")
        return np.stack([ids, mask], axis=1)

    def token_ids(self, tokens: np.ndarray) -> np.ndarray:
        ids: np.ndarray = tokens[:, 0]
        return ids

    # -- the model ----------------------------------------------------------------------------
    def _forward(self, tokens: np.ndarray) -> np.ndarray:
        a = self.a
        ids, mask = tokens[:, 0], tokens[:, 1]
        n, length = ids.shape
        real = (ids != self.padding_idx).astype(np.int64)
        positions = np.cumsum(real, axis=1) * real + self.padding_idx
        x = a["word_embeddings"][ids] + a["token_type_embedding"]
        x = x + a["position_embeddings"][positions]
        x = self._norm(x.reshape(n * length, self.width), "embeddings.ln")
        hidden = np.where(mask == 0, -np.inf, 0.0).astype(np.float32)[:, None, None, :]
        for i in range(self.layers):
            p = f"layers.{i}."
            qkv = x @ a[p + "qkv.weight.T"] + a[p + "qkv.bias"]
            q, k, v = np.split(qkv, 3, axis=-1)
            out = attention(q, k, v, self.heads, n, hidden)
            x = self._norm(out @ a[p + "attn_out.weight.T"] + a[p + "attn_out.bias"] + x,
                           p + "attn_ln")  # fmt: skip
            h = activation(self.activation, x @ a[p + "ffn_in.weight.T"] + a[p + "ffn_in.bias"])
            x = self._norm(h @ a[p + "ffn_out.weight.T"] + a[p + "ffn_out.bias"] + x, p + "ffn_ln")
        first = x.reshape(n, length, self.width)[:, 0]
        pooled = activation("tanh", first @ a["pooler.weight.T"] + a["pooler.bias"])
        h = pooled @ a["projection.linear1.weight.T"] + a["projection.linear1.bias"]
        h = activation(self.projection_activation, h)
        return unit_rows(h @ a["projection.linear2.weight.T"] + a["projection.linear2.bias"])

    # -- checks -------------------------------------------------------------------------------
    def _check_shapes(self) -> None:
        w, layers = self.width, self.layers
        if self.padding_idx < 0:
            raise TowerError("implausible tower dimensions")
        try:
            vocab = self.a["word_embeddings"].shape[0]
            positions = self.a["position_embeddings"].shape[0]
            ffn = [self.a[f"layers.{i}.ffn_in.weight.T"].shape[1] for i in range(layers)]
        except (KeyError, IndexError) as exc:
            raise TowerError(f"the tower lacks {exc}") from exc
        if positions < self.max_length + self.padding_idx + 1:
            raise TowerError("fewer position embeddings than the tokenizer's longest text needs")
        want: dict[str, tuple[int, ...]] = {
            "word_embeddings": (vocab, w),
            "word_embeddings.crc32": (vocab,),
            "position_embeddings": (positions, w),
            "token_type_embedding": (w,),
            "embeddings.ln.weight": (w,), "embeddings.ln.bias": (w,),
            "pooler.weight.T": (w, w), "pooler.bias": (w,),
            "projection.linear1.weight.T": (w, self.dim), "projection.linear1.bias": (self.dim,),
            "projection.linear2.weight.T": (self.dim, self.dim),
            "projection.linear2.bias": (self.dim,),
        }  # fmt: skip
        for i in range(layers):  # linear weights are stored transposed: (in, out)
            p = f"layers.{i}."
            want |= {
                p + "qkv.weight.T": (w, 3 * w), p + "qkv.bias": (3 * w,),
                p + "attn_out.weight.T": (w, w), p + "attn_out.bias": (w,),
                p + "attn_ln.weight": (w,), p + "attn_ln.bias": (w,),
                p + "ffn_in.weight.T": (w, ffn[i]), p + "ffn_in.bias": (ffn[i],),
                p + "ffn_out.weight.T": (ffn[i], w), p + "ffn_out.bias": (w,),
                p + "ffn_ln.weight": (w,), p + "ffn_ln.bias": (w,),
            }  # fmt: skip
        self._check_arrays(want)


def _backend_tokenizer(json_text: str, settings: dict[str, Any]) -> Any:
    """The `tokenizers` Tokenizer of the exported JSON, set up as transformers sets it up for
    ClapEncoder's call (padding=True, truncation=True, max_length)."""
    from tokenizers import Tokenizer  # (~10 ms, no torch)

    try:
        tokenizer = Tokenizer.from_str(json_text)
        tokenizer.no_truncation()
        tokenizer.no_padding()
        tokenizer.enable_truncation(
            max_length=int(settings["max_length"]),
            stride=0,
            strategy=str(settings["truncation_strategy"]),
            direction=str(settings["truncation_side"]),
        )
        tokenizer.enable_padding(
            direction=str(settings["padding_side"]),
            pad_id=int(settings["pad_id"]),
            pad_type_id=int(settings["pad_type_id"]),
            pad_token=str(settings["pad_token"]),
            length=None,
            pad_to_multiple_of=None,
        )
        tokenizer.encode_special_tokens = bool(settings["split_special_tokens"])
    except Exception as exc:  # tokenizers raises plain Exceptions for a bad JSON
        raise TowerError(f"the tower's tokenizer cannot be loaded ({exc})") from exc
    return tokenizer
