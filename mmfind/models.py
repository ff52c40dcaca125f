"""Which model fills each embedding space of an index, and loading it once when first needed.

An index records its models; runs and queries use them without being told. Asking for another
model is refused unless re-embedding is requested: vectors of two models never mix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mmfind.config import DEFAULT_MODEL
from mmfind.encoders.audio_presets import (
    canonical_audio_model,
    default_audio_model,
    load_audio_encoder,
)
from mmfind.encoders.presets import canonical_model, load_image_encoder
from mmfind.errors import ModelMismatchError
from mmfind.spaces import CLAP, CLIP
from mmfind.store.ann import AnnStore
from mmfind.store.catalog import Catalog

_FLAGS = {CLIP: "--model", CLAP: "--audio-model"}


class Models:
    def __init__(
        self,
        catalog: Catalog,
        ann: AnnStore | None,
        *,
        image_model: str | None = None,
        audio_model: str | None = None,
        device: str = "auto",
        reembed: bool = False,
        preloaded: dict[str, Any] | None = None,
        on_load: Callable[[], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.ann = ann
        self.requested = {
            CLIP: canonical_model(image_model) if image_model else None,
            CLAP: canonical_audio_model(audio_model) if audio_model else None,
        }
        self.device = device
        self.reembed = reembed
        self.loaded: dict[str, Any] = dict(preloaded or {})
        self.on_load = on_load
        self.ids: dict[str, str] = {}
        self.used: set[str] = set()  # spaces whose encoder was asked for (loaded or preloaded)

    def resolve(self) -> dict[str, str]:
        """Decide the model id of every space; refuse (or, with reembed, reset) a mismatch."""
        clip = self._resolve(CLIP, canonical_model(DEFAULT_MODEL))
        self._resolve(CLAP, default_audio_model(clip))
        return dict(self.ids)

    def _resolve(self, space: str, default: str) -> str:
        stored = self.catalog.space(space)
        requested = self.requested[space]
        if stored is None:
            chosen = requested or default
        elif requested is None or requested == stored.model:
            chosen = stored.model
        elif not self.reembed:
            raise ModelMismatchError(
                f"this index was built with {stored.model} for its {space} space; you asked for "
                f"{requested}. Vectors of two models never mix: pass --reembed to re-encode "
                f"with {requested}, or use another --index"
            )
        else:
            # Load the new model before dropping anything: a failed download must cost nothing.
            self.ids[space] = requested
            self.encoder(space, declare=False)
            self.catalog.reset_space(space)
            if self.ann is not None:
                self.ann.drop(space)
            chosen = requested
        self.ids[space] = chosen
        return chosen

    def encoder(self, space: str, *, declare: bool = True) -> Any:
        """The loaded encoder of a space (loading it on first use); declares the space."""
        if space not in self.ids:
            self.resolve()
        model_id = self.ids[space]
        encoder = self.loaded.get(space)
        if encoder is None:
            if self.on_load is not None:
                self.on_load()
            load = load_image_encoder if space == CLIP else load_audio_encoder
            encoder = load(model_id, self.device)
            self.loaded[space] = encoder
        if encoder.model_id != model_id:
            raise ModelMismatchError(
                f"encoder {encoder.model_id} does not match the {space} model {model_id} "
                f"(see {_FLAGS[space]})"
            )
        self.used.add(space)
        if declare and self.catalog.space(space) is None:
            with self.catalog.atomic():
                self.catalog.set_space(space, encoder.model_id, encoder.dim)
        return encoder
