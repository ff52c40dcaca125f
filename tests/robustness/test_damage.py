"""Index damage, through the CLI: ANN files deleted, cut short, overwritten, from another model
(image and audio spaces) are detected and rebuilt from the catalog; a damaged catalog gives one
clear line with a way out, never a traceback, and the way out works."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from audio_factory import make_noise, make_tone
from media_factory import make_photo

from mmfind.config import CATALOG_NAME
from mmfind.store.ann import AnnState
from mmfind.store.catalog import Catalog
from robustness.helpers import (
    MODEL,
    assert_ann_current,
    checkpoint,
    cli,
    one_line_error,
    write_garbage,
)

SPACES = ("clip", "clap")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, object]]:
    """(media root, a sound index of photos and sounds, the answer to a query over both)."""
    base = tmp_path_factory.mktemp("damage")
    root, idx = base / "media", base / "index"
    for i in range(5):
        make_photo(root / f"p{i}.jpg", size=(96, 72), seed=i)
    make_tone(root / "tone.wav", seconds=3)
    make_noise(root / "rain.flac", seconds=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        result = cli("index", root, "--index", idx, "--model", MODEL, "--workers", "0", "--json")
        assert result.exit_code == 0, result.stderr
        answer = _query(idx)
    assert {r["space"] for r in answer["results"]} == set(SPACES)
    return root, idx, answer


def _query(idx: Path) -> dict[str, object]:
    result = cli("query", "a sound", "--index", idx, "--json", "-n", "100", "--no-server")
    assert result.exit_code == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document


def _copy(built: tuple[Path, Path, dict[str, object]], tmp_path: Path) -> Path:
    idx = tmp_path / "index"
    shutil.copytree(built[1], idx)
    return idx


def _state(idx: Path, space: str) -> AnnState:
    catalog = Catalog.open(idx, create=False)
    try:
        state = AnnState.read(catalog, space)
    finally:
        catalog.close()
    assert state is not None
    return state


def _damage(idx: Path, space: str, how: str, other: Path) -> None:
    state = _state(idx, space)
    path = idx / state.file
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: state.size // 3])
    elif how == "overwritten":  # same size, other bytes: a bad sector, a botched copy
        write_garbage(path, 0, state.size, seed=5)
    elif how == "from another index":  # same name, same model, other items
        shutil.copy(other / _state(other, space).file, path)
    elif how == "from another model":  # the catalog says so: a model change half done
        conn = sqlite3.connect(idx / CATALOG_NAME)
        with conn:
            conn.execute("UPDATE meta SET value='other-model' WHERE key=?", (f"ann.{space}.model",))
        conn.close()


DAMAGE = ["deleted", "truncated", "overwritten", "from another index", "from another model"]
# tests/test_search.py and tests/test_cli.py cover the image space's deleted, truncated and
# overwritten files; here every kind of damage for sound, and the rest for images.
CASES = [("clap", how) for how in DAMAGE] + [
    ("clip", "from another index"),
    ("clip", "from another model"),
]


@pytest.mark.parametrize(("space", "how"), CASES)
def test_a_damaged_ann_file_is_detected_and_rebuilt(
    built: tuple[Path, Path, dict[str, object]],
    tmp_path: Path,
    space: str,
    how: str,
) -> None:
    root, _, answer = built
    idx = _copy(built, tmp_path)
    other = tmp_path / "other-index"
    if how == "from another index":
        shutil.copytree(idx, other)
        make_photo(root.parent / "extra" / "x.jpg", size=(96, 72), seed=77)
        make_tone(root.parent / "extra" / "x.wav", seconds=2, freq=880)
        extra = cli(
            "index", root.parent / "extra", "--index", other, "--model", MODEL, "--workers", "0"
        )
        assert extra.exit_code == 0, (extra.stdout, extra.stderr)
    _damage(idx, space, how, other)

    doctor = cli("doctor", "--index", idx, "--json")
    assert doctor.exit_code == 1
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks[f"ann:{space}"]["status"] == "problem", checks[f"ann:{space}"]
    assert all(c["status"] != "problem" for n, c in checks.items() if n != f"ann:{space}")

    # A query finds out by itself, answers exactly as before, and saves a sound file.
    result = cli("query", "a sound", "--index", idx, "--json", "-n", "100", "--no-server")
    assert result.exit_code == 0, result.stderr
    assert f"the {space} ANN index was missing or damaged and was rebuilt" in result.stderr
    assert json.loads(result.stdout)["results"] == answer["results"]
    assert _query(idx)["results"] == answer["results"]
    assert_ann_current(idx)
    assert cli("doctor", "--index", idx).exit_code == 0


@pytest.mark.parametrize("how", ["deleted", "from another model"])
def test_doctor_repair_and_index_also_rebuild_a_damaged_ann_file(
    built: tuple[Path, Path, dict[str, object]], tmp_path: Path, how: str
) -> None:
    root, _, answer = built
    for space in SPACES:
        idx = _copy(built, tmp_path / space)
        _damage(idx, space, how, idx)
        repaired = cli("doctor", "--index", idx, "--repair", "--json")
        assert repaired.exit_code == 0, repaired.stdout
        document = json.loads(repaired.stdout)
        check = next(c for c in document["checks"] if c["name"] == f"ann:{space}")
        assert check["repaired"].startswith("rebuilt from the catalog")
        assert check["status"] == "ok" and check["found"]
        assert document["repairs"] == [f"ann:{space}: {check['repaired']}"]
        assert _query(idx)["results"] == answer["results"]

        idx = _copy(built, tmp_path / f"{space}-index-run")
        _damage(idx, space, how, idx)
        result = cli("index", root, "--index", idx, "--model", MODEL, "--workers", "0", "--json")
        assert result.exit_code == 0 and json.loads(result.stdout)["unchanged"] == 7
        assert_ann_current(idx)


# --- a damaged catalog ---------------------------------------------------------------------------


def _damage_catalog(idx: Path, how: str) -> None:
    checkpoint(idx)
    path = idx / CATALOG_NAME
    size = path.stat().st_size
    if how == "garbage in the middle":
        write_garbage(path, size // 4, size // 2, seed=11)
    elif how == "truncated":
        with open(path, "r+b") as fh:
            fh.truncate(size // 2)
    elif how == "garbage header":
        write_garbage(path, 0, 100, seed=12)


CATALOG_DAMAGE = ["garbage in the middle", "truncated", "garbage header"]
COMMANDS = [
    ("query", "a sound", "--no-server"),
    ("query", "--audio", "{root}/tone.wav", "--no-server"),
    ("info",),
    ("info", "--failures"),
    ("index", "--model", MODEL, "--workers", "0"),
    ("index", "{root}", "--model", MODEL, "--workers", "0"),
]


@pytest.mark.parametrize("how", CATALOG_DAMAGE)
def test_a_damaged_catalog_gives_one_line_and_a_way_out(
    built: tuple[Path, Path, dict[str, object]], tmp_path: Path, how: str
) -> None:
    root, _, answer = built
    idx = _copy(built, tmp_path)
    _damage_catalog(idx, how)
    catalog = idx / CATALOG_NAME

    refusals = 0
    for command in COMMANDS:
        args = [a.format(root=root) for a in command]
        result = cli(*args, "--index", idx)
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
        if result.exit_code == 0:
            continue  # this command did not read a damaged page
        line = one_line_error(result, str(catalog))
        assert result.exit_code == 3, (args, line)
        assert "move it aside" in line and "mmfind index" in line, line
        refusals += 1
    assert refusals >= 2  # at least the queries, which read every vector

    doctor = cli("doctor", "--index", idx)
    assert doctor.exit_code == 1, doctor.stdout
    first = doctor.stdout.splitlines()[0].split("\t")
    assert first[:2] == ["catalog", "problem"], first
    assert f"mv {catalog} {catalog}.damaged" in first[2]
    repaired = cli("doctor", "--index", idx, "--repair")
    assert repaired.exit_code == 1
    assert "not repaired: catalog: the catalog cannot be repaired in place" in repaired.stderr

    # The way out it gives: move the catalog aside, index the folders again.
    os.rename(catalog, f"{catalog}.damaged")
    for leftover in idx.glob(f"{CATALOG_NAME}-*"):
        leftover.unlink()
    result = cli("index", root, "--index", idx, "--model", MODEL, "--workers", "0", "--json")
    assert result.exit_code == 0, result.stderr
    assert _query(idx)["results"] == answer["results"]
    assert cli("doctor", "--index", idx).exit_code == 0
