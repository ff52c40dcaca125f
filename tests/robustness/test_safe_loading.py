"""Safe loading of audio models: a local CLAP folder whose weights are a pickle
(`pytorch_model.bin`) loads through `torch.load(weights_only=True)`; a payload in it never runs.
(The open_clip side is tested in tests/test_encoders.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfind.encoders.audio_presets import load_audio_encoder
from mmfind.errors import ModelError


class _Payload:
    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.system, (f"touch {self.sentinel}",))


@pytest.fixture(scope="module")
def tiny_clap_parts() -> tuple[object, object, object]:
    encoder = load_audio_encoder("test-tiny-clap", "cpu")
    return encoder.model, encoder.tokenizer, encoder.feature_extractor


def _clap_folder(folder: Path, parts: tuple[object, object, object], extra: object) -> Path:
    """A local CLAP model folder with its weights as a pickled state dict."""
    from transformers import ClapProcessor

    model, tokenizer, extractor = parts
    model.save_pretrained(folder)  # type: ignore[attr-defined]
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    state = {k: v.clone() for k, v in model.state_dict().items()}  # type: ignore[attr-defined]
    if extra is not None:
        state["extra"] = extra  # type: ignore[assignment]
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_a_pickled_clap_checkpoint_loads_with_weights_only(
    tmp_path: Path, tiny_clap_parts: tuple[object, object, object]
) -> None:
    folder = _clap_folder(tmp_path / "clap-bin", tiny_clap_parts, None)
    encoder = load_audio_encoder(str(folder), "cpu")
    reference = load_audio_encoder("test-tiny-clap", "cpu")
    np.testing.assert_allclose(
        encoder.encode_texts(["a dog barks"]), reference.encode_texts(["a dog barks"]), atol=1e-5
    )


def test_a_pickle_payload_in_a_clap_checkpoint_never_runs(
    tmp_path: Path, tiny_clap_parts: tuple[object, object, object]
) -> None:
    sentinel = tmp_path / "pwned"
    folder = _clap_folder(tmp_path / "clap-evil", tiny_clap_parts, _Payload(str(sentinel)))
    with pytest.raises(ModelError, match="Weights only load failed"):
        load_audio_encoder(str(folder), "cpu")
    assert not sentinel.exists()


def test_a_refused_open_clip_checkpoint_says_why_even_offline(
    tmp_path: Path, tiny_encoder: object
) -> None:
    """Offline, a local checkpoint that is refused must say so, not send the user looking for
    weights in the Hugging Face cache."""
    from mmfind.encoders.presets import canonical_model, load_image_encoder

    sentinel = tmp_path / "pwned"
    model = tiny_encoder.model  # type: ignore[attr-defined]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": state, "x": _Payload(str(sentinel))}, path)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(ModelError, match="Weights only load failed") as info:
        load_image_encoder(canonical_model(f"mmfind-test-tiny:{path}"), "cpu")
    assert "Hugging Face cache" not in str(info.value)
    assert not sentinel.exists()
