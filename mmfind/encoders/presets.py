"""Model names: presets, open_clip `ARCH:PRETRAINED`, `hf-hub:` ids, local checkpoints.

`canonical_model` turns what a user typed into the id the index records; `load_image_encoder`
builds the encoder from that id. Weights come from the Hugging Face cache (downloaded with a
progress bar on first use) or from a local file, loaded as safetensors or with
`torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmfind.encoders.hub import load_failure_message, prepare_hub_access, quiet_logging
from mmfind.errors import ModelError

TEST_TINY = "test-tiny"
_TINY_ARCH = "mmfind-test-tiny"
_TINY_SEED = 20261123
_CONFIG_DIR = Path(__file__).with_name("model_configs")
_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".npz", ".ckpt")


@dataclass(frozen=True)
class Preset:
    name: str
    arch: str
    pretrained: str
    about: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "default",
            "ViT-B-32-256",
            "datacomp_s34b_b86k",
            "COCO 5k text→image R@1 39.9; ViT-B/32 cost; 0.6 GB; MIT",
        ),
        Preset(
            "laion-b32",
            "ViT-B-32",
            "laion2b_s34b_b79k",
            "COCO 5k text→image R@1 39.3; ViT-B/32 cost; 0.6 GB; MIT",
        ),
        Preset(
            "siglip2-b32",
            "ViT-B-32-SigLIP2-256",
            "webli",
            "COCO 5k text→image R@1 47.2; ViT-B/32 image cost, larger text tower; "
            "multilingual; 1.5 GB; Apache-2.0",
        ),
        Preset(
            "siglip-b16",
            "ViT-B-16-SigLIP",
            "webli",
            "COCO 5k text→image R@1 47.8; ~4x the image cost of B/32; 0.8 GB; Apache-2.0",
        ),
        Preset(
            "multilingual",
            "xlm-roberta-base-ViT-B-32",
            "laion5b_s13b_b90k",
            "multilingual text (XLM-RoBERTa); text tower ~16x dearer; MIT",
        ),
    )
}


def canonical_model(spec: str) -> str:
    """The id an index records for a model name as typed (presets resolve to ARCH:PRETRAINED)."""
    spec = spec.strip()
    if not spec:
        raise ModelError("empty model name")
    if spec == TEST_TINY:
        return spec
    if spec in PRESETS:
        preset = PRESETS[spec]
        return f"{preset.arch}:{preset.pretrained}"
    if spec.startswith("hf-hub:"):
        return spec
    if spec.startswith("local-dir:"):
        return "local-dir:" + os.path.abspath(os.path.expanduser(spec[len("local-dir:") :]))
    if os.path.isdir(spec):
        return "local-dir:" + os.path.abspath(spec)
    if os.path.isfile(spec):
        raise ModelError(
            f"{spec}: a checkpoint file needs its architecture, e.g. "
            f"--model ViT-B-32:{spec} (see `python -c 'import open_clip; "
            "print(open_clip.list_models())'`)"
        )
    if ":" in spec:
        arch, rest = spec.split(":", 1)
        if _looks_like_path(rest):
            return f"{arch}:{os.path.abspath(os.path.expanduser(rest))}"
        return f"{arch}:{rest}"
    names = ", ".join(PRESETS)
    raise ModelError(
        f"unknown model {spec!r}: use a preset ({names}), an open_clip ARCH:PRETRAINED "
        "(e.g. ViT-B-32:laion2b_s34b_b79k), hf-hub:ORG/REPO, or ARCH:/path/to/checkpoint"
    )


def _looks_like_path(text: str) -> bool:
    return os.sep in text or text.endswith(_CHECKPOINT_SUFFIXES) or os.path.exists(text)


@functools.lru_cache(maxsize=2)
def load_image_encoder(model_id: str, device: str = "auto") -> Any:
    """Build the OpenClipEncoder for a canonical model id (see canonical_model).

    Cached per process: a long-lived process (tests, a resident server) loads a model once."""
    import open_clip
    import torch

    from mmfind.encoders.base import resolve_device
    from mmfind.encoders.clip import OpenClipEncoder

    resolved = resolve_device(device)
    if model_id == TEST_TINY:
        model, tokenizer = _build_tiny(open_clip, torch)
        return OpenClipEncoder(model, tokenizer, model_id, resolved)

    arch, pretrained = _split(model_id)
    try:
        with quiet_logging():
            if pretrained is not None and _looks_like_path(pretrained):
                model = _load_local_checkpoint(open_clip, arch, pretrained)
            else:
                if pretrained is not None:
                    _check_known(open_clip, arch, pretrained)
                prepare_hub_access()
                model = open_clip.create_model(arch, pretrained=pretrained, device="cpu")
            tokenizer = open_clip.get_tokenizer(arch)
    except ModelError:
        raise
    except Exception as exc:  # open_clip, huggingface_hub and torch raise many kinds
        hint = f"--model {arch}:/path/to/open_clip_model.safetensors (or MMFIND_MODEL)"
        raise ModelError(load_failure_message(model_id, exc, hint)) from exc
    return OpenClipEncoder(model, tokenizer, model_id, resolved)


def _split(model_id: str) -> tuple[str, str | None]:
    for schema in ("hf-hub:", "local-dir:"):
        if model_id.startswith(schema):
            return model_id, None
    if ":" not in model_id:
        raise ModelError(f"model {model_id!r} names no pretrained weights (ARCH:PRETRAINED)")
    arch, pretrained = model_id.split(":", 1)
    return arch, pretrained


def _check_known(open_clip: Any, arch: str, pretrained: str) -> None:
    if arch not in open_clip.list_models():
        raise ModelError(f"open_clip has no architecture {arch!r}")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags:
        known = ", ".join(tags) or "none"
        raise ModelError(f"{arch} has no pretrained weights {pretrained!r} (known: {known})")


def _load_local_checkpoint(open_clip: Any, arch: str, path: str) -> Any:
    if not os.path.isfile(path):
        raise ModelError(f"checkpoint file not found: {path}")
    if arch not in open_clip.list_models():
        raise ModelError(f"open_clip has no architecture {arch!r} for checkpoint {path}")
    model = open_clip.create_model(arch, pretrained=None, device="cpu")
    # open_clip loads .safetensors with safetensors and anything else with
    # torch.load(weights_only=True): a pickle payload in a checkpoint is never executed.
    open_clip.load_checkpoint(model, path, weights_only=True)
    return model


def _build_tiny(open_clip: Any, torch: Any) -> tuple[Any, Any]:
    """The test-tiny model: a small open_clip config, random weights from a fixed seed."""
    if _TINY_ARCH not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)
    with torch.random.fork_rng(devices=[]), quiet_logging():
        torch.manual_seed(_TINY_SEED)
        model = open_clip.create_model(_TINY_ARCH, pretrained=None, device="cpu")
    return model, open_clip.get_tokenizer(_TINY_ARCH)
