"""The file system as it is: folders that cannot be read, files that change or vanish while a
run reads them, symlink loops, odd names, deep trees, huge folders, and the index folder placed
inside what it indexes. Everything through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from audio_factory import make_tone
from media_factory import make_photo

import mmfind.decode
import mmfind.indexer
from mmfind.scan import ScanResult
from robustness.helpers import MODEL, cli, index_state, spawn

SIZE = (96, 72)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def index(root: Path | str, idx: Path, *extra: str) -> dict[str, int]:
    result = cli(
        "index", root, "--index", idx, "--model", MODEL, "--workers", "0", "--json", *extra
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    summary: dict[str, int] = json.loads(result.stdout)
    return summary


def index_plain(root: Path, idx: Path) -> tuple[dict[str, int], str]:
    """A run with the human summary: (counts, stderr with its warnings)."""
    result = cli("index", root, "--index", idx, "--model", MODEL, "--workers", "0")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    counts = dict(field.split("=") for field in result.stdout.split())
    return {k: int(v) for k, v in counts.items()}, result.stderr


def query_paths(idx: Path, *extra: str | Path) -> list[str]:
    result = cli("query", "a photo", "--index", idx, "--paths", "-n", "1000", "--no-server", *extra)
    assert result.exit_code in (0, 1), result.stderr
    return [os.fsdecode(p) for p in result.stdout_bytes.split(b"\n") if p]


def library(root: Path) -> list[Path]:
    files = [make_photo(root / "top.jpg", size=SIZE, seed=1)]
    for i in range(3):
        files.append(make_photo(root / "private" / f"p{i}.jpg", size=SIZE, seed=10 + i))
    files.append(make_photo(root / "private" / "deeper" / "d.jpg", size=SIZE, seed=20))
    return files


# --- folders that cannot be read -----------------------------------------------------------------


@pytest.mark.skipif(IS_ROOT, reason="root reads any folder")
def test_a_folder_without_permission_keeps_its_files(tmp_path: Path) -> None:
    root, idx = tmp_path / "media", tmp_path / "index"
    files = library(root)
    assert index(root, idx)["new"] == len(files)
    locked = root / "private"
    make_photo(root / "unreadable.jpg", size=SIZE, seed=30).chmod(0)
    locked.chmod(0)
    try:
        counts, warnings = index_plain(root, idx)
        assert counts["removed"] == 0 and counts["failed"] == 1
        assert f"{locked}: permission denied (its indexed files are kept)" in warnings
        assert sorted(query_paths(idx)) == sorted(map(str, files))
        failures = cli("info", "--failures", "--index", idx).stdout
        assert failures.startswith(f"{root / 'unreadable.jpg'}\tcannot read: Permission denied")
    finally:
        locked.chmod(0o755)
        (root / "unreadable.jpg").chmod(0o644)
    again = index(root, idx)
    assert again["removed"] == 0 and again["unchanged"] == len(files) and again["new"] == 1


def test_a_file_that_cannot_be_read_is_tried_again_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No permission to read a file is not a fault of its content: unlike a corrupt file
    (tried again only when it changes), it is tried again by every run."""
    root, idx = tmp_path / "media", tmp_path / "index"
    files = library(root)
    denied = str(root / "private" / "p1.jpg")

    def guarded_open(path: str, *args: object, **kwargs: object) -> object:
        if os.fspath(path) == denied:
            raise PermissionError(13, "Permission denied", path)
        return open(path, *args, **kwargs)  # type: ignore[call-overload]

    with monkeypatch.context() as mp:
        mp.setattr(mmfind.decode, "open", guarded_open, raising=False)
        first = index(root, idx)
        assert first["new"] == len(files) - 1 and first["failed"] == 1
        assert index(root, idx)["failed"] == 1  # still unreadable: tried, and failed, again
    again = index(root, idx)
    assert again["new"] == 1 and again["failed"] == 0 and _failures(idx) == []


@pytest.mark.parametrize("blocked", ["private", "private/deeper", "."])
def test_a_folder_that_cannot_be_listed_keeps_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocked: str
) -> None:
    """The same through a failing scandir: any folder, the root itself included (a disk that is
    briefly unreadable, a network share that drops)."""
    root, idx = tmp_path / "media", tmp_path / "index"
    files = library(root)
    index(root, idx)
    refused = os.path.normpath(root / blocked)
    real_scandir = os.scandir

    def scandir(path: str | os.PathLike[str]) -> Iterator[os.DirEntry[str]]:
        if os.path.normpath(os.fspath(path)) == refused:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)  # type: ignore[return-value]

    with monkeypatch.context() as mp:
        mp.setattr(os, "scandir", scandir)
        counts, warnings = index_plain(root, idx)
    assert counts["removed"] == 0
    assert f"{refused}: permission denied (its indexed files are kept)" in warnings
    assert sorted(query_paths(idx)) == sorted(map(str, files))
    assert index(root, idx)["unchanged"] == len(files)


# --- files changing while a run reads them --------------------------------------------------------


def test_files_that_change_or_vanish_between_scan_and_read_are_deferred(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_encoder: object
) -> None:
    root, idx = tmp_path / "media", tmp_path / "index"
    for i in range(4):
        make_photo(root / f"p{i}.jpg", size=SIZE, seed=i)
    make_tone(root / "tone.wav", seconds=2)
    index(root, idx)
    make_photo(root / "new.jpg", size=SIZE, seed=50)
    make_photo(root / "vanishing.jpg", size=SIZE, seed=60)
    make_photo(root / "p0.jpg", size=SIZE, seed=100)  # edited: the next run reads it again
    make_tone(root / "tone.wav", seconds=3, freq=330)
    real_scan = mmfind.indexer.scan

    def scan_then_meddle(*args: object, **kwargs: object) -> ScanResult:
        result = real_scan(*args, **kwargs)  # type: ignore[arg-type]
        make_photo(root / "p0.jpg", size=SIZE, seed=200)  # changed again after the scan
        (root / "vanishing.jpg").unlink()  # gone after the scan, before it was read
        (root / "p1.jpg").unlink()  # an unchanged file, gone after the scan
        with open(root / "new.jpg", "ab") as out:  # grown after the scan
            out.write(b"\0" * 10)
        return result

    real_audio = mmfind.decode._DECODERS["audio"]

    def audio_changing_while_read(*args: object) -> object:
        decoded = real_audio(*args)  # type: ignore[arg-type]
        make_tone(root / "tone.wav", seconds=4, freq=550)  # rewritten during the read
        return decoded

    with monkeypatch.context() as mp:
        mp.setattr(mmfind.indexer, "scan", scan_then_meddle)
        mp.setitem(mmfind.decode._DECODERS, "audio", audio_changing_while_read)
        first = index(root, idx)

    reasons = {os.path.basename(f["path"]): f["reason"] for f in _failures(idx)}
    assert reasons["p0.jpg"] == "changed since it was scanned; deferred to the next run"
    assert reasons["new.jpg"] == "changed since it was scanned; deferred to the next run"
    assert reasons["tone.wav"] == "changed while being read; deferred to the next run"
    assert reasons["vanishing.jpg"].startswith("cannot read: ")
    assert first["failed"] == 4 and first["removed"] == 0
    indexed = {os.path.basename(p) for p in index_state(idx).vectors}
    assert indexed == {"p1.jpg", "p2.jpg", "p3.jpg"}  # p1 is not read: it goes next run

    second = index(root, idx)  # the files are still: they are read now
    assert second["failed"] == 0 and second["removed"] == 1 and _failures(idx) == []
    state = index_state(idx)
    clean = tmp_path / "clean"
    index(root, clean)
    state.assert_equal(index_state(clean))  # nothing from the meddled-with content survives


def _failures(idx: Path) -> list[dict[str, str]]:
    document = json.loads(cli("info", "--failures", "--json", "--index", idx).stdout)
    failures: list[dict[str, str]] = document["failures"]
    return failures


# --- links, names, depth -------------------------------------------------------------------------


def test_symlink_loops_terminate(tmp_path: Path) -> None:
    root, idx = tmp_path / "media", tmp_path / "index"
    make_photo(root / "a" / "x.jpg", size=SIZE, seed=1)
    make_photo(tmp_path / "outside" / "y.jpg", size=SIZE, seed=2)
    (root / "a" / "up").symlink_to(root, target_is_directory=True)  # a → root → a → ...
    (root / "self").symlink_to(root / "self")  # a link to itself
    (root / "out").symlink_to(tmp_path / "outside", target_is_directory=True)
    (tmp_path / "outside" / "back").symlink_to(root, target_is_directory=True)
    (root / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert index(root, idx)["scanned"] == 1
    summary = index(root, idx, "--follow-symlinks")
    assert summary["scanned"] == 2 and summary["new"] == 1
    assert sorted(os.path.basename(p) for p in query_paths(idx)) == ["x.jpg", "y.jpg"]


def test_percent_underscore_dash_and_non_utf8_names(tmp_path: Path) -> None:
    """`--in` compares whole path components: `_` and `%` are no wildcards, a folder named
    like an option is a folder, and names that are not UTF-8 round-trip."""
    root, idx = tmp_path / "media", tmp_path / "index"
    folders = ["a_b", "axb", "100%", "100x", "--in", "-n ü"]
    for i, name in enumerate(folders):
        make_photo(root / name / f"{name}-{i}.jpg", size=SIZE, seed=i)
    raw = os.fsencode(root) + b"/caf\xe9"
    os.mkdir(raw)
    make_photo(os.fsdecode(raw + b"/\xff%_.jpg"), size=SIZE, seed=99)
    assert index(root, idx)["new"] == len(folders) + 1
    for name in folders:
        found = query_paths(idx, "--in", root / name)
        assert [Path(p).parent.name for p in found] == [name], (name, found)
    found = cli(
        "query", "x", "--index", idx, "--in", os.fsdecode(raw), "--paths", "--no-server"
    ).stdout_bytes
    assert found == raw + b"/\xff%_.jpg\n"
    assert query_paths(idx, "--in", root / "a_", "--in", root / "100") == []  # prefixes


def _deep_tree(base: Path, depth: int, name: str) -> Path:
    """`depth` nested folders named `name`, made with relative steps (no long path needed)."""
    fd = os.open(base, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        with tempfile.TemporaryDirectory() as scratch:
            data = make_photo(Path(scratch) / "deep.jpg", size=SIZE, seed=7).read_bytes()
        out = os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)
    return base.joinpath(*[name] * depth, "deep.jpg")


def test_a_very_deep_tree(tmp_path: Path) -> None:
    root, idx = tmp_path / "media", tmp_path / "index"
    root.mkdir()
    deep = _deep_tree(root, 300, "d")
    make_photo(root / "top.jpg", size=SIZE, seed=1)
    assert index(root, idx)["new"] == 2
    assert query_paths(idx, "--in", deep.parent.parent) == [str(deep)]
    assert index(root, idx)["unchanged"] == 2


def test_a_tree_deeper_than_path_max_is_reported_and_the_run_completes(tmp_path: Path) -> None:
    root, idx = tmp_path / "media", tmp_path / "index"
    root.mkdir()
    _deep_tree(root, 400, "x" * 12)  # about 5200 characters: beyond PATH_MAX (4096)
    make_photo(root / "top.jpg", size=SIZE, seed=1)
    counts, warnings = index_plain(root, idx)
    assert counts["new"] == 1
    assert "(its indexed files are kept)" in warnings
    shutil.rmtree(root, ignore_errors=True)


def test_the_index_folder_inside_the_indexed_folder_even_through_a_link(tmp_path: Path) -> None:
    root = tmp_path / "media"
    make_photo(root / "a.jpg", size=SIZE, seed=1)
    idx = root / "photos-index"
    assert index(root, idx)["new"] == 1
    make_photo(idx / "thumbnail.jpg", size=SIZE, seed=2)  # as if something wrote there
    (root / "link-to-index").symlink_to(idx, target_is_directory=True)
    (root / "nested").mkdir()
    (root / "nested" / "again").symlink_to(idx, target_is_directory=True)
    assert index(root, idx, "--follow-symlinks")["scanned"] == 1
    # with MMFIND_HOME pointing inside the root, and the root given relatively
    result = cli(
        "index", os.path.relpath(root), "--model", MODEL, "--workers", "0", "--json",
        env={"MMFIND_HOME": str(idx)},
    )  # fmt: skip
    assert json.loads(result.stdout)["scanned"] == 1


# --- a huge folder -------------------------------------------------------------------------------


def _png_1x1(rgb: tuple[int, int, int]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" + bytes(rgb))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _flat_folder(folder: Path, pictures: int, others: int) -> None:
    folder.mkdir(parents=True)
    for i in range(pictures):
        (folder / f"img{i:06d}.png").write_bytes(_png_1x1((i >> 16, (i >> 8) & 255, i & 255)))
    for i in range(others):
        (folder / f"data{i:06d}.dat").write_bytes(b"")


def _peak_rss_mb(root: Path, idx: Path) -> tuple[float, float, dict[str, int]]:
    """Index as a real process; its peak resident memory (MB, decode workers included) and
    the seconds it took."""
    began = time.monotonic()
    proc = spawn("index", root, "--index", idx, "--model", MODEL, "--workers", "1", "--json")
    assert proc.stdout is not None and proc.stderr is not None
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, err.decode()
    scale = 1024 if os.uname().sysname == "Linux" else 1024 * 1024  # KB on Linux, bytes on macOS
    return usage.ru_maxrss / scale, time.monotonic() - began, json.loads(out)


@pytest.mark.slow
def test_a_folder_of_100k_files_indexes_in_bounded_memory(tmp_path: Path) -> None:
    """100,000 files in one folder (40,000 distinct 1×1 pictures and 60,000 files of another
    kind): peak memory grows by little more than the catalog's own per-file bookkeeping."""
    small, large = tmp_path / "small", tmp_path / "large"
    _flat_folder(small, 400, 600)
    _flat_folder(large, 40_000, 60_000)
    base_rss, _, base = _peak_rss_mb(small, tmp_path / "small-index")
    assert base["new"] == 400
    rss, seconds, summary = _peak_rss_mb(large, tmp_path / "large-index")
    assert summary["new"] == 40_000 and summary["failed"] == 0
    grown = rss - base_rss
    print(f"100k files: {seconds:.0f} s, peak RSS {rss:.0f} MB (1k files: {base_rss:.0f} MB)")
    assert grown < 200, (rss, base_rss)  # < 2 KB per file seen
    again = json.loads(cli("index", large, "--index", tmp_path / "large-index", "--json").stdout)
    assert again["unchanged"] == 40_000
