"""Model names, the test-tiny model, safe checkpoint loading and offline failures."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfind.encoders.base import Encoder, ImageEncoder, resolve_device
from mmfind.encoders.presets import PRESETS, canonical_model, load_image_encoder
from mmfind.errors import ModelError, UsageError


def test_canonical_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert canonical_model("default") == "ViT-B-32-256:datacomp_s34b_b86k"
    assert canonical_model("test-tiny") == "test-tiny"
    assert canonical_model("ViT-B-32:laion2b_s34b_b79k") == "ViT-B-32:laion2b_s34b_b79k"
    assert canonical_model("hf-hub:org/repo") == "hf-hub:org/repo"
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert canonical_model("ViT-B-32:model.safetensors") == f"ViT-B-32:{ckpt}"
    assert canonical_model(str(tmp_path)) == f"local-dir:{tmp_path}"
    with pytest.raises(ModelError, match="needs its architecture"):
        canonical_model(str(ckpt))
    with pytest.raises(ModelError, match="unknown model"):
        canonical_model("no-such-model")
    for preset in PRESETS.values():
        assert canonical_model(preset.name) == f"{preset.arch}:{preset.pretrained}"


def test_tiny_model_is_deterministic_and_follows_the_protocol(tiny_encoder: object) -> None:
    assert isinstance(tiny_encoder, Encoder) and isinstance(tiny_encoder, ImageEncoder)
    fresh = load_image_encoder.__wrapped__("test-tiny", "cpu")
    texts = ["a white cat on grass", "tax return 2023"]
    a = tiny_encoder.encode_texts(texts)  # type: ignore[attr-defined]
    b = fresh.encode_texts(texts)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 64) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(a[0], a[1])
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fresh.encode_images(pixels), fresh.encode_images(pixels))


def _tiny_state_dict(tiny_encoder: object) -> dict[str, torch.Tensor]:
    model = tiny_encoder.model  # type: ignore[attr-defined]
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_checkpoint_loads(tiny_encoder: object, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"tiny{suffix}"
    state = _tiny_state_dict(tiny_encoder)
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    model_id = canonical_model(f"mmfind-test-tiny:{path}")
    encoder = load_image_encoder(model_id, "cpu")
    assert encoder.model_id == f"mmfind-test-tiny:{path}"
    np.testing.assert_allclose(
        encoder.encode_texts(["a dog"]),
        tiny_encoder.encode_texts(["a dog"]),  # type: ignore[attr-defined]
        atol=1e-6,
    )


class _Payload:
    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.system, (f"touch {self.sentinel}",))


def test_pickle_payload_in_checkpoint_never_runs(tiny_encoder: object, tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _tiny_state_dict(tiny_encoder), "x": _Payload(str(sentinel))}, path)
    with pytest.raises(ModelError):
        load_image_encoder(canonical_model(f"mmfind-test-tiny:{path}"), "cpu")
    assert not sentinel.exists()


def test_missing_checkpoint_and_unknown_tag() -> None:
    with pytest.raises(ModelError, match="not found"):
        load_image_encoder("ViT-B-32:/nonexistent/model.safetensors", "cpu")
    with pytest.raises(ModelError, match="no pretrained weights 'nope'"):
        load_image_encoder("ViT-B-32:nope", "cpu")
    with pytest.raises(ModelError, match="no architecture"):
        load_image_encoder("ViT-Z-99:openai", "cpu")


def test_offline_without_cached_weights_says_how_to_supply_them() -> None:
    started = time.monotonic()
    with pytest.raises(ModelError) as info:
        load_image_encoder("ViT-B-32:laion2b_s34b_b79k", "cpu")
    message = str(info.value)
    assert time.monotonic() - started < 30
    assert "Hugging Face cache" in message
    assert "--model ViT-B-32:/path/to/open_clip_model.safetensors" in message
    assert "HF_HUB_OFFLINE=1" in message


def test_devices() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in {"cpu", "cuda", "mps"}
    with pytest.raises(UsageError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA"):
            resolve_device("cuda")


def test_trimmed_text_tower_equals_open_clips_encode_text(tiny_encoder: object) -> None:
    """The fast text path (run only up to the last end-of-text token) changes nothing."""
    texts = [
        "",
        "a dog",
        "a much longer sentence about a white cat sitting on green grass in the afternoon sun",
        "x " * 60,  # truncated at the context length: nothing to trim
    ]
    tokens = tiny_encoder.tokenizer(texts)  # type: ignore[attr-defined]
    with torch.inference_mode():
        full = tiny_encoder.model.encode_text(tokens)  # type: ignore[attr-defined]
        trimmed = tiny_encoder._encode_tokens(tokens)  # type: ignore[attr-defined]
        one = tiny_encoder._encode_tokens(tokens[1:2])  # type: ignore[attr-defined]
    np.testing.assert_allclose(trimmed.numpy(), full.numpy(), atol=1e-5)
    np.testing.assert_allclose(one.numpy()[0], full.numpy()[1], atol=1e-5)
