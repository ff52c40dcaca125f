"""The light text towers an index keeps beside its catalog, one per space that can have one.

`<index>/<space>.text-tower` holds the text tower of the space's model, exported from the full
model while it is loaded anyway: by `mmfind index`, or by a query that had to load it. A
text-only query then encodes its text with NumPy instead of importing torch (and open_clip or
transformers) and building the model. TOWERS names, per space, the class that runs a tower and
the module that exports it: the clip space's open_clip text tower (mmfind.encoders.light_text,
mmfind.encoders.tower_export), the clap space's CLAP text tower
(mmfind.encoders.light_clap_text, mmfind.encoders.clap_tower_export).

A model whose tower cannot be reproduced exactly is refused once: `<space>.text-tower.refused`
records the model id and the reason, so neither runs nor queries try it again until the space
changes model. An export that fails otherwise (a full disk) is retried next time. Neither ever
fails the run or query that attempted it. `MMFIND_TEXT_TOWER=off` turns both the export and
the use off.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmfind.encoders.light_clap_text import LightClapTextEncoder
from mmfind.encoders.light_text import LightTextEncoder
from mmfind.encoders.light_tower import LightTower, TowerError
from mmfind.encoders.tower_file import TowerFileError, read_header
from mmfind.spaces import CLAP, CLIP

# space -> (the light encoder class, the module whose export(encoder, path) writes its tower)
TOWERS: dict[str, tuple[type[LightTower], str]] = {
    CLIP: (LightTextEncoder, "mmfind.encoders.tower_export"),
    CLAP: (LightClapTextEncoder, "mmfind.encoders.clap_tower_export"),
}
EXPORTABLE = tuple(TOWERS)
SUFFIX = ".text-tower"
REFUSED_SUFFIX = ".text-tower.refused"
ENV = "MMFIND_TEXT_TOWER"

WRITTEN, CURRENT, REFUSED, FAILED, OFF = "written", "current", "refused", "failed", "off"


@dataclass
class TowerStatus:
    space: str
    model: str
    state: str  # written | current | refused | failed | off
    reason: str | None = None


def enabled() -> bool:
    return os.environ.get(ENV, "on").strip().lower() not in ("0", "off", "no", "false")


def tower_path(index_dir: Path, space: str) -> Path:
    return index_dir / f"{space}{SUFFIX}"


def refusal_path(index_dir: Path, space: str) -> Path:
    return index_dir / f"{space}{REFUSED_SUFFIX}"


def ensure(index_dir: Path, encoder: Any, *, check_weights: bool = False) -> TowerStatus | None:
    """Export `encoder`'s text tower unless the index has it (or it was refused for this model).

    The tower in place counts when its header names the model; with check_weights, only when
    it also opens and passes its probes (a query that could not use it replaces it).
    None for a space without an exporter. Never raises: a failure is the returned reason."""
    space, model = str(encoder.space), str(encoder.model_id)
    if space not in EXPORTABLE:
        return None
    if not enabled():
        return TowerStatus(space, model, OFF, f"{ENV} is off")
    path = tower_path(index_dir, space)
    if holds(path, space, model) and (not check_weights or _sound(path, space, model)):
        return TowerStatus(space, model, CURRENT)
    refused = read_refusal(index_dir, space)
    if refused is not None and refused[0] == model:
        return TowerStatus(space, model, REFUSED, refused[1])
    try:
        from mmfind.encoders.tower_export import ExportRefused

        exporter = importlib.import_module(TOWERS[space][1])
        try:
            exporter.export(_cpu_twin(encoder), path)
        except ExportRefused as exc:
            _remove(path)  # a tower of an earlier model must not outlive it
            _write_refusal(index_dir, space, model, str(exc))
            return TowerStatus(space, model, REFUSED, str(exc))
    except Exception as exc:  # the tower is an optimisation: never fail the run for it
        if not holds(path, space, model):
            _remove(path)
        return TowerStatus(space, model, FAILED, f"{type(exc).__name__}: {exc}")
    _remove(refusal_path(index_dir, space))
    return TowerStatus(space, model, WRITTEN)


def prune(index_dir: Path, models: dict[str, str]) -> None:
    """Remove towers and refusals of models the spaces no longer hold (after --reembed)."""
    for space in EXPORTABLE:
        model = models.get(space)
        path = tower_path(index_dir, space)
        if path.exists() and (model is None or not holds(path, space, model)):
            _remove(path)
        refused = read_refusal(index_dir, space)
        if refused is not None and refused[0] != model:
            _remove(refusal_path(index_dir, space))


def light_encoder(index_dir: Path, space: str, model: str) -> LightTower | None:
    """The index's light text encoder for `space` holding `model`, or None (use the full
    model): none exported, turned off, damaged or of another model."""
    if space not in EXPORTABLE or not enabled():
        return None
    path = tower_path(index_dir, space)
    if not path.exists():
        return None
    try:
        return _open(path, space, model)
    except TowerError:
        return None


def describe(index_dir: Path, models: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per exportable space: the tower's state, model, size and, when refused, why."""
    found: dict[str, dict[str, Any]] = {}
    for space in EXPORTABLE:
        model = models.get(space)
        if model is None:
            continue
        path = tower_path(index_dir, space)
        refused = read_refusal(index_dir, space)
        if holds(path, space, model):
            found[space] = {"state": "present", "bytes": path.stat().st_size, "reason": None}
        elif refused is not None and refused[0] == model:
            found[space] = {"state": REFUSED, "bytes": 0, "reason": refused[1]}
        else:
            found[space] = {"state": "absent", "bytes": 0, "reason": None}
    return found


def health(index_dir: Path, space: str, model: str) -> tuple[str, str]:
    """(state, detail) of the space's tower for `mmfind doctor`, read-only: "present" (it opens
    and its probe texts give the recorded vectors), "absent", "refused", "off" or "damaged"
    (unreadable, cut short, another model's, or its weights fail the probes)."""
    path = tower_path(index_dir, space)
    if not enabled():
        return OFF, f"{ENV} is off: text queries load the full model"
    if not path.exists():
        refused = read_refusal(index_dir, space)
        if refused is not None and refused[0] == model:
            return REFUSED, f"not made for {model}: {refused[1]}"
        return "absent", "none yet: the next index run or text query that loads the model writes it"
    if not holds(path, space, model):
        return "damaged", f"{path.name} is unreadable or holds another model than {model}"
    if not _sound(path, space, model):
        return "damaged", f"{path.name} fails its checks (damaged weights or tables)"
    size = path.stat().st_size / 1e6
    return "present", f"{path.name}: {size:.1f} MB, sound; text queries run without torch"


def remove(index_dir: Path, space: str) -> None:
    """Delete the space's tower (a damaged one: the next query that loads the model rewrites it)."""
    _remove(tower_path(index_dir, space))


def holds(path: Path, space: str, model: str) -> bool:
    """Whether `path` is a tower file (header checked) of `model` in `space`."""
    try:
        header = read_header(path)
    except TowerFileError:
        return False
    return header.get("model_id") == model and header.get("space") == space


def _sound(path: Path, space: str, model: str) -> bool:
    try:
        _open(path, space, model).encode_texts(["a"])  # runs the probes
    except TowerError:
        return False
    return True


def _open(path: Path, space: str, model: str) -> LightTower:
    return TOWERS[space][0].open(path, space, model)


def read_refusal(index_dir: Path, space: str) -> tuple[str, str] | None:
    try:
        data = json.loads(refusal_path(index_dir, space).read_text(encoding="utf-8"))
        return str(data["model"]), str(data["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_refusal(index_dir: Path, space: str, model: str, reason: str) -> None:
    path = refusal_path(index_dir, space)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"model": model, "reason": reason}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # unrecorded, the refusal costs one more export attempt next time
        _remove(tmp)


def _cpu_twin(encoder: Any) -> Any:
    """The encoder itself on the CPU; elsewhere (fp16 on CUDA) a fresh fp32 CPU copy, since
    the light tower reproduces the fp32 model."""
    if str(encoder.device) == "cpu":
        return encoder
    if encoder.space == CLAP:
        from mmfind.encoders.audio_presets import load_audio_encoder

        return load_audio_encoder.__wrapped__(encoder.model_id, "cpu")
    from mmfind.encoders.presets import load_image_encoder

    return load_image_encoder.__wrapped__(encoder.model_id, "cpu")


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
