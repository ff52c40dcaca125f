"""Tests for mmfind.scan: real files in tmp_path, no models."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mmfind.scan import DEFAULT_EXCLUDED_DIRS, ScanProblem, ScanResult, is_within, scan


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def paths(result: ScanResult, root: Path | None = None) -> list[str]:
    """Found paths, relative to root when given."""
    if root is None:
        return [f.path for f in result.files]
    return [os.path.relpath(f.path, root) for f in result.files]


def make_tree(root: Path, names: list[str]) -> None:
    for name in names:
        touch(root / name)


def test_finds_media_files_with_their_stat(tmp_path: Path) -> None:
    photo = touch(tmp_path / "album" / "beach.JPG", b"12345")
    touch(tmp_path / "album" / "pic.webp")

    result = scan([str(tmp_path)])

    assert paths(result, tmp_path) == ["album/beach.JPG", "album/pic.webp"]
    record = result.files[0]
    assert record.path == str(photo) and os.path.isabs(record.path)
    assert record.size == 5
    assert record.mtime_ns == os.stat(photo).st_mtime_ns
    assert record.kind == "image"
    assert result.problems == [] and result.incomplete == [] and result.skipped == 0


def test_unknown_extensions_are_counted_as_skipped(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a.jpg", "notes.xls", "song.xyz", "README", "sub/b.png", "sub/c.doc"])

    result = scan([str(tmp_path)])

    assert paths(result, tmp_path) == ["a.jpg", "sub/b.png"]
    assert result.skipped == 4


def test_output_is_sorted_by_path(tmp_path: Path) -> None:
    names = ["z.jpg", "a.b.jpg", "a/b.jpg", "a/a/z.jpg", "B.jpg", "m/n/o/p.png", "a-b.jpg", "0.jpg"]
    make_tree(tmp_path, names)

    found = paths(scan([str(tmp_path)]))

    assert found == sorted(found)
    assert sorted(found) == sorted(str(tmp_path / n) for n in names)


def test_hidden_files_and_folders_are_skipped(tmp_path: Path) -> None:
    make_tree(tmp_path, ["visible.jpg", ".hidden.jpg", ".hdir/a.jpg", "sub/.b.jpg", "sub/c.jpg"])

    result = scan([str(tmp_path)])

    assert paths(result, tmp_path) == ["sub/c.jpg", "visible.jpg"]
    assert result.skipped == 3  # .hidden.jpg, .hdir, sub/.b.jpg


def test_hidden_root_given_explicitly_is_walked(tmp_path: Path) -> None:
    make_tree(tmp_path, [".photos/a.jpg", ".photos/.b.jpg"])
    hidden_file = touch(tmp_path / ".c.jpg")

    assert paths(scan([str(tmp_path / ".photos")]), tmp_path) == [".photos/a.jpg"]
    assert paths(scan([str(hidden_file)])) == [str(hidden_file)]


def test_default_junk_folders_are_skipped(tmp_path: Path) -> None:
    junk = ["node_modules", "@eaDir", ".git", "$RECYCLE.BIN", "System Volume Information"]
    junk += ["__pycache__", ".Trash-1000", ".mmfind", "deep/node_modules"]
    make_tree(tmp_path, [f"{d}/a.jpg" for d in junk] + ["keep/a.jpg"])

    result = scan([str(tmp_path)])

    assert paths(result, tmp_path) == ["keep/a.jpg"]
    assert result.skipped == len(junk)
    assert {"node_modules", "@eaDir", ".git", "$RECYCLE.BIN", ".mmfind"} <= DEFAULT_EXCLUDED_DIRS


def spy_scandir(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every directory the scanner lists."""
    listed: list[str] = []
    real = os.scandir

    def spying(path: str) -> Any:
        listed.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", spying)
    return listed


def test_excludes_match_names_anywhere_and_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(
        tmp_path,
        [
            "Screenshots/s.jpg",  # name pattern, top level
            "deep/Screenshots/s.jpg",  # name pattern, any depth
            "screenshots/kept.jpg",  # case-sensitive
            "x_thumb.jpg",
            "deep/y_thumb.jpg",
            "2019/raw/r.jpg",  # relative pattern
            "2019/raw/sub/r.jpg",
            "2019/kept.jpg",
            "2020/raw/kept.jpg",  # relative to the root, not anywhere
            "top.png",  # anchored with a leading "/"
            "deep/top.png",
        ],
    )
    listed = spy_scandir(monkeypatch)

    result = scan(
        [str(tmp_path)], excludes=["Screenshots", "*_thumb.jpg", "2019/raw/*", "/top.png"]
    )

    assert paths(result, tmp_path) == [
        "2019/kept.jpg",
        "2020/raw/kept.jpg",
        "deep/top.png",
        "screenshots/kept.jpg",
    ]
    # Excluded folders are not entered.
    assert str(tmp_path / "Screenshots") not in listed
    assert str(tmp_path / "deep" / "Screenshots") not in listed
    assert str(tmp_path / "2019" / "raw" / "sub") not in listed


def test_excluded_folder_by_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path, ["2019/raw/a.jpg", "2019/raw/b/c.jpg", "2019/a.jpg"])
    listed = spy_scandir(monkeypatch)

    result = scan([str(tmp_path)], excludes=["2019/raw/"])

    assert paths(result, tmp_path) == ["2019/a.jpg"]
    assert str(tmp_path / "2019" / "raw") not in listed
    assert result.skipped == 1


def test_symlinks_are_ignored_without_follow(tmp_path: Path) -> None:
    root = tmp_path / "root"
    real = touch(root / "real" / "a.jpg")
    outside = touch(tmp_path / "outside" / "o.jpg")
    (root / "alias").symlink_to(root / "real")
    (root / "link.jpg").symlink_to(real)
    (root / "out").symlink_to(outside.parent)
    (root / "out.jpg").symlink_to(outside)

    result = scan([str(root)])

    assert paths(result, root) == ["real/a.jpg"]
    assert result.skipped == 4
    assert result.problems == []


def test_symlink_loops_terminate_and_each_file_is_listed_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    real = touch(root / "real" / "a.jpg")
    outside = touch(tmp_path / "outside" / "o.jpg")
    (root / "real" / "loop").symlink_to(root)  # back to the root
    (root / "real" / "self").symlink_to(".")  # to itself
    (root / "alias").symlink_to(root / "real")  # sorts before "real": the real path must win
    (root / "link.jpg").symlink_to(real)
    (root / "out").symlink_to(outside.parent)
    (root / "out2").symlink_to(outside.parent)
    (root / "out_link.jpg").symlink_to(outside)
    (tmp_path / "outside" / "back").symlink_to(root)

    result = scan([str(root)], follow_symlinks=True)

    assert paths(result, root) == ["out/o.jpg", "real/a.jpg"]
    assert result.problems == [] and result.incomplete == []


def test_symlinked_root_is_walked(tmp_path: Path) -> None:
    touch(tmp_path / "photos" / "a.jpg")
    (tmp_path / "link").symlink_to(tmp_path / "photos")

    result = scan([str(tmp_path / "link")])

    assert paths(result) == [str(tmp_path / "link" / "a.jpg")]  # the spelling given, unresolved


def test_broken_symlink(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    (tmp_path / "broken_dir").symlink_to(tmp_path / "gone")
    (tmp_path / "circular.jpg").symlink_to("circular.jpg")  # ELOOP
    touch(tmp_path / "ok.jpg")

    quiet = scan([str(tmp_path)])
    assert paths(quiet, tmp_path) == ["ok.jpg"]
    assert quiet.problems == [] and quiet.incomplete == []
    assert quiet.skipped == 3

    followed = scan([str(tmp_path)], follow_symlinks=True)
    assert paths(followed, tmp_path) == ["ok.jpg"]
    assert followed.problems == [
        ScanProblem(str(tmp_path / "broken.jpg"), "broken symlink"),
        ScanProblem(str(tmp_path / "broken_dir"), "broken symlink"),
        ScanProblem(str(tmp_path / "circular.jpg"), "broken symlink"),
    ]
    assert followed.incomplete == []  # nothing behind a broken link to keep


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
        (OSError(errno.EIO, "Input/output error"), "cannot list directory: Input/output error"),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory"),  # vanished mid-scan
            "cannot list directory: No such file or directory",
        ),
    ],
)
def test_unlistable_folder_is_a_problem_and_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, reason: str
) -> None:
    make_tree(tmp_path, ["a.jpg", "locked/b.jpg", "locked/sub/c.jpg", "open/d.jpg"])
    locked = str(tmp_path / "locked")
    real = os.scandir

    def failing(path: str) -> Any:
        if os.fspath(path) == locked:
            raise error
        return real(path)

    monkeypatch.setattr(os, "scandir", failing)

    result = scan([str(tmp_path)])

    assert paths(result, tmp_path) == ["a.jpg", "open/d.jpg"]
    assert result.problems == [ScanProblem(locked, reason)]
    assert result.incomplete == [locked]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any folder")
def test_real_permission_denied_folder(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a.jpg", "locked/b.jpg"])
    locked = tmp_path / "locked"
    locked.chmod(0)
    try:
        result = scan([str(tmp_path)])
    finally:
        locked.chmod(0o755)

    assert paths(result, tmp_path) == ["a.jpg"]
    assert result.problems == [ScanProblem(str(locked), "permission denied")]
    assert result.incomplete == [str(locked)]


class _EntryWithFailingStat:
    """A DirEntry whose stat() fails, as on a flaky network share."""

    def __init__(self, entry: os.DirEntry[str]) -> None:
        self._entry = entry

    def __getattr__(self, name: str) -> Any:
        return getattr(self._entry, name)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        raise OSError(errno.EIO, "Input/output error")


def test_file_whose_stat_fails_is_a_problem_and_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path, ["bad.jpg", "good.jpg"])
    real = os.scandir

    @contextlib.contextmanager
    def flaky(path: str) -> Iterator[list[Any]]:
        with real(path) as it:
            yield [_EntryWithFailingStat(e) if e.name == "bad.jpg" else e for e in it]

    monkeypatch.setattr(os, "scandir", flaky)

    result = scan([str(tmp_path)])

    bad = str(tmp_path / "bad.jpg")
    assert paths(result, tmp_path) == ["good.jpg"]
    assert result.problems == [ScanProblem(bad, "cannot stat: Input/output error")]
    assert result.incomplete == [bad]


def test_missing_root_is_a_problem_and_incomplete(tmp_path: Path) -> None:
    touch(tmp_path / "here" / "a.jpg")
    missing = str(tmp_path / "unplugged_disk")

    result = scan([missing, str(tmp_path / "here")])

    assert paths(result, tmp_path) == ["here/a.jpg"]
    assert result.problems == [ScanProblem(missing, "root not found")]
    assert result.incomplete == [missing]


def test_root_that_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = touch(tmp_path / "one.jpg", b"abc")
    notes = touch(tmp_path / "notes.xls")
    monkeypatch.chdir(tmp_path)

    result = scan(["one.jpg"])  # relative: made absolute
    assert paths(result) == [str(photo)]
    assert result.files[0].size == 3

    unknown = scan([str(notes)])
    assert unknown.files == [] and unknown.skipped == 1 and unknown.problems == []


def test_overlapping_roots_list_each_file_once(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a.jpg", "sub/b.jpg"])

    result = scan([str(tmp_path), str(tmp_path / "sub"), str(tmp_path / "a.jpg")])

    assert paths(result, tmp_path) == ["a.jpg", "sub/b.jpg"]


def test_non_utf8_name_round_trips(tmp_path: Path) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")
    try:
        with open(raw, "wb") as f:
            f.write(b"latin-1")
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")

    result = scan([str(tmp_path)])

    assert len(result.files) == 1
    record = result.files[0]
    assert os.fsencode(record.path) == raw
    assert record.kind == "image" and record.size == 7
    assert os.path.exists(record.path)


def test_very_deep_tree_does_not_recurse(monkeypatch: pytest.MonkeyPatch) -> None:
    depth = 2000
    # A short base path keeps 2000 levels of "/d" under PATH_MAX (4096 on Linux).
    base = tempfile.mkdtemp(prefix="mm", dir="/tmp" if os.path.isdir("/tmp") else None)
    monkeypatch.chdir(base)
    try:
        for _ in range(depth):  # relative steps: no path here ever grows long
            os.mkdir("d")
            os.chdir("d")
        Path("deep.jpg").write_bytes(b"x")
        os.chdir(base)

        result = scan([base])

        assert result.problems == []
        assert paths(result) == [os.path.join(base, *["d"] * depth, "deep.jpg")]
    finally:
        os.chdir(base)
        for _ in range(depth):
            os.chdir("d")
        os.remove("deep.jpg")
        for _ in range(depth):
            os.chdir("..")
            os.rmdir("d")
        os.chdir("/")
        os.rmdir(base)


def test_skip_dirs_match_by_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path, ["a.jpg", "index/thumb.jpg", "sub/b.jpg"])
    (tmp_path / "index_link").symlink_to(tmp_path / "index")
    listed = spy_scandir(monkeypatch)

    via_dotdot = scan([str(tmp_path)], skip_dirs=[str(tmp_path / "sub" / ".." / "index")])
    via_link = scan([str(tmp_path)], skip_dirs=[str(tmp_path / "index_link")])

    for result in (via_dotdot, via_link):
        assert paths(result, tmp_path) == ["a.jpg", "sub/b.jpg"]
        assert result.problems == []
    assert str(tmp_path / "index") not in listed
    # A skip dir that does not exist yet is harmless.
    assert len(scan([str(tmp_path)], skip_dirs=[str(tmp_path / "nope")]).files) == 3


def test_skip_dirs_also_apply_to_symlinked_folders(tmp_path: Path) -> None:
    make_tree(tmp_path, ["root/a.jpg", "index/thumb.jpg"])
    (tmp_path / "root" / "idx").symlink_to(tmp_path / "index")

    result = scan(
        [str(tmp_path / "root")], follow_symlinks=True, skip_dirs=[str(tmp_path / "index")]
    )

    assert paths(result, tmp_path) == ["root/a.jpg"]


def test_progress_is_reported(tmp_path: Path) -> None:
    make_tree(tmp_path, [f"d{i % 7}/{i}.jpg" for i in range(2500)])
    counts: list[int] = []

    result = scan([str(tmp_path)], on_progress=counts.append)

    assert len(result.files) == 2500
    assert len(counts) >= 3
    assert counts == sorted(counts)
    assert counts[-1] == 2500


@pytest.mark.parametrize(
    ("path", "directory", "expected"),
    [
        ("/a/b", "/a/b", True),
        ("/a/b/c.jpg", "/a/b", True),
        ("/a/b/c/d.jpg", "/a/b", True),
        ("/a/bc", "/a/b", False),
        ("/a/bc/d.jpg", "/a/b", False),
        ("/a", "/a/b", False),
        ("/a/b", "/", True),
        ("/", "/", True),
        ("/a/b/", "/a/b", True),
        ("/a/b/c", "/a/b/", True),
        ("/a/b/../c", "/a/b", False),
        ("/a/caf\udce9/x.jpg", "/a/caf\udce9", True),
    ],
)
def test_is_within(path: str, directory: str, expected: bool) -> None:
    assert is_within(path, directory) is expected
