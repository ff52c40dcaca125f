"""Exporting a text tower, verified first; here too open_clip's, for mmfind.encoders.light_text.

Only what the NumPy tower reproduces exactly is exported: open_clip's plain CLIP class with its
standard text transformer (ResidualAttentionBlock: nn.MultiheadAttention, no layer scale, an
MLP of Linear, GELU or QuickGELU, Linear), LayerNorms, a causal mask, argmax pooling, and
open_clip's SimpleTokenizer with its default clean-up. Anything else (SigLIP's or XLM-R's
Hugging Face text towers, custom blocks, other pooling) is refused with the reason.

Before anything is written, probe texts (short, long, empty-after-clean-up, non-Latin) are
tokenized and encoded both ways: the token ids must be identical to open_clip's and the unit
vectors within VERIFY_TOLERANCE of OpenClipEncoder.encode_texts, or nothing is exported.
`write_verified` does this for every space's exporter (mmfind.encoders.clap_tower_export too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmfind.encoders import light_text
from mmfind.encoders.clip_bpe import CLEAN_LOWER
from mmfind.encoders.light_text import LightTextEncoder
from mmfind.encoders.light_tower import LightTower
from mmfind.encoders.numpy_ops import row_crcs
from mmfind.encoders.tower_file import TowerFile, write_tower

VERIFY_TOLERANCE = 1e-4
# recorded in the file and re-run (in the query's batch) by the first encode of each process:
# short, as the batch runs to its longest text
LOAD_PROBES = ("a photo of a dog",)
VERIFY_TEXTS = (
    *LOAD_PROBES,
    "mmfind probe: 3 cats & 2 dogs, ÉTÉ — 東京 🙂",
    "",
    "&amp;nbsp;",
    "“Curly” ‘quotes’ &amp; <b>HTML</b> &lt;tags&gt;",
    "Café naïve façade — Ångström, São Paulo",
    "The Mona Lisa painting in the Louvre, 1503-1519\t\n  tabs and newlines",
    "日本語のテキストと中文文本",
    "mojibake: cafÃ© dÃ©jÃ  vu",
    "literal specials <s> <pad> </s> <unk> <mask> <|endoftext|> <start_of_text>",
    "emoji 🙂🐶🏳️‍🌈 👩‍👩‍👧, flags 🇫🇷, zero\u200bwidth, non\u00a0breaking, combining e\u0301",
    "  leading and trailing whitespace   ",
    " ".join(f"word{i}" for i in range(120)),  # beyond any context length
)


class ExportRefused(Exception):
    """This model's text tower cannot be reproduced exactly; the reason is the message."""


def export(encoder: Any, path: Path) -> None:
    """Write `encoder`'s text tower to `path`, verified first; ExportRefused when it cannot."""

    def tokens(texts: Sequence[str]) -> np.ndarray:
        return np.asarray(encoder.tokenizer(list(texts)).numpy())

    write_verified(encoder, path, extract(encoder), LightTextEncoder, tokens, unhashed)


def write_verified(
    encoder: Any,
    path: Path,
    tower: tuple[dict[str, Any], dict[str, np.ndarray]],
    light: type[LightTower],
    reference_tokens: Callable[[Sequence[str]], np.ndarray],
    unhashed: Callable[[dict[str, np.ndarray]], list[str]],
) -> None:
    """Write the extracted `tower` (header, arrays) to `path` once `light` (the class that
    runs it) gives the full encoder's token ids (`reference_tokens`: what its `tokenize`
    must return) and vectors for VERIFY_TEXTS; record the probes' vectors in the header and
    read the written file back. `unhashed` names the arrays not hashed on each load.
    ExportRefused when it does not agree."""
    header, arrays = tower
    candidate = light(TowerFile(header, arrays))
    texts = list(VERIFY_TEXTS)
    light_ids = candidate.tokenize(texts)
    expected_ids = reference_tokens(texts)
    require(
        light_ids.shape == expected_ids.shape and np.array_equal(expected_ids, light_ids),
        "the tokenizer port gives other token ids",
    )
    expected = encoder.encode_texts(texts)
    got = candidate.forward(light_ids)
    worst = float(np.max(np.abs(expected - got)))
    require(worst <= VERIFY_TOLERANCE, f"the NumPy tower differs by {worst:.2e}")
    header["probe"] = {
        "texts": list(LOAD_PROBES),
        "vectors": candidate.forward(candidate.tokenize(list(LOAD_PROBES))).tolist(),
    }
    write_tower(path, header, arrays, unhashed=unhashed(arrays))
    written = light.open(path, encoder.space, encoder.model_id)
    written.encode_texts(["written"])  # runs the recorded probes: the file reads back right


def extract(encoder: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The tower's header and fp32 arrays, or ExportRefused."""
    import open_clip
    import torch
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock, Transformer

    model = encoder.model
    require(type(model) is open_clip.model.CLIP, f"{type(model).__name__} is not open_clip CLIP")
    require(getattr(model, "text_pool_type", None) == "argmax", "text pooling is not argmax")
    require(str(encoder.device) == "cpu", "the model is not on the CPU in fp32")
    transformer = model.transformer
    require(type(transformer) is Transformer, "a non-standard text transformer")
    blocks = list(transformer.resblocks)
    require(len(blocks) > 0, "a text transformer without blocks")
    width = int(transformer.width)
    heads = int(blocks[0].attn.num_heads)
    context = int(model.positional_embedding.shape[0])
    activations = set()
    norms = [model.ln_final]
    for block in blocks:
        require(type(block) is ResidualAttentionBlock, "custom residual blocks")
        require(not hasattr(block, "ln_1_kv"), "cross-attention blocks")
        require(
            type(block.ls_1) is torch.nn.Identity and type(block.ls_2) is torch.nn.Identity,
            "layer scale",
        )
        attn = block.attn
        require(type(attn) is torch.nn.MultiheadAttention, "a non-standard attention")
        require(
            attn._qkv_same_embed_dim
            and attn.in_proj_bias is not None
            and attn.bias_k is None
            and attn.bias_v is None
            and not attn.add_zero_attn
            and attn.out_proj.bias is not None
            and int(attn.num_heads) == heads,
            "an attention variant",
        )
        parts = [name for name, _ in block.mlp.named_children()]
        require(parts == ["c_fc", "gelu", "c_proj"], "an MLP variant")
        for linear in (block.mlp.c_fc, block.mlp.c_proj):
            require(type(linear) is torch.nn.Linear and linear.bias is not None, "an MLP variant")
        act = block.mlp.gelu
        if type(act) is QuickGELU:
            activations.add("quick_gelu")
        elif type(act) is torch.nn.GELU:
            activations.add("gelu" if act.approximate == "none" else f"gelu_{act.approximate}")
        else:
            activations.add(type(act).__name__)
        norms += [block.ln_1, block.ln_2]
    require(len(activations) == 1, "mixed activations")
    activation = activations.pop()
    require(activation in light_text.ACTIVATIONS, f"the activation {activation}")
    eps = {float(n.eps) for n in norms}
    require(
        len(eps) == 1
        and all(
            isinstance(n, torch.nn.LayerNorm)
            and n.elementwise_affine
            and n.bias is not None
            and tuple(n.normalized_shape) == (width,)
            for n in norms
        ),
        "a normalisation variant",
    )
    mask = model.attn_mask
    causal = torch.full((context, context), float("-inf")).triu_(1)
    require(
        mask is not None and tuple(mask.shape) == (context, context)
        and bool(torch.equal(mask.float().cpu(), causal)),
        "a non-causal attention mask",
    )  # fmt: skip
    tok = encoder.tokenizer
    require(type(tok) is SimpleTokenizer, f"the tokenizer {type(tok).__name__}")
    require(tok.clean_fn is _clean_lower and tok.reduction_fn is None, "a tokenizer variant")
    require(int(tok.context_length) == context, "the tokenizer's context length")
    vocab = [tok.decoder[i] for i in range(len(tok.decoder))]
    merges = [f"{a} {b}" for (a, b), _ in sorted(tok.bpe_ranks.items(), key=lambda e: e[1])]
    require(all("\n" not in t for t in vocab + merges), "tokens holding a newline")
    specials = [tok.decoder[i] for i in tok.all_special_ids]

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    require(all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point()),
             "weights that are not fp32")  # fmt: skip
    arrays: dict[str, np.ndarray] = {
        "token_embedding": state["token_embedding.weight"].numpy(),
        "positional_embedding": state["positional_embedding"].numpy(),
        "ln_final.weight": state["ln_final.weight"].numpy(),
        "ln_final.bias": state["ln_final.bias"].numpy(),
    }
    arrays["token_embedding.crc32"] = row_crcs(arrays["token_embedding"])
    names = (
        *("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"),
        *("attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias"),
        *("mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"),
    )
    for i in range(len(blocks)):
        for name in names:
            value = state[f"transformer.resblocks.{i}.{name}"].numpy()
            if value.ndim == 2:  # (out, in) -> (in, out): x @ W.T runs ~25% faster so
                arrays[f"blocks.{i}.{name}.T"] = np.ascontiguousarray(value.T)
            else:
                arrays[f"blocks.{i}.{name}"] = value
    projection = model.text_projection
    if projection is None:
        kind, dim = "none", width
    elif isinstance(projection, torch.nn.Linear):
        kind, dim = "linear", int(projection.out_features)
        arrays["text_projection.weight.T"] = state["text_projection.weight"].numpy().T
        if projection.bias is not None:
            arrays["text_projection.bias"] = state["text_projection.bias"].numpy()
    else:
        kind, dim = "matrix", int(projection.shape[1])
        arrays["text_projection"] = state["text_projection"].numpy()
    require(dim == int(encoder.dim), "the text dimension differs from the encoder's")
    arrays["tokenizer.vocab"] = np.frombuffer("\n".join(vocab).encode(), dtype=np.uint8)
    arrays["tokenizer.merges"] = np.frombuffer("\n".join(merges).encode(), dtype=np.uint8)
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    header = tower_header(
        encoder,
        LightTextEncoder,
        dim=dim,
        width=width,
        heads=heads,
        layers=len(blocks),
        context_length=context,
        activation=activation,
        ln_eps=eps.pop(),
        projection=kind,
        tokenizer={"kind": "clip-bpe", "clean": CLEAN_LOWER, "specials": specials},
    )
    return header, arrays


def tower_header(encoder: Any, light: type[LightTower], **fields: Any) -> dict[str, Any]:
    """A tower file's header: its format and kind (`light`'s), space and model, `fields`."""
    return {
        "format": light.FORMAT,
        "kind": light.KIND,
        "space": encoder.space,
        "model_id": encoder.model_id,
        **fields,
        "probe": {"texts": [], "vectors": []},  # filled in by write_verified
    }


def unhashed(arrays: dict[str, np.ndarray]) -> list[str]:
    """The arrays not hashed on each load: the embedding table (its rows have CRC32s) and the
    weight matrices, which every token goes through (the probe texts check them)."""
    matrices = (
        "attn.in_proj_weight.T",
        "attn.out_proj.weight.T",
        "mlp.c_fc.weight.T",
        "mlp.c_proj.weight.T",
    )
    return [
        name
        for name in arrays
        if name == "token_embedding"
        or name.startswith("text_projection")
        or name.endswith(matrices)
    ]


def require(condition: bool, what: str) -> None:
    if not condition:
        raise ExportRefused(f"not exported: {what}")
