"""The audio-text space, through transformers' ClapModel (48 kHz, 10 s windows)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mmfind.spaces import CLAP as SPACE

MAX_TEXT_TOKENS = 77


class ClapEncoder:
    """A CLAP model in eval mode. Windows must be exactly `window_samples` long (the decoder pads
    them), so the feature extractor never crops or pads at random: embeddings are deterministic."""

    space = SPACE

    def __init__(
        self, model: Any, tokenizer: Any, feature_extractor: Any, model_id: str, device: str
    ) -> None:
        self.model_id = model_id
        self.device = device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.window_samples = int(feature_extractor.nb_max_samples)
        self.dim = int(self.encode_texts(["a"]).shape[-1])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self.tokenize(texts).to(self.device)
        with torch.inference_mode():
            out = self.model.get_text_features(**tokens)
        return _unit(out)

    def tokenize(self, texts: Sequence[str], tensors: str = "pt") -> Any:
        """The tokenizer's batch for `texts`, as encode_texts gives it to the model (the light
        CLAP text tower reproduces these settings: mmfind.encoders.light_clap_text)."""
        return self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=MAX_TEXT_TOKENS,
            return_tensors=tensors,
        )

    def encode_audio(self, windows: np.ndarray) -> np.ndarray:
        """(N, window_samples) float32 mono at sample_rate -> (N, dim) unit rows."""
        if len(windows) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if windows.shape[1] != self.window_samples:
            raise ValueError(
                f"audio windows must hold {self.window_samples} samples, not {windows.shape[1]}"
            )
        features = self.feature_extractor(
            list(windows), sampling_rate=self.sample_rate, return_tensors="pt"
        )
        inputs = {
            k: v.to(self.device, dtype=self.dtype) if v.is_floating_point() else v.to(self.device)
            for k, v in features.items()
        }
        with torch.inference_mode():
            out = self.model.get_audio_features(**inputs)
        return _unit(out)


def _unit(out: Any) -> np.ndarray:
    """transformers 4 returns a tensor, 5 an output object whose pooler_output is the embedding."""
    x = out if isinstance(out, torch.Tensor) else out.pooler_output
    x = x.float()
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    result: np.ndarray = x.cpu().numpy().astype(np.float32, copy=False)
    return result
