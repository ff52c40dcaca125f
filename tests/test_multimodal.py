"""Audio, video and text files in one index, searched together (tiny CLIP + tiny CLAP)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from audio_factory import (
    make_audio_with_pyav,
    make_noise,
    make_random_bytes,
    make_silence,
    make_speechlike,
    make_tone,
)
from media_factory import make_photo
from video_factory import default_codec, make_audio_only_mp4, make_video

from mmfind.encoders.audio_presets import load_audio_encoder
from mmfind.indexer import IndexOptions, IndexSummary, run_index
from mmfind.search import Query, run_query
from mmfind.store.catalog import Catalog


@pytest.fixture(scope="module")
def tiny_clap():  # type: ignore[no-untyped-def]
    return load_audio_encoder("test-tiny-clap", "cpu")


@pytest.fixture
def encoders(tiny_encoder: object, tiny_clap: object) -> dict[str, object]:
    return {"clip": tiny_encoder, "clap": tiny_clap}


def index(idx: Path, root: Path, encoders: dict[str, object], **kw: object) -> IndexSummary:
    options = IndexOptions(paths=[str(root)], model="test-tiny", workers=0, **kw)  # type: ignore[arg-type]
    return run_index(idx, options, encoders=encoders)


def items_of(idx: Path) -> dict[str, list[tuple[str, float | None, float | None, int | None]]]:
    """path -> [(space, start, end, line_start)] in item order."""
    catalog = Catalog.open(idx, create=False)
    try:
        rows = catalog.conn.execute(
            "SELECT f.path, i.space, i.start_s, i.end_s, i.line_start FROM items i "
            "JOIN files f ON f.id=i.file_id ORDER BY i.id"
        ).fetchall()
    finally:
        catalog.close()
    out: dict[str, list[tuple[str, float | None, float | None, int | None]]] = {}
    for path, space, start, end, line in rows:
        out.setdefault(Path(bytes(path).decode()).name, []).append((space, start, end, line))
    return out


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mixed") / "media"
    root.mkdir()
    make_photo(root / "photo.jpg", size=(160, 120), seed=1)
    make_tone(root / "tone.wav", seconds=12)
    make_noise(root / "rain.flac", seconds=4)
    make_speechlike(root / "talk.ogg", seconds=3)
    make_audio_with_pyav(root / "tune.mp3", seconds=2)
    make_audio_with_pyav(root / "voice.m4a", seconds=2, freq=660)
    make_audio_with_pyav(root / "call.opus", seconds=2, freq=880)
    for name in ("clip.mp4", "clip.mov", "clip.mkv", "clip.webm", "clip.avi"):
        if default_codec(name) is not None:
            make_video(root / name, seconds=5, fps=10, with_audio=name == "clip.mp4")
    (root / "notes.md").write_text("# Taxes\n\nTax return 2023 is due in April.\n")
    (root / "todo.txt").write_text("\n".join(f"line {i} buy milk and eggs" for i in range(40)))
    return root


def test_every_format_is_indexed_with_its_moments(
    tmp_path: Path, library: Path, encoders: dict[str, object]
) -> None:
    idx = tmp_path / "idx"
    summary = index(idx, library, encoders)
    videos = [p.name for p in library.glob("clip.*")]
    assert summary.failed == 0
    assert summary.new == 9 + len(videos)
    items = items_of(idx)
    # 10 s windows, no overlap: 12 s -> [0, 10) and [10, 12)
    assert items["tone.wav"] == [("clap", 0.0, 10.0, None), ("clap", 10.0, 12.0, None)]
    for name in ("rain.flac", "talk.ogg", "tune.mp3", "voice.m4a", "call.opus"):
        assert [space for space, *_ in items[name]] == ["clap"]
    # a frame every 2 s (timestamps to within a frame at 10 fps), plus the mp4's sound track
    for name in videos:
        frames = [(s, e) for space, s, e, _ in items[name] if space == "clip"]
        assert [round(s or 0, 1) for s, _ in frames] == [0.0, 2.0, 4.0]
        assert frames[-1][1] == pytest.approx(5.0, abs=0.15)
    assert [space for space, *_ in items["clip.mp4"]].count("clap") == 1
    # text: chunks in the image-text space with their first line
    assert {space for space, *_ in items["todo.txt"]} == {"clip"}
    assert len(items["todo.txt"]) > 1 and items["todo.txt"][0][3] == 1
    catalog = Catalog.open(idx, create=False)
    files_by_kind, _ = catalog.counts_by_kind()
    catalog.close()
    assert files_by_kind == {"image": 1, "audio": 6, "video": len(videos), "text": 2}


def test_identical_copy_of_a_clip_comes_first(
    tmp_path: Path, library: Path, encoders: dict[str, object]
) -> None:
    root = tmp_path / "sounds"
    shutil.copytree(library, root)
    shutil.copy(root / "talk.ogg", root / "talk-copy.ogg")
    idx = tmp_path / "idx"
    index(idx, root, encoders)
    response = run_query(idx, Query(audios=[str(root / "talk.ogg")], limit=3), encoders=encoders)
    assert Path(response.results[0].hit.path) == root / "talk-copy.ogg"
    assert response.results[0].score == pytest.approx(1.0, abs=1e-5)
    assert str(root / "talk.ogg") not in {r.hit.path for r in response.results}


@pytest.mark.parametrize("space", ["clip", "clap"])
def test_merge_ranks_a_planted_exact_match_first(
    tmp_path: Path, library: Path, encoders: dict[str, object], space: str
) -> None:
    idx = tmp_path / "idx"
    index(idx, library, encoders)
    text = "the sound of a doorbell ringing twice"
    vector = encoders[space].encode_texts([text])[0]  # type: ignore[attr-defined]
    catalog = Catalog.open(idx, create=False)
    with catalog.atomic():
        kind = "image" if space == "clip" else "audio"
        fid = catalog.insert_file(f"/planted/{space}", kind, 1, 1, b"p" * 16, None, None)
        catalog.insert_items(fid, space, vector.reshape(1, -1))
    catalog.close()
    response = run_query(idx, Query(text=text, limit=5), encoders=encoders)
    assert response.calibrated and set(response.spaces) == {"clip", "clap"}
    assert response.results[0].hit.path == f"/planted/{space}"
    assert response.results[0].cosine == pytest.approx(1.0, abs=1e-5)
    scores = [r.score for r in response.results]
    assert scores == sorted(scores, reverse=True)


def test_type_filter_and_all_moments(
    tmp_path: Path, library: Path, encoders: dict[str, object]
) -> None:
    idx = tmp_path / "idx"
    index(idx, library, encoders)
    audio_only = run_query(idx, Query(text="rain", kinds=["audio"], limit=50), encoders=encoders)
    assert audio_only.spaces == ["clap"] and not audio_only.calibrated
    assert {r.hit.kind for r in audio_only.results} == {"audio"}
    assert len(audio_only.results) == 6  # one per file
    moments = run_query(
        idx, Query(text="rain", kinds=["audio"], limit=50, all_moments=True), encoders=encoders
    )
    assert len(moments.results) == 7  # tone.wav has two windows
    text_only = run_query(idx, Query(text="milk", kinds=["text"], limit=50), encoders=encoders)
    assert {Path(r.hit.path).name for r in text_only.results} == {"todo.txt", "notes.md"}
    assert all(r.hit.line_start is not None for r in text_only.results)


def test_failures_are_recorded_per_kind(tmp_path: Path, encoders: dict[str, object]) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    make_random_bytes(root / "noise.wav")
    make_silence(root / "quiet.wav", seconds=2)
    (root / "fake.mp3").write_text("this is not audio at all")
    make_random_bytes(root / "broken.mp4", size=20_000, seed=2)
    make_audio_only_mp4(root / "sound-only.mp4")
    (root / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    (root / "empty.md").write_text("   \n")
    make_photo(root / "ok.jpg", size=(64, 48))
    idx = tmp_path / "idx"
    summary = index(idx, root, encoders)
    assert summary.new == 1 and summary.failed == 7
    catalog = Catalog.open(idx, create=False)
    reasons = {Path(f.path).name: (f.kind, f.reason) for f in catalog.failures()}
    catalog.close()
    assert reasons["quiet.wav"] == ("audio", "silent audio")
    assert reasons["sound-only.mp4"] == ("video", "no video stream")
    assert reasons["binary.txt"][0] == "text" and "binary" in reasons["binary.txt"][1]
    assert reasons["empty.md"] == ("text", "empty text")
    assert {kind for kind, _ in reasons.values()} == {"audio", "video", "text"}
    assert all(reason for _, reason in reasons.values())


def test_audio_model_unavailable_keeps_the_rest_and_retries(
    tmp_path: Path, library: Path, tiny_encoder: object
) -> None:
    idx = tmp_path / "idx"
    options = IndexOptions(
        paths=[str(library)],
        model="test-tiny",
        audio_model="nobody/no-such-clap-model",
        workers=0,
    )
    summary = run_index(idx, options, encoders={"clip": tiny_encoder})
    assert any("could not be loaded" in note for note in summary.notes)
    assert summary.failed == 6  # the audio files: retried next run
    assert summary.new >= 3  # the photo, the text files and the videos' frames
    catalog = Catalog.open(idx, create=False)
    assert catalog.space("clap") is None
    assert all(f.mtime_ns == -1 for f in catalog.failures())
    catalog.close()


def test_no_audio_space_for_an_audio_query(tmp_path: Path, encoders: dict[str, object]) -> None:
    root = tmp_path / "photos"
    make_photo(root / "a.jpg", size=(64, 48))
    probe = make_tone(tmp_path / "probe.wav", seconds=1)
    idx = tmp_path / "idx"
    index(idx, root, encoders)
    from mmfind.errors import InputError

    with pytest.raises(InputError, match="no audio"):
        run_query(idx, Query(audios=[str(probe)]), encoders=encoders)


def test_audio_vectors_are_deterministic(
    tmp_path: Path, library: Path, encoders: dict[str, object]
) -> None:
    index(tmp_path / "a", library, encoders)
    index(tmp_path / "b", library, encoders)

    def vectors(idx: Path) -> np.ndarray:
        catalog = Catalog.open(idx, create=False)
        try:
            return np.concatenate([v for _, v in catalog.iter_vectors("clap")])
        finally:
            catalog.close()

    np.testing.assert_array_equal(vectors(tmp_path / "a"), vectors(tmp_path / "b"))


def test_a_photo_query_finds_the_video_moment_that_looks_like_it(
    tmp_path: Path, encoders: dict[str, object]
) -> None:
    from media_factory import photo_image

    root = tmp_path / "media"
    root.mkdir()
    scene = photo_image((160, 120), seed=77)
    others = [photo_image((160, 120), seed=500 + i) for i in range(4)]
    frames = [others[0]] * 20 + [others[1]] * 20 + [scene] * 20 + [others[2]] * 20
    make_video(root / "holiday.mp4", fps=10, frames=frames)  # the scene shows from 4 s to 6 s
    for i, img in enumerate(others):
        img.save(root / f"other{i}.jpg", quality=90)
    probe = tmp_path / "probe.jpg"
    scene.resize((120, 90)).save(probe, quality=70)
    idx = tmp_path / "idx"
    index(idx, root, encoders)
    response = run_query(idx, Query(images=[str(probe)], limit=3), encoders=encoders)
    best = response.results[0]
    assert Path(best.hit.path).name == "holiday.mp4"
    assert best.hit.start == pytest.approx(4.0, abs=0.11)
    assert best.hit.kind == "video" and best.hit.space == "clip"
