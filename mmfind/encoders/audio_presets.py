"""Audio model names: CLAP presets, Hugging Face repo ids, local model folders, test-tiny-clap."""

from __future__ import annotations

import functools
import os
from typing import Any

from mmfind.encoders.hub import load_failure_message, prepare_hub_access, quiet_logging
from mmfind.errors import ModelError

TEST_TINY_CLAP = "test-tiny-clap"
_TINY_SEED = 20261124

AUDIO_PRESETS: dict[str, tuple[str, str]] = {
    "default": ("laion/clap-htsat-unfused", "ESC-50 zero-shot 92.75 %; 0.6 GB; Apache-2.0"),
    "larger": ("laion/larger_clap_general", "general audio, music and speech; 0.8 GB; Apache-2.0"),
}


def canonical_audio_model(spec: str) -> str:
    """The id an index records for an audio model name as typed."""
    spec = spec.strip()
    if not spec:
        raise ModelError("empty audio model name")
    if spec == TEST_TINY_CLAP:
        return spec
    if spec in AUDIO_PRESETS:
        return AUDIO_PRESETS[spec][0]
    if os.path.isdir(spec):
        return os.path.abspath(spec)
    if os.path.exists(spec):
        raise ModelError(
            f"{spec}: an audio model is a Hugging Face folder (config.json, weights, tokenizer, "
            "preprocessor_config.json), not a single file"
        )
    if spec.count("/") == 1 and not spec.startswith(("/", ".")):
        return spec  # a Hugging Face repo id, e.g. laion/clap-htsat-fused
    names = ", ".join(AUDIO_PRESETS)
    raise ModelError(
        f"unknown audio model {spec!r}: use a preset ({names}), a Hugging Face repo id "
        "(ORG/NAME) or a local model folder"
    )


def default_audio_model(image_model: str) -> str:
    """The audio model a new index uses when none is named: tiny goes with tiny."""
    from mmfind.encoders.presets import TEST_TINY

    return TEST_TINY_CLAP if image_model == TEST_TINY else AUDIO_PRESETS["default"][0]


@functools.lru_cache(maxsize=2)
def load_audio_encoder(model_id: str, device: str = "auto") -> Any:
    """Build the ClapEncoder for a canonical audio model id (cached per process)."""
    from mmfind.encoders.base import resolve_device
    from mmfind.encoders.clap import ClapEncoder

    resolved = resolve_device(device)
    if model_id == TEST_TINY_CLAP:
        model, tokenizer, extractor = _build_tiny()
        return ClapEncoder(model, tokenizer, extractor, model_id, resolved)
    try:
        from transformers import ClapModel, ClapProcessor

        with quiet_logging():
            if not os.path.isdir(model_id):
                prepare_hub_access()
            # from_pretrained prefers safetensors and loads .bin files with weights_only=True
            model = ClapModel.from_pretrained(model_id, use_safetensors=None)
            processor = ClapProcessor.from_pretrained(model_id)
    except Exception as exc:  # transformers and huggingface_hub raise many kinds
        hint = "--audio-model /path/to/clap-folder (or MMFIND_AUDIO_MODEL)"
        raise ModelError(load_failure_message(model_id, exc, hint)) from exc
    extractor = processor.feature_extractor
    # Deterministic embeddings: our windows are exactly max_length, so no random crop happens,
    # and 'repeatpad' matches how the decoder pads the last window.
    extractor.padding = "repeatpad"
    return ClapEncoder(model, processor.tokenizer, extractor, model_id, resolved)


def _build_tiny() -> tuple[Any, Any, Any]:
    """test-tiny-clap: a small ClapConfig with a fixed seed and a byte-level tokenizer built in
    code, so tests never download anything."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapTextConfig,
        PreTrainedTokenizerFast,
    )

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate([*specials, *sorted(alphabet)])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=77,
    )
    text = ClapTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=80,
        projection_dim=32,
    )
    audio = ClapAudioConfig(
        window_size=4,
        num_mel_bins=64,
        spec_size=256,
        patch_size=16,
        patch_stride=(16, 16),
        num_classes=8,
        hidden_size=64,
        patch_embeds_hidden_size=32,
        projection_dim=32,
        depths=[1, 1],
        num_attention_heads=[2, 2],
        enable_fusion=False,
    )
    config = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=32)
    with torch.random.fork_rng(devices=[]), quiet_logging():
        torch.manual_seed(_TINY_SEED)
        model = ClapModel(config)
    extractor = ClapFeatureExtractor(
        feature_size=64,
        sampling_rate=48_000,
        max_length_s=10,
        truncation="rand_trunc",
        padding="repeatpad",
    )
    return model, tokenizer, extractor
