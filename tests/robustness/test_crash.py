"""Crash safety: `mmfind index` killed with SIGKILL at random points, as a real process.

Each kill point: a fresh index, `python -m mmfind index` started for real, killed (SIGKILL, the
main process only, as the OOM killer does) at a point drawn from a seeded RNG, then:
- the catalog passes `PRAGMA quick_check` and `foreign_key_check`;
- its decode workers do not outlive it;
- `mmfind doctor` finds nothing a repair could not fix, and a query answers (rebuilding the ANN
  file if the run did not get to write it);
- a rerun completes, and the final state equals a clean run's: the same files, the same vectors
  per file and space, the same failures, an ANN file per space covering exactly the live items.

The kill point is a random delay counted from the moment the run reaches a randomly drawn amount
of committed work (0 files up to all of them and past, into the final ANN write): delays alone
would land most kills in the seconds a process spends importing torch, and where they land
would depend on the machine's speed.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from audio_factory import make_noise, make_tone
from media_factory import make_empty, make_photo, make_random_bytes
from video_factory import default_codec, make_video

from mmfind.doctor import PROBLEM, run_doctor
from mmfind.encoders.audio_presets import load_audio_encoder
from mmfind.indexer import IndexOptions, run_index
from mmfind.search import Query, run_query
from robustness.helpers import (
    MODEL,
    CatalogPoller,
    IndexState,
    assert_ann_current,
    assert_catalog_sound,
    index_state,
    kill_group,
    process_group_gone,
    spawn,
)

BATCH = 4  # small batches: many commits to land between
PROGRESS_SQL = "SELECT (SELECT count(*) FROM files) + (SELECT count(*) FROM failures)"


@dataclass
class Corpus:
    root: Path
    entries: int  # files that end as a file row or a failure
    reference: IndexState  # a clean run's final state
    encoders: dict[str, object]


def _make_corpus(root: Path, photos: int, multimodal: bool) -> int:
    for i in range(photos):
        sub = ("a", "b/c", "d")[i % 3]
        make_photo(root / sub / f"p{i:03d}.jpg", size=(96, 72), seed=i)
    shutil.copy(root / "a" / "p000.jpg", root / "copy-of-p000.jpg")  # reuses vectors
    (root / "notes.txt").write_text("the tax return is due in april\n" * 30)
    (root / "d" / "todo.md").write_text("# todo\n\nbuy milk and eggs\n")
    make_random_bytes(root / "broken.jpg", size=2000, seed=1)
    make_empty(root / "empty.png")
    entries = photos + 5
    if multimodal:
        make_tone(root / "s" / "tone.wav", seconds=12)  # two windows
        make_noise(root / "s" / "rain.flac", seconds=3)
        entries += 2
        if default_codec("clip.mp4") is not None:
            make_video(root / "v" / "clip.mp4", seconds=3, fps=10, with_audio=True)
            entries += 1
    return entries


def _options(root: Path) -> IndexOptions:
    return IndexOptions(paths=[str(root)], model=MODEL, workers=0, batch_size=BATCH, device="cpu")


def _corpus(
    factory: pytest.TempPathFactory, tiny_encoder: object, photos: int, multimodal: bool
) -> Corpus:
    base = factory.mktemp("crash-corpus")
    root = base / "media"
    entries = _make_corpus(root, photos, multimodal)
    encoders: dict[str, object] = {"clip": tiny_encoder}
    if multimodal:
        encoders["clap"] = load_audio_encoder("test-tiny-clap", "cpu")
    clean = base / "clean-index"
    run_index(clean, _options(root), encoders=encoders)
    return Corpus(root, entries, index_state(clean), encoders)


@pytest.fixture(scope="module")
def images_corpus(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: object) -> Corpus:
    return _corpus(tmp_path_factory, tiny_encoder, photos=36, multimodal=False)


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: object) -> Corpus:
    return _corpus(tmp_path_factory, tiny_encoder, photos=48, multimodal=True)


def _kill_at_random_point(corpus: Corpus, index_dir: Path, rng: np.random.Generator) -> str:
    """Start a real index run and SIGKILL it at a random point; says where it was killed."""
    target = int(rng.integers(0, corpus.entries + 3))  # beyond entries: in the final phase
    delay = float(rng.uniform(0.0, 0.25))
    proc = spawn(
        "index", corpus.root, "--index", index_dir, "--model", MODEL,
        "--workers", "1", "--batch-size", str(BATCH), "--json",
    )  # fmt: skip
    poller = CatalogPoller(index_dir)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None:
            assert time.monotonic() < deadline, (
                f"the index run did not reach {min(target, corpus.entries)} entries in 120 s"
            )
            done = poller.count(PROGRESS_SQL)
            if done is not None and done >= min(target, corpus.entries):
                break
            time.sleep(0.005)
        poller.close()
        time.sleep(delay)
        finished = proc.poll() is not None
        if not finished:
            os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        if finished:
            assert proc.returncode == 0, err.decode(errors="replace")
            return "completed"
        assert proc.returncode == -signal.SIGKILL
        assert process_group_gone(proc.pid), "decode workers outlived the killed run"
        return f"killed after {target} entries + {delay:.2f} s"
    finally:
        poller.close()
        kill_group(proc)


def _check_crashed(corpus: Corpus, index_dir: Path, outcome: str) -> None:
    """What a killed run leaves: a sound catalog, nothing doctor could not fix, and a query that
    answers from what was committed (the ANN file loads, or is rebuilt)."""
    assert_catalog_sound(index_dir)
    report = run_doctor(index_dir)
    unfixable = [c for c in report.checks if c.status == PROBLEM and not c.fix]
    assert not unfixable, (outcome, unfixable)
    committed = index_state(index_dir)
    if committed.vectors:
        response = run_query(index_dir, Query(text="a photo", limit=1000), encoders=corpus.encoders)
        assert {r.hit.path for r in response.results} == set(committed.vectors), outcome


def _check_rerun(corpus: Corpus, index_dir: Path) -> None:
    """The rerun completes the work, and ends where a clean run ends."""
    run_index(index_dir, _options(corpus.root), encoders=corpus.encoders)
    assert_catalog_sound(index_dir)
    index_state(index_dir).assert_equal(corpus.reference)
    assert_ann_current(index_dir)
    assert run_doctor(index_dir).healthy


def _kill_points(
    corpus: Corpus, tmp_path: Path, seed: int, points: int, *, chained: bool = False
) -> list[str]:
    """`points` kill points, each on a fresh index (or, chained, each on the index the last
    killed run left, so that resumed runs are killed too)."""
    rng = np.random.default_rng(seed)
    outcomes = []
    for i in range(points):
        index_dir = tmp_path / ("index" if chained else f"index-{i}")
        outcome = _kill_at_random_point(corpus, index_dir, rng)
        outcomes.append(outcome)
        if not (index_dir / "catalog.sqlite3").exists():
            continue  # killed before it created anything: nothing to check, nothing to lose
        _check_crashed(corpus, index_dir, outcome)
        if not chained:
            _check_rerun(corpus, index_dir)
    if chained:
        _check_rerun(corpus, tmp_path / "index")
    return outcomes


def test_killed_index_runs_leave_a_sound_catalog_and_rerun_to_the_clean_state(
    images_corpus: Corpus, tmp_path: Path
) -> None:
    outcomes = _kill_points(images_corpus, tmp_path, seed=20261123, points=3)
    assert sum(o.startswith("killed") for o in outcomes) >= 2, outcomes


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_twenty_random_kill_points_in_a_mixed_library(
    mixed_corpus: Corpus, tmp_path: Path, seed: int
) -> None:
    """4 × 5 = 20 kill points across photos, text, audio and video (both embedding spaces)."""
    outcomes = _kill_points(mixed_corpus, tmp_path, seed=seed, points=5)
    assert sum(o.startswith("killed") for o in outcomes) >= 3, outcomes


@pytest.mark.slow
def test_runs_killed_one_after_another_on_the_same_index(
    mixed_corpus: Corpus, tmp_path: Path
) -> None:
    """Each run resumes what the last killed one left, and is killed in turn; then a rerun."""
    outcomes = _kill_points(mixed_corpus, tmp_path, seed=99, points=5, chained=True)
    assert sum(o.startswith("killed") for o in outcomes) >= 3, outcomes
