"""The image-text space, through open_clip."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from mmfind.media.image import ImageSpec
from mmfind.spaces import CLIP as SPACE


class OpenClipEncoder:
    """An open_clip model in eval mode; fp16 on CUDA, fp32 elsewhere."""

    space = SPACE

    def __init__(
        self,
        model: Any,
        tokenizer: Callable[[Sequence[str]], torch.Tensor],
        model_id: str,
        device: str,
    ) -> None:
        import open_clip

        self.model_id = model_id
        self.device = device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        self.context_length = int(getattr(tokenizer, "context_length", 77))
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        size_hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.image_spec = ImageSpec(
            size=size_hw,
            resize_mode=str(cfg.get("resize_mode", "shortest")),
            interpolation=str(cfg.get("interpolation", "bicubic")),
            fill_color=int(cfg.get("fill_color", 0)),
        )
        mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        self.image_mean = tuple(float(v) for v in mean)
        self.image_std = tuple(float(v) for v in std)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
        with torch.inference_mode():
            probe = self.model.encode_text(self.tokenizer(["a"]).to(device))
        self.dim = int(probe.shape[-1])

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = torch.from_numpy(np.ascontiguousarray(pixels))
        if self.device.startswith("cuda"):
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        x = batch.permute(0, 3, 1, 2).to(torch.float32)
        x = ((x - self._mean) / self._std).to(self.dtype)
        with torch.inference_mode():
            features = self.model.encode_image(x)
        return _unit(features)

    def encode_image_tensor(self, x: torch.Tensor) -> np.ndarray:
        """Model-ready images (N, 3, H, W), normalised with image_mean/image_std, as
        mmfind.media.jpeg_batch prepares them on this device."""
        if len(x) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            features = self.model.encode_image(x.to(device=self.device, dtype=self.dtype))
        return _unit(features)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            features = self._encode_tokens(tokens)
        return _unit(features)

    def _encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's encode_text, run only up to the last end-of-text token of the batch.

        CLIP's text tower is causal (each position attends to earlier ones only) and pools the
        end-of-text position, so the padding after it cannot change the result: a short query
        costs its own length, not the full 77-token context (about 8x less work for a few words).
        Models whose text tower is not of that kind run open_clip's own encode_text."""
        import open_clip
        from open_clip.transformer import text_global_pool

        model = self.model
        mask = getattr(model, "attn_mask", None)
        if (
            type(model) is not open_clip.model.CLIP
            or getattr(model, "text_pool_type", None) != "argmax"
            or mask is None
        ):
            full: torch.Tensor = model.encode_text(tokens)
            return full
        length = int(tokens.argmax(dim=-1).max()) + 1
        tokens = tokens[:, :length]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
        x = model.transformer(x, attn_mask=mask[:length, :length])
        pooled: torch.Tensor = text_global_pool(model.ln_final(x), tokens, "argmax")
        projection = model.text_projection
        if projection is None:
            return pooled
        projected: torch.Tensor = (
            projection(pooled) if isinstance(projection, torch.nn.Linear) else pooled @ projection
        )
        return projected


def _unit(features: torch.Tensor) -> np.ndarray:
    """float32 rows of length one (normalised in fp32 even when the model ran in fp16)."""
    x = features.float()
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    result: np.ndarray = x.cpu().numpy().astype(np.float32, copy=False)
    return result
