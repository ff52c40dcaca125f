"""Command-line tests: every command and option of `mmfind`, run in-process with CliRunner on the
`test-tiny` model over small generated photos.

The shared library (one folder of photos, indexed once per module with --index) serves the
read-only query/info tests; tests that change files build their own small folder and index.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import Result
from media_factory import make_near_duplicate, make_photo, make_random_bytes, make_text
from robustness.helpers import cli

from mmfind import __version__

MODEL = "test-tiny"
SIZE = (200, 150)
SUMMARY_KEYS = ["scanned", "new", "updated", "moved", "removed", "unchanged", "failed"]
PLAIN_LINE = re.compile(r"^(-?\d+\.\d{4})\t(.+)$")
ANSI = re.compile(r"\x1b[\[\]]")

# --- helpers ------------------------------------------------------------------------------------


def ok(*args: str | os.PathLike[str], env: dict[str, str | None] | None = None) -> Result:
    result = cli(*args, env=env)
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result


def index_json(*args: str | os.PathLike[str], workers: str = "0") -> dict[str, int]:
    result = ok("index", *args, "--model", MODEL, "--workers", workers, "--json")
    summary = json.loads(result.stdout)
    assert list(summary) == SUMMARY_KEYS
    return summary


def counts(**nonzero: int) -> dict[str, int]:
    """A full index summary: the given counts, every other key 0."""
    return {key: nonzero.get(key, 0) for key in SUMMARY_KEYS}


def query_json(*args: str | os.PathLike[str]) -> dict[str, Any]:
    result = ok("query", *args, "--json")
    document = json.loads(result.stdout)
    results = document["results"]
    assert [r["rank"] for r in results] == list(range(1, len(results) + 1))
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    return document


def scores_by_path(document: dict[str, Any]) -> dict[str, float]:
    return {r["path"]: r["score"] for r in document["results"]}


def one_line_error(result: Result, code: int, *needles: str) -> None:
    """A usage/input error: the exit code, nothing on stdout, one `mmfind: ...` line on stderr."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mmfind: ")
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in result.stderr


def photos(folder: Path, n: int, first_seed: int = 0) -> list[Path]:
    return [
        make_photo(folder / f"p{i}.jpg", size=SIZE, seed=first_seed + i)
        for i in range(first_seed, first_seed + n)
    ]


@pytest.fixture
def encoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the images the model encodes (workers=0 keeps decoding in this process)."""
    from mmfind.encoders.clip import OpenClipEncoder

    calls: list[int] = []
    original = OpenClipEncoder.encode_images

    def counting(self: OpenClipEncoder, pixels: np.ndarray) -> np.ndarray:
        calls.append(len(pixels))
        return original(self, pixels)

    monkeypatch.setattr(OpenClipEncoder, "encode_images", counting)
    return calls


# --- the shared, read-only library ---------------------------------------------------------------


@dataclass
class Library:
    root: Path  # the indexed folder
    index: Path
    photos: dict[str, Path] = field(default_factory=dict)  # "a/p0.jpg" -> path
    near_duplicate: Path = Path()  # resized, re-compressed copy of b/p4.jpg, outside root
    original: Path = Path()

    def q(self, *args: str | os.PathLike[str]) -> tuple[str | os.PathLike[str], ...]:
        return (*args, "--index", self.index)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Library]:
    base = tmp_path_factory.mktemp("library")
    root = base / "photos"
    lib = Library(root=root, index=base / "index")
    for i in range(6):
        sub = "a" if i < 3 else "b"
        lib.photos[f"{sub}/p{i}.jpg"] = make_photo(root / sub / f"p{i}.jpg", size=SIZE, seed=i)
    lib.original = lib.photos["b/p4.jpg"]
    lib.near_duplicate = make_near_duplicate(lib.original, base / "outside" / "copy.jpg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMFIND_HOME", str(base / "unused-home"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("MMFIND_MODEL", raising=False)
        mp.delenv("NO_COLOR", raising=False)
        summary = index_json(root, "--index", lib.index)
        assert summary == counts(scanned=6, new=6)
        yield lib


# --- global options -----------------------------------------------------------------------------


def test_version() -> None:
    result = ok("--version")
    assert result.stdout == f"mmfind {__version__}\n"


INDEX_OPTIONS = (
    "--index --model --device --batch-size --workers --exclude --follow-symlinks --max-pixels "
    "--reembed --retry-failed --wait --quiet --json"
)
QUERY_OPTIONS = (
    "--image --not --text-weight --image-weight --not-weight --limit --in --min-score --type "
    "--index --device --json --paths --null --table"
)


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ([], ["index", "query", "info", "serve", "eval", "doctor"]),
        (["index"], INDEX_OPTIONS.split()),
        (["query"], QUERY_OPTIONS.split()),
        (["info"], ["--index", "--failures", "--json"]),
        (["serve"], ["--index", "--device", "--stop", "--idle-timeout"]),
        (["doctor"], ["--index", "--repair", "--full", "--json"]),
    ],
)
def test_help(command: list[str], options: list[str]) -> None:
    for flag in ("--help", "-h"):
        result = ok(*command, flag)
        assert "Usage:" in result.stdout
        for option in options:
            assert option in result.stdout, option


def test_no_arguments_shows_help() -> None:
    result = cli()
    assert result.exit_code in (0, 2)
    assert "Usage:" in result.output
    assert "query" in result.output


def test_unknown_command_is_a_usage_error() -> None:
    result = cli("serch", "cat")
    assert result.exit_code == 2
    assert "No such command" in result.stderr


# --- index ---------------------------------------------------------------------------------------


def test_index_first_run_then_noop(tmp_path: Path, encoded: list[int]) -> None:
    photos(tmp_path / "pics", 4)
    assert index_json(tmp_path / "pics") == counts(scanned=4, new=4)
    assert sum(encoded) == 4
    assert index_json(tmp_path / "pics") == counts(scanned=4, unchanged=4)
    assert sum(encoded) == 4  # nothing re-read


def test_index_modified_file_is_updated(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    files = photos(pics, 3)
    index_json(pics)
    make_photo(files[0], size=SIZE, seed=99)  # new content at the same path
    stat = files[0].stat()
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert index_json(pics) == counts(scanned=3, updated=1, unchanged=2)
    # the new content is what the index now holds
    probe = make_near_duplicate(files[0], tmp_path / "probe.jpg")
    document = query_json("--image", probe)
    assert document["results"][0]["path"] == str(files[0])
    assert document["results"][0]["score"] > 0.99
    assert len(document["results"]) == 3  # updated in place, not duplicated


def test_index_touched_file_is_unchanged(tmp_path: Path, encoded: list[int]) -> None:
    pics = tmp_path / "pics"
    files = photos(pics, 2)
    index_json(pics)
    stat = files[1].stat()
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    before = sum(encoded)
    assert index_json(pics) == counts(scanned=2, unchanged=2)
    assert sum(encoded) == before
    assert index_json(pics) == counts(scanned=2, unchanged=2)  # and its new mtime is stored


def test_index_renamed_file_is_moved_without_re_encoding(
    tmp_path: Path, encoded: list[int]
) -> None:
    pics = tmp_path / "pics"
    files = photos(pics, 3)
    index_json(pics)
    before = sum(encoded)
    renamed = pics / "sub" / "renamed.jpg"
    renamed.parent.mkdir()
    files[1].rename(renamed)
    assert index_json(pics) == counts(scanned=3, moved=1, unchanged=2)
    assert sum(encoded) == before
    paths = ok("query", "anything", "--paths").stdout.splitlines()
    assert sorted(paths) == sorted([str(files[0]), str(files[2]), str(renamed)])


def test_index_deleted_file_is_removed(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    files = photos(pics, 3)
    index_json(pics)
    files[2].unlink()
    assert index_json(pics) == counts(scanned=2, removed=1, unchanged=2)
    paths = ok("query", "anything", "--paths").stdout.splitlines()
    assert sorted(paths) == sorted(str(f) for f in files[:2])
    info = json.loads(ok("info", "--json").stdout)
    assert (info["files"], info["items"]) == (2, 2)


def test_index_copied_file_is_new_and_reuses_vectors(tmp_path: Path, encoded: list[int]) -> None:
    pics = tmp_path / "pics"
    files = photos(pics, 3)
    index_json(pics)
    before = sum(encoded)
    copy = shutil.copy(files[0], pics / "copy of p0.jpg")
    assert index_json(pics) == counts(scanned=4, new=1, unchanged=3)
    assert sum(encoded) == before  # the copy's vector came from the catalog
    scores = scores_by_path(query_json("a red bicycle"))
    assert len(scores) == 4
    assert scores[str(copy)] == scores[str(files[0])]
    info = json.loads(ok("info", "--json").stdout)
    assert info["files"] == 4
    assert info["items"] == 4


def test_index_broken_file_fails_and_is_listed(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    photos(pics, 2)
    broken = make_text(pics / "broken.jpg")
    noise = make_random_bytes(pics / "noise.png")
    result = ok("index", pics, "--model", MODEL, "--workers", "0")
    assert result.stdout == "scanned=4 new=2 updated=0 moved=0 removed=0 unchanged=0 failed=2\n"
    # the failure summary goes to stderr, with the reason and where to look
    assert "2 file(s) failed" in result.stderr
    assert "not an image" in result.stderr
    assert "mmfind info --failures" in result.stderr

    listed = ok("info", "--failures").stdout.splitlines()
    assert len(listed) == 2
    by_path = dict(line.split("\t", 1) for line in listed)
    assert set(by_path) == {str(broken), str(noise)}
    assert all("not an image" in reason for reason in by_path.values())

    document = json.loads(ok("info", "--failures", "--json").stdout)
    assert document["failed"] == 2
    assert sorted(f["path"] for f in document["failures"]) == sorted([str(broken), str(noise)])
    assert all(f["kind"] == "image" and f["reason"] for f in document["failures"])
    assert "failures" not in json.loads(ok("info", "--json").stdout)

    # unchanged failures are not retried, but still counted; a repaired file is indexed
    assert index_json(pics) == counts(scanned=4, unchanged=2, failed=2)
    make_photo(broken, size=SIZE, seed=42)
    assert index_json(pics) == counts(scanned=4, new=1, unchanged=2, failed=1)
    assert [line.split("\t")[0] for line in ok("info", "--failures").stdout.splitlines()] == [
        str(noise)
    ]


def test_index_failed_summary_is_json_only_with_json(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    photos(pics, 1)
    make_text(pics / "broken.jpg")
    result = ok("index", pics, "--model", MODEL, "--workers", "0", "--json")
    assert json.loads(result.stdout) == counts(scanned=2, new=1, failed=1)


def test_index_max_pixels_and_retry_failed(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    photos(pics, 1)
    big = make_photo(pics / "big.jpg", size=(400, 300), seed=7)
    assert index_json(pics, "--max-pixels", "40000") == counts(scanned=2, new=1, failed=1)
    [failure] = json.loads(ok("info", "--failures", "--json").stdout)["failures"]
    assert failure["path"] == str(big)
    assert "pixel cap" in failure["reason"]
    # a higher cap alone does not retry an unchanged failure; --retry-failed does
    assert index_json(pics) == counts(scanned=2, unchanged=1, failed=1)
    assert index_json(pics, "--retry-failed") == counts(scanned=2, new=1, unchanged=1)
    assert json.loads(ok("info", "--json").stdout)["failed"] == 0


def test_index_max_pixels_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pics = tmp_path / "pics"
    photos(pics, 2)
    monkeypatch.setenv("MMFIND_MAX_PIXELS", "100")
    assert index_json(pics) == counts(scanned=2, failed=2)


def test_index_without_path_refreshes_known_roots(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    photos(one, 2)
    photos(two, 1, first_seed=5)
    index_json(one)
    index_json(two)
    make_photo(one / "later.jpg", size=SIZE, seed=30)
    (two / "p5.jpg").unlink()
    assert index_json() == counts(scanned=3, new=1, removed=1, unchanged=2)
    roots = json.loads(ok("info", "--json").stdout)["roots"]
    assert roots == [str(one), str(two)]


def test_index_without_path_or_roots_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("index", "--model", MODEL, "--workers", "0")
    one_line_error(result, 2, "nothing to index", "PATH")


def test_index_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    photos(tmp_path / "pics", 1)
    missing = tmp_path / "no-such-folder"
    result = cli("index", tmp_path / "pics", missing, "--model", MODEL, "--workers", "0")
    one_line_error(result, 2, "no such file or directory", str(missing))
    # nothing was indexed, the existing folder included
    assert cli("query", "x").exit_code == 2


def test_index_single_file_path(tmp_path: Path) -> None:
    files = photos(tmp_path / "pics", 2)
    assert index_json(files[1]) == counts(scanned=1, new=1)
    assert ok("query", "x", "--paths").stdout == f"{files[1]}\n"


def test_index_exclude(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    kept = make_photo(pics / "keep.jpg", size=SIZE, seed=1)
    make_photo(pics / "skip-me.jpg", size=SIZE, seed=2)
    make_photo(pics / "drafts" / "d.jpg", size=SIZE, seed=3)
    nested = make_photo(pics / "deep" / "drafts.jpg", size=SIZE, seed=4)
    make_photo(pics / "deep" / "raw" / "r.png", size=SIZE, seed=5)
    summary = index_json(
        pics, "--exclude", "skip-*", "--exclude", "drafts", "--exclude", "deep/raw"
    )
    assert summary == counts(scanned=2, new=2)
    paths = ok("query", "x", "--paths").stdout.splitlines()
    assert sorted(paths) == sorted([str(kept), str(nested)])


def test_index_skips_hidden_files_and_folders(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    visible = make_photo(pics / "visible.jpg", size=SIZE, seed=1)
    make_photo(pics / ".hidden.jpg", size=SIZE, seed=2)
    make_photo(pics / ".secret" / "inside.jpg", size=SIZE, seed=3)
    make_photo(pics / "node_modules" / "junk.jpg", size=SIZE, seed=4)
    make_photo(pics / ".git" / "junk.jpg", size=SIZE, seed=5)
    assert index_json(pics) == counts(scanned=1, new=1)
    assert ok("query", "x", "--paths").stdout == f"{visible}\n"


def test_index_skips_the_index_folder_inside_a_root(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    photos(pics, 2)
    inside = pics / "my-index"
    first = index_json(pics, "--index", inside)
    assert first == counts(scanned=2, new=2)
    make_photo(inside / "stray.jpg", size=SIZE, seed=9)
    assert index_json(pics, "--index", inside) == counts(scanned=2, unchanged=2)


def test_index_symlinks_followed_only_when_asked(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    photos(pics, 1)
    elsewhere = tmp_path / "elsewhere"
    make_photo(elsewhere / "linked.jpg", size=SIZE, seed=8)
    (pics / "link").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(pics, target_is_directory=True)  # a cycle
    assert index_json(pics) == counts(scanned=1, new=1)
    summary = index_json(pics, "--follow-symlinks")
    assert summary == counts(scanned=2, new=1, unchanged=1)


def test_index_ignores_files_that_are_not_media(tmp_path: Path) -> None:
    # files of no indexed kind are neither scanned nor recorded as failures
    pics = tmp_path / "pics"
    photos(pics, 1)
    (pics / "p0.jpg.xmp").write_text("<x:xmpmeta/>")  # a sidecar
    (pics / "README").write_text("hello")
    (pics / "list.csv").write_text("a,b\n")
    (pics / "backup.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    (pics / "Thumbs.db").write_bytes(bytes(64))
    assert index_json(pics) == counts(scanned=1, new=1)
    assert ok("info", "--failures").stdout == ""


def test_index_quiet_prints_nothing(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    photos(pics, 2)
    make_text(pics / "broken.jpg")
    for flag in ("--quiet", "-q"):
        result = ok("index", pics, "--model", MODEL, "--workers", "0", flag)
        assert result.stdout == ""
        assert result.stderr == ""
    assert json.loads(ok("info", "--json").stdout)["files"] == 2


def test_index_human_summary_is_plain_when_not_a_tty(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    photos(pics, 3)
    result = ok("index", pics, "--model", MODEL, "--workers", "0")
    assert result.stdout == "scanned=3 new=3 updated=0 moved=0 removed=0 unchanged=0 failed=0\n"
    assert result.stderr == ""  # no progress bar when stderr is not a terminal


def test_index_model_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pics = tmp_path / "pics"
    photos(pics, 1)
    monkeypatch.setenv("MMFIND_MODEL", MODEL)
    result = ok("index", pics, "--workers", "0", "--json")
    assert json.loads(result.stdout) == counts(scanned=1, new=1)
    assert json.loads(ok("info", "--json").stdout)["model"] == MODEL


def test_index_with_another_model_is_refused(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    photos(pics, 2)
    index_json(pics)
    make_photo(pics / "new.jpg", size=SIZE, seed=11)
    for other in ("laion-b32", "ViT-B-32:laion2b_s34b_b79k"):
        result = cli("index", pics, "--model", other, "--workers", "0")
        one_line_error(result, 2, "--reembed", MODEL, "ViT-B-32:laion2b_s34b_b79k")
    # nothing changed: the new photo was not indexed with either model
    info = json.loads(ok("info", "--json").stdout)
    assert (info["model"], info["files"]) == (MODEL, 2)
    # without --model the index's own model is used
    assert index_json(pics)["new"] == 1


def test_index_reembed_with_an_unavailable_model_costs_nothing(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    photos(pics, 2)
    index_json(pics)
    missing = tmp_path / "missing.safetensors"
    result = cli("index", pics, "--model", f"ViT-B-32:{missing}", "--reembed", "--workers", "0")
    one_line_error(result, 2, "checkpoint file not found")
    info = json.loads(ok("info", "--json").stdout)
    assert (info["model"], info["files"], info["items"]) == (MODEL, 2, 2)
    assert ok("query", "x", "--paths").stdout.count("\n") == 2


def test_index_reembed_with_a_local_checkpoint(tmp_path: Path, tiny_encoder: Any) -> None:
    import open_clip
    import torch

    checkpoint = tmp_path / "other-tiny.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        other = open_clip.create_model("mmfind-test-tiny", pretrained=None, device="cpu")
    torch.save(other.state_dict(), checkpoint)

    pics = tmp_path / "pics"
    files = photos(pics, 3)
    index_json(pics)
    before = scores_by_path(query_json("a dog"))
    other_model = f"mmfind-test-tiny:{checkpoint}"
    result = ok("index", pics, "--model", other_model, "--reembed", "--workers", "0", "--json")
    summary = json.loads(result.stdout)
    # every file is encoded again (counted as new or as updated, nothing else)
    assert summary["new"] + summary["updated"] == 3
    assert summary == counts(scanned=3, new=summary["new"], updated=summary["updated"])
    info = json.loads(ok("info", "--json").stdout)
    assert (info["model"], info["files"], info["items"], info["dim"]) == (other_model, 3, 3, 64)
    document = query_json("a dog")
    assert document["model"] == other_model  # query follows the index's model by itself
    after = scores_by_path(document)
    assert set(after) == {str(f) for f in files}
    assert all(abs(after[p] - before[p]) > 1e-4 for p in after)
    # and indexing with the original model is now refused
    one_line_error(cli("index", pics, "--model", MODEL, "--workers", "0"), 2, "--reembed")


def test_index_with_worker_processes_matches_in_process(tmp_path: Path, library: Library) -> None:
    mirror = tmp_path / "photos"
    shutil.copytree(library.root, mirror)
    make_text(mirror / "broken.jpg")
    summary = index_json(mirror, "--batch-size", "2", workers="2")
    assert summary == counts(scanned=7, new=6, failed=1)
    # the same vectors as the in-process, one-batch run of the shared library
    here = query_json("a bowl of fruit", "--device", "cpu")
    shared = query_json(*library.q("a bowl of fruit"))
    assert len(here["results"]) == len(shared["results"]) == 6
    for mine, theirs in zip(here["results"], shared["results"], strict=True):
        assert os.path.relpath(mine["path"], mirror) == os.path.relpath(
            theirs["path"], library.root
        )
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-4)


def test_index_busy_lock_and_wait(tmp_path: Path) -> None:
    from mmfind.store.lock import writer_lock

    pics = tmp_path / "pics"
    photos(pics, 1)
    home = Path(os.environ["MMFIND_HOME"])
    with writer_lock(home):
        result = cli("index", pics, "--model", MODEL, "--workers", "0")
    one_line_error(result, 75, "another mmfind index run", "--wait")

    held = threading.Event()

    def hold_briefly() -> None:
        with writer_lock(home):
            held.set()
            time.sleep(0.5)

    thread = threading.Thread(target=hold_briefly)
    thread.start()
    held.wait(5)
    try:
        summary = index_json(pics, "--wait", "10")
    finally:
        thread.join()
    assert summary == counts(scanned=1, new=1)


def test_index_invalid_option_values() -> None:
    assert cli("index", ".", "--workers", "-1").exit_code == 2
    assert cli("index", ".", "--batch-size", "0").exit_code == 2
    assert cli("index", ".", "--max-pixels", "0").exit_code == 2


def test_index_unknown_model_name(tmp_path: Path) -> None:
    photos(tmp_path / "pics", 1)
    result = cli("index", tmp_path / "pics", "--model", "no-such-preset", "--workers", "0")
    one_line_error(result, 2, "unknown model")


# --- query ---------------------------------------------------------------------------------------


def test_query_plain_lines_when_piped(library: Library) -> None:
    result = ok(*library.q("query", "a cat on a sofa"))
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 6
    parsed = [PLAIN_LINE.match(line) for line in lines]
    assert all(parsed), lines
    scores = [float(m.group(1)) for m in parsed if m]
    assert scores == sorted(scores, reverse=True)
    assert sorted(m.group(2) for m in parsed if m) == sorted(
        str(p) for p in library.photos.values()
    )
    assert not ANSI.search(result.stdout)
    # the same scores as the JSON document, rounded
    document = query_json(*library.q("a cat on a sofa"))
    assert [f"{r['score']:.4f}\t{r['path']}" for r in document["results"]] == lines


def test_query_json_document(library: Library) -> None:
    document = query_json(*library.q("white cat on grass", "--not", "dog"))
    assert set(document) >= {"query", "model", "results"}
    assert document["model"] == MODEL
    assert document["query"] == {
        "text": "white cat on grass",
        "images": [],
        "audio": [],
        "not": ["dog"],
    }
    results = document["results"]
    assert len(results) == 6
    for r in results:
        assert set(r) >= {"rank", "score", "path", "kind", "start", "end"}
        assert r["kind"] == "image"
        assert r["start"] is None and r["end"] is None
        assert -1.0 <= r["score"] <= 1.0
        assert Path(r["path"]).is_absolute()
        assert (r["width"], r["height"]) == SIZE
        assert r["size"] == os.path.getsize(r["path"])
    assert {r["path"] for r in results} == {str(p) for p in library.photos.values()}


def test_query_paths_and_nul(library: Library) -> None:
    ranked = [r["path"] for r in query_json(*library.q("sunset"))["results"]]
    result = ok(*library.q("query", "sunset", "--paths"))
    assert result.stdout == "".join(f"{p}\n" for p in ranked)
    for flag in ("-0", "--null"):
        result = ok(*library.q("query", "sunset", flag))
        assert result.stdout_bytes == b"".join(os.fsencode(p) + b"\0" for p in ranked)
    # --paths with -0 is still one format: NUL-separated
    result = ok(*library.q("query", "sunset", "--paths", "-0"))
    assert result.stdout_bytes.split(b"\0")[:-1] == [os.fsencode(p) for p in ranked]


def test_plain_output_keeps_long_lines_and_tabs(tmp_path: Path) -> None:
    # piped output is for programs: never wrapped at the terminal width, tabs kept
    deep = tmp_path / ("long-folder-name-" * 6) / ("another-long-folder-" * 5)
    photo = make_photo(deep / "a photo with a long name.jpg", size=SIZE, seed=1)
    make_text(deep / "broken file with a long name.jpg")
    assert len(str(photo)) > 200
    narrow = {"COLUMNS": "40"}
    result = ok("index", deep, "--model", MODEL, "--workers", "0", env=narrow)
    assert result.stdout == "scanned=2 new=1 updated=0 moved=0 removed=0 unchanged=0 failed=1\n"
    assert len(result.stderr.splitlines()) == 1
    [line] = ok("query", "x", env=narrow).stdout.splitlines()
    assert re.fullmatch(rf"-?\d\.\d{{4}}\t{re.escape(str(photo))}", line)
    rows = ok("info", env=narrow).stdout.splitlines()
    assert f"roots\t{deep}" in rows
    assert len(rows) == 12  # ten facts, one line per embedding space, one per text tower
    [failure] = ok("info", "--failures", env=narrow).stdout.splitlines()
    assert failure.startswith(f"{deep}/broken file with a long name.jpg\t")
    assert ok("query", "x", "--paths", env=narrow).stdout == f"{photo}\n"


def test_query_table(library: Library) -> None:
    result = ok(*library.q("query", "mountain lake", "--table"))
    out = result.stdout
    assert "'mountain lake': 6 result(s)" in out
    for header in ("#", "score", "path", "size", "dimensions"):
        assert header in out
    for path in library.photos.values():
        assert str(path) in out
    assert out.count("200×150") == 6
    assert not ANSI.search(out)  # not a terminal: a table, but no escape codes
    top = query_json(*library.q("mountain lake"))["results"][0]
    first_row = next(line for line in out.splitlines() if f" {top['path']} " in line)
    assert f"{top['score']:.3f}" in first_row
    assert re.search(r"\b1\b", first_row)


def test_query_limit(library: Library) -> None:
    everything = [r["path"] for r in query_json(*library.q("a forest"))["results"]]
    for flag in ("-n", "--limit"):
        limited = query_json(*library.q("a forest", flag, "2"))["results"]
        assert [r["path"] for r in limited] == everything[:2]
    assert len(ok(*library.q("query", "a forest", "-n", "100")).stdout.splitlines()) == 6
    assert cli(*library.q("query", "a forest", "-n", "0")).exit_code == 2


def test_query_default_limit_is_ten(tmp_path: Path) -> None:
    photos(tmp_path / "pics", 12)
    index_json(tmp_path / "pics")
    assert len(ok("query", "people").stdout.splitlines()) == 10


def test_query_in_restricts_to_folders(library: Library) -> None:
    a, b = library.root / "a", library.root / "b"
    only_a = query_json(*library.q("a beach", "--in", a))["results"]
    assert sorted(r["path"] for r in only_a) == sorted(
        str(p) for k, p in library.photos.items() if k.startswith("a/")
    )
    assert all(r["path"].startswith(f"{a}{os.sep}") for r in only_a)
    both = query_json(*library.q("a beach", "--in", a, "--in", b))["results"]
    assert len(both) == 6
    limited = query_json(*library.q("a beach", "--in", b, "-n", "1"))["results"]
    assert len(limited) == 1
    assert limited[0]["path"].startswith(f"{b}{os.sep}")
    # relative --in is resolved against the working directory
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(library.root)
        relative = query_json(*library.q("a beach", "--in", "b"))["results"]
    assert sorted(r["path"] for r in relative) == sorted(
        str(p) for k, p in library.photos.items() if k.startswith("b/")
    )
    # a folder with nothing indexed under it: no results, exit 1
    result = cli(*library.q("query", "a beach", "--in", library.root.parent / "outside"))
    assert (result.exit_code, result.stdout) == (1, "")


def test_query_in_is_not_a_string_prefix(library: Library) -> None:
    # photos/a must not match photos/ab...; and a folder that is a prefix of a name
    result = cli(*library.q("query", "x", "--in", library.root / "a" / "p"))
    assert (result.exit_code, result.stdout) == (1, "")


def test_query_min_score(library: Library) -> None:
    document = query_json(*library.q("--image", library.near_duplicate))
    scores = [r["score"] for r in document["results"]]
    assert len(scores) == 6
    cut = (scores[0] + scores[1]) / 2
    above = query_json(*library.q("--image", library.near_duplicate, "--min-score", str(cut)))
    assert [r["path"] for r in above["results"]] == [str(library.original)]
    cut3 = (scores[2] + scores[3]) / 2
    plain = ok(*library.q("query", "--image", library.near_duplicate, "--min-score", str(cut3)))
    assert len(plain.stdout.splitlines()) == 3
    # nothing scores that high: no results, exit 1, nothing printed
    result = cli(*library.q("query", "a cat", "--min-score", "0.999"))
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", "")
    result = cli(*library.q("query", "a cat", "--min-score", "0.999", "--json"))
    assert result.exit_code == 1
    assert json.loads(result.stdout)["results"] == []


def test_query_by_near_duplicate_image_ranks_the_original_first(library: Library) -> None:
    for flag in ("--image", "-i"):
        document = query_json(*library.q(flag, library.near_duplicate))
        results = document["results"]
        assert results[0]["path"] == str(library.original)
        assert results[0]["score"] > 0.99
        assert results[0]["score"] > results[1]["score"]
        assert len(results) == 6
        assert document["query"]["images"] == [str(library.near_duplicate)]
        assert document["query"]["text"] is None
    first = ok(*library.q("query", "-i", library.near_duplicate, "-n", "1", "--paths"))
    assert first.stdout == f"{library.original}\n"


def test_query_image_leaves_itself_out(library: Library) -> None:
    own = library.photos["a/p1.jpg"]
    results = query_json(*library.q("--image", own))["results"]
    assert str(own) not in [r["path"] for r in results]
    assert len(results) == 5
    # also when named by a relative path
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(own.parent)
        relative = query_json(*library.q("--image", own.name))["results"]
    assert [r["path"] for r in relative] == [r["path"] for r in results]


def test_query_several_images_average(library: Library) -> None:
    one, two = library.photos["a/p0.jpg"], library.photos["b/p5.jpg"]
    document = query_json(*library.q("--image", one, "--image", two))
    paths = [r["path"] for r in document["results"]]
    assert str(one) not in paths and str(two) not in paths
    assert len(paths) == 4
    assert document["query"]["images"] == [str(one), str(two)]


def _fit(fused: dict[str, float], combo: dict[str, float]) -> float:
    """Largest residual of fused ≈ c·combo (scores of a unit query vector are linear)."""
    keys = sorted(fused)
    f = np.array([fused[k] for k in keys])
    c = np.array([combo[k] for k in keys])
    scale = float(f @ c / (c @ c))
    assert scale > 0
    return float(np.max(np.abs(f - scale * c)))


def test_query_text_and_image_fusion(library: Library) -> None:
    dup = library.near_duplicate
    text = scores_by_path(query_json(*library.q("a red car")))
    image = scores_by_path(query_json(*library.q("--image", dup)))
    fused_doc = query_json(*library.q("a red car", "--image", dup))
    assert fused_doc["query"] == {
        "text": "a red car",
        "images": [str(dup)],
        "audio": [],
        "not": [],
    }
    fused = scores_by_path(fused_doc)
    assert set(text) == set(image) == set(fused)
    assert fused != image and fused != text
    # a weighted sum of unit vectors: each score is linear in the part scores
    assert _fit(fused, {p: text[p] + image[p] for p in fused}) < 2e-4

    weighted = scores_by_path(
        query_json(
            *library.q("a red car", "-i", dup, "--text-weight", "3", "--image-weight", "0.5")
        )
    )
    assert weighted != fused
    assert _fit(weighted, {p: 3 * text[p] + 0.5 * image[p] for p in weighted}) < 2e-4

    # a zero weight leaves the other part alone
    no_image = scores_by_path(query_json(*library.q("a red car", "-i", dup, "--image-weight", "0")))
    assert no_image == pytest.approx(text, abs=2e-6)
    no_text = scores_by_path(query_json(*library.q("a red car", "-i", dup, "--text-weight", "0")))
    assert no_text == pytest.approx(image, abs=2e-6)


def test_query_not_subtracts(library: Library) -> None:
    text = scores_by_path(query_json(*library.q("a red car")))
    other = scores_by_path(query_json(*library.q("snow")))
    negated = scores_by_path(query_json(*library.q("a red car", "--not", "snow")))
    assert negated != text
    assert _fit(negated, {p: text[p] - 0.5 * other[p] for p in negated}) < 2e-4
    stronger = scores_by_path(
        query_json(*library.q("a red car", "--not", "snow", "--not-weight", "2"))
    )
    assert _fit(stronger, {p: text[p] - 2 * other[p] for p in stronger}) < 2e-4
    zero = scores_by_path(query_json(*library.q("a red car", "--not", "snow", "--not-weight", "0")))
    assert zero == pytest.approx(text, abs=2e-6)
    # a heavy --not reorders the results by text - weight·negative
    heavy = query_json(*library.q("a red car", "--not", "snow", "--not-weight", "20"))["results"]
    expected = sorted(text, key=lambda p: -(text[p] - 20 * other[p]))
    assert [r["path"] for r in heavy] == expected
    assert expected != sorted(text, key=lambda p: -text[p])  # the order really changed


def test_query_parts_that_cancel_out(library: Library) -> None:
    result = cli(*library.q("query", "a red car", "--not", "a red car", "--not-weight", "1"))
    one_line_error(result, 2, "cancel out")


def test_query_missing_image_is_an_input_error(library: Library, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    for args in (("--image", missing), ("a cat", "--image", missing)):
        result = cli(*library.q("query", *args))
        one_line_error(result, 2, "query image not found", str(missing))


def test_query_unreadable_image_is_an_input_error(library: Library, tmp_path: Path) -> None:
    fake = make_text(tmp_path / "fake.jpg")
    one_line_error(cli(*library.q("query", "--image", fake)), 2, "query image", str(fake))
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    one_line_error(cli(*library.q("query", "--image", folder)), 2, "query image", str(folder))


def test_query_without_an_index(tmp_path: Path) -> None:
    result = cli("query", "a cat")
    one_line_error(result, 2, "no index at", os.environ["MMFIND_HOME"])
    result = cli("query", "a cat", "--index", tmp_path / "elsewhere")
    one_line_error(result, 2, str(tmp_path / "elsewhere"))


def test_query_empty_index(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    assert index_json(empty) == counts()
    one_line_error(cli("query", "a cat"), 2, "empty", "mmfind index")
    # an index whose only files were removed is empty too
    pics = tmp_path / "pics"
    files = photos(pics, 1)
    index_json(pics, "--index", tmp_path / "other")
    files[0].unlink()
    assert index_json(pics, "--index", tmp_path / "other")["removed"] == 1
    one_line_error(cli("query", "x", "--index", tmp_path / "other"), 2, "empty")


def test_query_type(library: Library) -> None:
    assert len(query_json(*library.q("a dog", "--type", "image"))["results"]) == 6
    result = cli(*library.q("query", "a dog", "--type", "bogus"))
    one_line_error(result, 2, "--type", "bogus", "image")


def test_query_conflicting_formats(library: Library) -> None:
    for flags in (
        ("--json", "--paths"),
        ("--json", "-0"),
        ("--json", "--table"),
        ("--table", "--paths"),
        ("--table", "--null"),
    ):
        result = cli(*library.q("query", "a dog", *flags))
        one_line_error(result, 2, "one output format")


def test_query_needs_text_or_image(library: Library) -> None:
    one_line_error(cli(*library.q("query")), 2, "nothing to search for")
    one_line_error(cli(*library.q("query", "   ")), 2, "nothing to search for")
    one_line_error(cli(*library.q("query", "--not", "dog")), 2, "nothing to search for")


def test_query_deleted_file_not_returned_before_reindex(tmp_path: Path) -> None:
    # results are joined to live rows: a removed file disappears only after `index`,
    # but a query never fails because a file is gone
    pics = tmp_path / "pics"
    files = photos(pics, 3)
    index_json(pics)
    files[0].unlink()
    assert len(query_json("x")["results"]) == 3
    index_json(pics)
    assert str(files[0]) not in [r["path"] for r in query_json("x")["results"]]


def test_query_rebuilds_a_missing_ann_file(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    photos(pics, 3)
    index_json(pics)
    before = query_json("a cat")
    home = Path(os.environ["MMFIND_HOME"])
    ann_files = [p for p in home.iterdir() if p.suffix in (".hnsw", ".bin", ".ann")]
    assert ann_files, sorted(p.name for p in home.iterdir())
    for p in ann_files:
        p.unlink()
    result = ok("query", "a cat", "--json")
    assert "rebuilt" in result.stderr
    assert json.loads(result.stdout)["results"] == before["results"]
    assert ok("query", "a cat", "--json").stderr == ""  # saved again


# --- info ---------------------------------------------------------------------------------------


def test_info_plain(library: Library) -> None:
    result = ok("info", "--index", library.index)
    rows = dict(line.split("\t", 1) for line in result.stdout.splitlines())
    assert rows["index"] == str(library.index)
    assert rows["model"] == MODEL
    assert rows["dimensions"] == "64"
    assert rows["files"] == "6"
    assert rows["items"] == "6"
    assert rows["kinds"] == "image: 6 files, 6 items"
    assert rows["clip space"] == f"{MODEL} (64 dims): 6 items"
    assert rows["failed"] == "0"
    assert rows["roots"] == str(library.root)
    assert re.fullmatch(r"[\d.]+ KB \(catalog [\d.]+ KB, ANN [\d.]+ (K?B)\)", rows["size"])
    assert dt.datetime.fromisoformat(rows["last run"]).tzinfo is not None
    assert not ANSI.search(result.stdout)


def test_info_json(library: Library) -> None:
    started = time.time()
    document = json.loads(ok("info", "--index", library.index, "--json").stdout)
    for key in (
        "index", "model", "dim", "files", "items", "kinds", "failed", "roots", "size_bytes",
        "last_run",
    ):  # fmt: skip
        assert key in document, key
    assert document["index"] == str(library.index)
    assert document["model"] == MODEL
    assert document["dim"] == 64
    assert (document["files"], document["items"]) == (6, 6)
    assert document["kinds"] == {"image": 6}
    assert document["failed"] == 0
    assert document["roots"] == [str(library.root)]
    [ann_file] = library.index.glob("*.hnsw")
    assert document["ann_bytes"] == ann_file.stat().st_size > 0
    assert document["catalog_bytes"] >= (library.index / "catalog.sqlite3").stat().st_size > 0
    assert document["size_bytes"] == document["catalog_bytes"] + document["ann_bytes"]
    last = dt.datetime.fromisoformat(document["last_run"])
    assert last.tzinfo is not None
    assert started - 600 < last.timestamp() <= started + 1


def test_info_uses_mmfind_home(tmp_path: Path) -> None:
    photos(tmp_path / "pics", 2)
    index_json(tmp_path / "pics")
    document = json.loads(ok("info", "--json").stdout)
    assert document["index"] == os.environ["MMFIND_HOME"]
    assert (document["files"], document["roots"]) == (2, [str(tmp_path / "pics")])


def test_info_without_index(tmp_path: Path) -> None:
    for args in ((), ("--json",), ("--failures",)):
        one_line_error(cli("info", *args), 2, "no index at", os.environ["MMFIND_HOME"])
    assert not Path(os.environ["MMFIND_HOME"]).exists()  # looking creates nothing


def test_info_failures_when_none(library: Library) -> None:
    result = ok("info", "--index", library.index, "--failures")
    assert result.stdout == ""
    document = json.loads(ok("info", "--index", library.index, "--failures", "--json").stdout)
    assert document["failures"] == []


# --- names, colour ------------------------------------------------------------------------------


def test_non_utf8_file_name(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    photos(pics, 2)
    raw = os.fsencode(pics) + b"/caf\xe9.jpg"
    make_photo(tmp_path / "source.jpg", size=SIZE, seed=77)
    with open(raw, "wb") as out:
        out.write((tmp_path / "source.jpg").read_bytes())
    broken_raw = os.fsencode(pics) + b"/bad\xff.jpg"
    with open(broken_raw, "wb") as out:
        out.write(b"not a picture")
    assert index_json(pics) == counts(scanned=4, new=3, failed=1)

    shown = f"{pics}/caf\ufffd.jpg"
    probe = make_near_duplicate(tmp_path / "source.jpg", tmp_path / "probe.jpg")
    document = query_json("--image", probe)
    assert document["results"][0]["path"] == shown
    plain = ok("query", "--image", probe).stdout
    assert plain.splitlines()[0].endswith(f"\t{shown}")
    table = ok("query", "--image", probe, "--table").stdout
    assert shown in table
    # --paths and -0 hand the real bytes to the next program
    assert ok("query", "--image", probe, "--paths", "-n", "1").stdout_bytes == raw + b"\n"
    assert ok("query", "--image", probe, "-0", "-n", "1").stdout_bytes == raw + b"\0"
    # the failure list shows its name with a replacement character too
    [failure] = json.loads(ok("info", "--failures", "--json").stdout)["failures"]
    assert failure["path"] == f"{pics}/bad\ufffd.jpg"
    assert ok("info", "--failures").stdout.startswith(f"{pics}/bad\ufffd.jpg\t")
    # re-running is a no-op, and the file is found by name as a query image too
    assert index_json(pics) == counts(scanned=4, unchanged=3, failed=1)
    own = query_json("--image", os.fsdecode(raw))["results"]
    assert shown not in [r["path"] for r in own]
    assert len(own) == 2


def test_non_utf8_root_folder(tmp_path: Path) -> None:
    folder = os.fsencode(tmp_path) + b"/f\xf6lder"
    os.mkdir(folder)
    make_photo(os.fsdecode(folder + b"/x.jpg"), size=SIZE, seed=3)
    assert index_json(os.fsdecode(folder)) == counts(scanned=1, new=1)
    shown = f"{tmp_path}/f\ufffdlder"
    assert json.loads(ok("info", "--json").stdout)["roots"] == [shown]
    assert ok("info").stdout.count(shown) == 1
    assert ok("query", "x", "--paths").stdout_bytes == folder + b"/x.jpg\n"
    # the folder is still refreshed by a bare `index`
    assert index_json() == counts(scanned=1, unchanged=1)


@pytest.mark.parametrize(
    "args",
    [
        ("query", "a cat"),
        ("query", "a cat", "--table"),
        ("info",),
        ("info", "--failures"),
    ],
)
def test_no_color_means_no_escape_codes(library: Library, args: tuple[str, ...]) -> None:
    # FORCE_COLOR makes Rich treat the output as a terminal, so NO_COLOR is what must win
    forced = cli(*args, "--index", library.index, env={"FORCE_COLOR": "1"})
    assert forced.exit_code == 0
    result = cli(*args, "--index", library.index, env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert result.exit_code == 0
    assert not ANSI.search(result.stdout), repr(result.stdout[:200])
    assert not ANSI.search(result.stderr)
    if "--table" in args:
        assert ANSI.search(forced.stdout)  # the check above can see escape codes
        assert str(library.original) in result.stdout


def test_no_color_index_summary(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    photos(pics, 1)
    make_text(pics / "broken.jpg")
    result = cli(
        "index", pics, "--model", MODEL, "--workers", "0", env={"NO_COLOR": "1", "FORCE_COLOR": "1"}
    )
    assert result.exit_code == 0
    assert not ANSI.search(result.stdout)
    assert not ANSI.search(result.stderr)
    assert "1 file(s) failed" in result.stderr
