"""Shared fixtures: every test gets its own index home and never touches the network."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMFIND_HOME", str(tmp_path / "mmfind-home"))
    monkeypatch.delenv("MMFIND_MODEL", raising=False)
    monkeypatch.delenv("MMFIND_MAX_PIXELS", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


@pytest.fixture(scope="session")
def tiny_encoder():  # type: ignore[no-untyped-def]
    from mmfind.encoders.presets import load_image_encoder

    return load_image_encoder("test-tiny", "cpu")
