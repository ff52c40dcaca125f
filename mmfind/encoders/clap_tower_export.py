"""Exporting a CLAP model's text tower for mmfind.encoders.light_clap_text.

Only what the NumPy tower reproduces exactly is exported: transformers' ClapModel with its
ClapTextModel (absolute position embeddings with RoBERTa's padding offset, token type 0, the
standard post-LN layers, the dense + tanh pooler on the first token), ClapProjectionLayer,
activations the NumPy tower knows (HF_ACTIVATIONS), eager or SDPA attention, and a fast
(`tokenizers`-backed) tokenizer that gives token type 0 throughout. Anything else is refused
with the reason. As for every tower, the token ids (and attention mask) and the unit vectors
of VERIFY_TEXTS are checked against ClapEncoder before anything is written
(mmfind.encoders.tower_export.write_verified).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmfind.encoders.clap import MAX_TEXT_TOKENS
from mmfind.encoders.light_clap_text import LightClapTextEncoder
from mmfind.encoders.numpy_ops import row_crcs
from mmfind.encoders.tower_export import require, tower_header, write_verified

# transformers' activation names -> mmfind.encoders.numpy_ops's
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "tanh": "tanh",
}


def export(encoder: Any, path: Path) -> None:
    """Write `encoder`'s text tower to `path`, verified first; ExportRefused when it cannot."""
    tokens = functools.partial(reference_tokens, encoder)
    write_verified(encoder, path, extract(encoder), LightClapTextEncoder, tokens, unhashed)


def reference_tokens(encoder: Any, texts: Sequence[str]) -> np.ndarray:
    """ClapEncoder's token ids and attention mask for `texts`, as (n, 2, length) int64."""
    batch = encoder.tokenize(texts, tensors="np")
    types = batch.get("token_type_ids")
    require(types is None or not np.any(types), "token type ids other than 0")
    ids = np.asarray(batch["input_ids"], dtype=np.int64)
    mask = np.asarray(batch["attention_mask"], dtype=np.int64)
    return np.stack([ids, mask], axis=1)


def extract(encoder: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The tower's header and fp32 arrays, or ExportRefused."""
    import torch
    from transformers.activations import ACT2CLS
    from transformers.models.clap import modeling_clap as clap

    def act_name(module: Any, name: Any, what: str) -> str:
        require(isinstance(name, str) and name in HF_ACTIVATIONS, f"the {what} {name}")
        cls = ACT2CLS[name]
        require(type(module) is (cls[0] if isinstance(cls, tuple) else cls), f"the {what}")
        return HF_ACTIVATIONS[name]

    def linear(module: Any, name: str, into: dict[str, np.ndarray]) -> None:
        require(type(module) is torch.nn.Linear and module.bias is not None, "a linear variant")
        into[name + ".weight.T"] = module.weight.detach().numpy().T  # (in, out): x @ W.T
        into[name + ".bias"] = module.bias.detach().numpy()

    def norm(module: Any, name: str, into: dict[str, np.ndarray]) -> None:
        require(
            type(module) is torch.nn.LayerNorm
            and module.elementwise_affine
            and module.bias is not None
            and tuple(module.normalized_shape) == (width,)
            and float(module.eps) == eps,
            "a normalisation variant",
        )
        into[name + ".weight"] = module.weight.detach().numpy()
        into[name + ".bias"] = module.bias.detach().numpy()

    model = encoder.model
    require(type(model) is clap.ClapModel, f"{type(model).__name__} is not transformers' ClapModel")
    require(str(encoder.device) == "cpu", "the model is not on the CPU in fp32")
    require(not model.training, "the model is in training mode")
    text = model.text_model
    require(type(text) is clap.ClapTextModel, "a non-standard text model")
    config = text.config
    position_type = getattr(config, "position_embedding_type", "absolute")
    require(position_type == "absolute", f"{position_type} position embeddings")
    require(not getattr(config, "is_decoder", False), "a decoder text model")
    attn = getattr(config, "_attn_implementation", None) or "eager"
    require(attn in ("eager", "sdpa"), f"the {attn} attention implementation")
    width = int(config.hidden_size)
    eps = float(config.layer_norm_eps)
    heads = int(config.num_attention_heads)
    emb = text.embeddings
    require(type(emb) is clap.ClapTextEmbeddings, "non-standard embeddings")
    padding_idx = emb.padding_idx
    require(isinstance(padding_idx, int) and padding_idx >= 0, "no padding index")
    require(not bool(emb.token_type_ids.any()), "token type ids other than 0")
    positions = int(emb.position_embeddings.num_embeddings)
    require(positions >= MAX_TEXT_TOKENS + padding_idx + 1, "too few position embeddings")
    require(all(p.dtype == torch.float32 for p in model.parameters()), "weights that are not fp32")

    arrays: dict[str, np.ndarray] = {
        "word_embeddings": emb.word_embeddings.weight.detach().numpy(),
        "position_embeddings": emb.position_embeddings.weight.detach().numpy(),
        "token_type_embedding": emb.token_type_embeddings.weight.detach().numpy()[0],
    }
    arrays["word_embeddings.crc32"] = row_crcs(arrays["word_embeddings"])
    norm(emb.LayerNorm, "embeddings.ln", arrays)
    layers = list(text.encoder.layer)
    require(len(layers) > 0, "a text model without layers")
    activations = set()
    for i, layer in enumerate(layers):
        p = f"layers.{i}."
        require(type(layer) is clap.ClapTextLayer, "custom layers")
        attention = layer.attention
        require(type(attention) is clap.ClapTextAttention, "a non-standard attention")
        own = attention.self
        require(
            type(own) is clap.ClapTextSelfAttention
            and int(own.num_attention_heads) == heads
            and int(own.all_head_size) == width
            and own.scaling == (width // heads) ** -0.5,
            "an attention variant",
        )
        parts: dict[str, np.ndarray] = {}
        for name in ("query", "key", "value"):
            linear(getattr(own, name), name, parts)
        arrays[p + "qkv.weight.T"] = np.concatenate(
            [parts[f"{n}.weight.T"] for n in ("query", "key", "value")], axis=1
        )
        arrays[p + "qkv.bias"] = np.concatenate(
            [parts[f"{n}.bias"] for n in ("query", "key", "value")]
        )
        require(type(attention.output) is clap.ClapTextSelfOutput, "an attention output variant")
        linear(attention.output.dense, p + "attn_out", arrays)
        norm(attention.output.LayerNorm, p + "attn_ln", arrays)
        require(type(layer.intermediate) is clap.ClapTextIntermediate, "an intermediate variant")
        require(type(layer.output) is clap.ClapTextOutput, "an output variant")
        activations.add(
            act_name(layer.intermediate.intermediate_act_fn, config.hidden_act, "activation")
        )
        linear(layer.intermediate.dense, p + "ffn_in", arrays)
        linear(layer.output.dense, p + "ffn_out", arrays)
        norm(layer.output.LayerNorm, p + "ffn_ln", arrays)
    require(len(activations) == 1, "mixed activations")
    pooler = text.pooler
    require(
        type(pooler) is clap.ClapTextPooler and type(pooler.activation) is torch.nn.Tanh,
        "no pooler, or a pooler variant",
    )
    linear(pooler.dense, "pooler", arrays)
    projection = model.text_projection
    require(type(projection) is clap.ClapProjectionLayer, "a text projection variant")
    projection_act = act_name(
        projection.activation, config.projection_hidden_act, "projection activation"
    )
    linear(projection.linear1, "projection.linear1", arrays)
    linear(projection.linear2, "projection.linear2", arrays)
    dim = int(projection.linear2.out_features)
    require(dim == int(encoder.dim), "the text dimension differs from the encoder's")

    tok = encoder.tokenizer
    settings = tokenizer_settings(tok)
    arrays["tokenizer.json"] = np.frombuffer(tok.backend_tokenizer.to_str().encode(), np.uint8)
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    header = tower_header(
        encoder,
        LightClapTextEncoder,
        dim=dim,
        width=width,
        heads=heads,
        layers=len(layers),
        padding_idx=padding_idx,
        activation=activations.pop(),
        projection_activation=projection_act,
        ln_eps=eps,
        tokenizer=settings,
    )
    return header, arrays


def tokenizer_settings(tok: Any) -> dict[str, Any]:
    """What LightClapTextEncoder needs to set up the backend tokenizer as transformers does
    for ClapEncoder.tokenize; ExportRefused for a tokenizer that has no `tokenizers` backend."""
    backend = getattr(tok, "backend_tokenizer", None)
    require(bool(getattr(tok, "is_fast", False)) and backend is not None, "a slow tokenizer")
    require(tok.pad_token_id is not None, "a tokenizer without a padding token")
    return {
        "kind": "tokenizers",
        "max_length": MAX_TEXT_TOKENS,
        "truncation_strategy": "longest_first",  # truncation=True
        "truncation_side": str(tok.truncation_side),
        "padding_side": str(tok.padding_side),
        "pad_id": int(tok.pad_token_id),
        "pad_token": str(tok.pad_token),
        "pad_type_id": int(tok.pad_token_type_id),
        "split_special_tokens": bool(getattr(tok, "split_special_tokens", False)),
    }


def unhashed(arrays: dict[str, np.ndarray]) -> list[str]:
    """The arrays not hashed on each load: the word-embedding table (its rows have CRC32s) and
    the weight matrices, which every text goes through (the probe texts check them)."""
    return [n for n in arrays if n == "word_embeddings" or n.endswith(".weight.T")]
