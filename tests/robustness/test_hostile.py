"""Hostile and odd files: one corpus generated here, indexed through the CLI with a worker
process, each file's outcome checked (indexed correctly, or a recorded one-line failure with a
sensible reason), and the run completes with exit status 0."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import crashers
import numpy as np
import pytest
import soundfile as sf
from audio_factory import make_empty_wav, make_nan_wav, make_silence, make_tone, tone
from media_factory import (
    make_animated,
    make_cmyk,
    make_corrupt_exif_jpeg,
    make_empty,
    make_gradient,
    make_heic,
    make_multipage_tiff,
    make_oriented_jpeg,
    make_palette,
    make_photo,
    make_png_bomb,
    make_random_bytes,
    make_truncated,
)
from PIL import Image
from video_factory import default_codec, make_audio_only_mp4, make_video, make_zero_frame_video

import mmfind.decode
import mmfind.indexer
from mmfind.decode import DecodePool
from mmfind.media.image import ImageSpec, fit_image, prepare_image
from mmfind.store.catalog import Catalog
from robustness.helpers import MODEL, cli


@dataclass(frozen=True)
class Indexed:
    width: int | None = None
    height: int | None = None
    items: dict[str, int] | None = None  # space -> item count
    duration: float | None = None


@dataclass(frozen=True)
class Fails:
    reason: str  # a part of the recorded reason


Outcome = Indexed | Fails | Callable[[object], bool]


def _heic_with_a_broken_stream(path: Path) -> Path:
    """A HEIC whose container is intact but whose coded picture is garbage."""
    data = bytearray(make_heic(path.with_suffix(".tmp.heic"), size=(64, 48)).read_bytes())
    path.with_suffix(".tmp.heic").unlink()
    start = data.rindex(b"mdat") + 4 + 16  # keep the first bytes of the coded stream
    data[start:] = np.random.default_rng(3).bytes(len(data) - start)
    path.write_bytes(bytes(data))
    return path


def _hours_long_wav(path: Path, hours: float = 2.0) -> Path:
    """Two hours of a tone at 4 kHz, 8 bits: 29 MB that claim 7200 s."""
    second = tone(440.0, 1.0, 4_000, amplitude=0.5)
    with sf.SoundFile(path, "w", 4_000, 1, subtype="PCM_U8", format="WAV") as out:
        block = np.tile(second, 600)
        for _ in range(int(hours * 6)):
            out.write(block)
    return path


def _png_renamed_jpg(path: Path) -> Path:
    make_photo(path.with_suffix(".png"), size=(64, 48), seed=3)
    os.replace(path.with_suffix(".png"), path)
    return path


def build_corpus(root: Path) -> dict[str, Outcome]:
    """Write every hostile file and say what must become of it."""
    root.mkdir(parents=True)
    expect: dict[str, Outcome] = {}

    def add(name: str, outcome: Outcome, make: Callable[[Path], object]) -> None:
        make(root / name)
        expect[name] = outcome

    # -- images
    add("ok.jpg", Indexed(160, 120), lambda p: make_photo(p, size=(160, 120), seed=1))
    add("zero.jpg", Fails("empty file"), make_empty)
    source = make_photo(root / "source.jpg", size=(320, 240), seed=2)
    add("truncated.jpg", Fails("corrupt"), lambda p: make_truncated(source, p, 0.5))
    add("header-only.jpg", Fails("corrupt"), lambda p: make_truncated(source, p, 0.02))
    source.unlink()
    add("png-named.jpg", Indexed(64, 48), _png_renamed_jpg)
    add("random.jpg", Fails("not an image"), lambda p: make_random_bytes(p, 5000, seed=4))
    add("bomb.png", Fails("image too large"), make_png_bomb)
    # extreme aspect ratios: tiny files, under any pixel cap, huge once resized to fit
    add("needle.png", Indexed(1, 60_000), lambda p: Image.new("RGB", (1, 60_000), "red").save(p))
    add("ribbon.png", Indexed(70_000, 1), lambda p: Image.new("L", (70_000, 1), 99).save(p))
    add("animated.gif", Indexed(24, 16), make_animated)
    add("animated.webp", Indexed(24, 16), make_animated)
    add("pages.tif", Indexed(24, 16), make_multipage_tiff)
    add("gray16.png", Indexed(256, 4), lambda p: make_gradient(p, "uint16"))
    add("gray16-be.tif", Indexed(256, 4), lambda p: make_gradient(p, ">u2"))
    add("cmyk.jpg", Indexed(32, 24), make_cmyk)
    add("cmyk.tif", Indexed(32, 24), make_cmyk)
    add("palette-alpha.png", Indexed(32, 16), lambda p: make_palette(p, transparent=True))
    add("palette-alpha.gif", Indexed(32, 16), lambda p: make_palette(p, transparent=True))
    for o in range(1, 9):  # 5-8 turn the stored 64×32 picture on its side
        dims = (32, 64) if o >= 5 else (64, 32)
        add(f"orientation-{o}.jpg", Indexed(*dims), lambda p, o=o: make_oriented_jpeg(p, o))
    add("corrupt-exif.jpg", Indexed(64, 32), make_corrupt_exif_jpeg)
    add("good.heic", Indexed(64, 48), make_heic)
    add("random.heic", Fails("not an image"), lambda p: make_random_bytes(p, 5000, seed=5))
    add("cut.heic", Fails("truncated or corrupt"), lambda p: make_truncated(make_heic(p), p, 0.6))
    # garbage in the coded picture: decoders conceal it, or report it; either is fine
    add(
        "broken-stream.heic",
        lambda o: (
            (isinstance(o, Indexed) and (o.width, o.height) == (64, 48))
            or (isinstance(o, Fails) and "corrupt" in o.reason)
        ),
        _heic_with_a_broken_stream,
    )
    add("crash-decoder.jpg", Fails("the decoder crashed"), lambda p: make_photo(p, size=(64, 48)))
    # -- sound
    add("empty.wav", Fails("empty file"), make_empty)
    add("no-frames.wav", Fails("no audio samples"), make_empty_wav)
    add("nan.wav", Fails("NaN"), make_nan_wav)
    add("silent.flac", Fails("silent audio"), lambda p: make_silence(p, seconds=2))
    add("tone.wav", Indexed(items={"clap": 1}, duration=3.0), lambda p: make_tone(p, seconds=3))
    add("hours.wav", Indexed(items={"clap": 2}, duration=7200.0), _hours_long_wav)  # cap: 20 s
    # -- video
    add("no-frames.avi", Fails("video has no frames"), make_zero_frame_video)
    add("no-frames.mp4", Fails("no video stream"), make_zero_frame_video)
    add("no-frames.mkv", Fails("file ends before the first frame"), make_zero_frame_video)
    add("sound-only.mp4", Fails("no video stream"), make_audio_only_mp4)
    if default_codec("clip.mp4") is not None:
        add(
            "clip.mp4",
            Indexed(160, 120, items={"clip": 2, "clap": 1}),
            lambda p: make_video(p, seconds=3, fps=10, with_audio=True),
        )
    # -- text
    add("notes.txt", Indexed(items={"clip": 1}), lambda p: p.write_text("a note about cats\n"))
    add("binary.txt", Fails("binary"), lambda p: p.write_bytes(b"\x00\x01\x02" * 100))
    # -- not files at all: never opened (a FIFO would block a reader forever)
    os.mkfifo(root / "pipe.jpg")
    os.mkfifo(root / "pipe.wav")
    return expect


class CrashingPool(DecodePool):
    """The real pool, with a decoder that aborts the worker process on files named *crash*
    (as a native codec can); everything else decodes as usual."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["decode"] = crashers.abort_on_crash_name
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def _outcomes(index_dir: Path) -> dict[str, Indexed | Fails]:
    catalog = Catalog.open(index_dir, create=False)
    try:
        found: dict[str, Indexed | Fails] = {}
        for path, row in catalog.all_files().items():
            width, height, duration = catalog.file_dimensions(row.id)
            items = dict(
                catalog.conn.execute(
                    "SELECT space, count(*) FROM items WHERE file_id=? GROUP BY space", (row.id,)
                ).fetchall()
            )
            found[os.path.basename(path)] = Indexed(width, height, items, duration)
        for failure in catalog.failures():
            assert os.path.basename(failure.path) not in found, failure
            found[os.path.basename(failure.path)] = Fails(failure.reason)
        return found
    finally:
        catalog.close()


def _matches(expected: Outcome, actual: Indexed | Fails) -> bool:
    if callable(expected):
        return bool(expected(actual))
    if isinstance(expected, Fails):
        return isinstance(actual, Fails) and expected.reason in actual.reason
    if not isinstance(actual, Indexed):
        return False
    if expected.width is not None and (actual.width, actual.height) != (
        expected.width,
        expected.height,
    ):
        return False
    if expected.items is not None and actual.items != expected.items:
        return False
    return expected.duration is None or abs((actual.duration or 0) - expected.duration) < 0.5


def test_a_hostile_corpus_is_indexed_file_by_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, idx = tmp_path / "hostile", tmp_path / "index"
    expect = build_corpus(root)
    monkeypatch.setattr(mmfind.indexer, "DecodePool", CrashingPool)

    result = cli(
        "index", root, "--index", idx, "--model", MODEL, "--workers", "1",
        "--max-duration", "20", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    failed = sum(1 for e in expect.values() if isinstance(e, Fails))
    assert summary["scanned"] == len(expect)  # the FIFOs are not media files
    assert failed <= summary["failed"] <= failed + 1  # the broken HEIC may go either way

    actual = _outcomes(idx)
    assert sorted(actual) == sorted(expect)
    wrong = {n: actual[n] for n, e in expect.items() if not _matches(e, actual[n])}
    assert not wrong, wrong
    for outcome in actual.values():
        if isinstance(outcome, Fails):
            assert outcome.reason and "\n" not in outcome.reason and "\r" not in outcome.reason

    # Every failure is one line of `info --failures`; a second run retries none of them.
    listed = cli("info", "--failures", "--index", idx).stdout.splitlines()
    assert len(listed) == summary["failed"]
    assert all(line.count("\t") == 1 for line in listed)
    again = json.loads(
        cli("index", root, "--index", idx, "--model", MODEL, "--workers", "0", "--json").stdout
    )
    assert again["unchanged"] == summary["new"] and again["failed"] == summary["failed"]
    assert cli("doctor", "--index", idx).exit_code == 0


@pytest.mark.parametrize("size", [(1, 60_000), (60_000, 1), (3, 40_000), (100, 2_000)])
def test_an_extreme_aspect_ratio_costs_no_more_than_its_crop(
    size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1×60000 picture is 60 kP, far under any pixel cap; resized so that its short side fits
    a 224-pixel model it would be 224×13.4 M pixels (9 GB, a minute of work): only the crop may
    be resampled."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    resize = Image.Image.resize

    def bounded(self: Image.Image, to: tuple[int, int], *args: object, **kw: object) -> object:
        assert to[0] * to[1] <= 16 * 224 * 224, f"resize to {to}"
        return resize(self, to, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "resize", bounded)
    for spec in (ImageSpec((224, 224)), ImageSpec((224, 192)), ImageSpec((64, 64))):
        pixels = fit_image(img, spec)
        assert pixels.shape == (*spec.size, 3)


def test_the_crop_only_path_matches_the_full_resize_on_a_photo(tmp_path: Path) -> None:
    from media_factory import photo_image

    import mmfind.media.image as image

    picture = photo_image((60, 3000), seed=1)  # 50:1, over the full-resize limit at 224
    spec = ImageSpec((224, 224))
    cropped = fit_image(picture, spec)
    full = image._center_crop_or_pad(
        picture.resize((224, 11_200), Image.Resampling.BICUBIC), 224, 224, 0
    )
    assert np.abs(cropped.astype(int) - np.asarray(full, dtype=int)).max() <= 3
    path = tmp_path / "strip.png"
    Image.new("RGB", (1, 60_000), (200, 9, 9)).save(path)
    assert prepare_image(path, spec).pixels.reshape(-1, 3).tolist()[0] == [200, 9, 9]


def test_reasons_from_native_decoders_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libheif, FFmpeg and LibRaw messages may span lines; `info --failures` is one per file."""
    from mmfind.decode import DecodeConfig, DecodeTask, _init_worker, decode_one
    from mmfind.errors import MediaError

    def multi_line(*args: object) -> object:
        raise MediaError("bad data\nat offset 12\r\n  (libfoo)\n")

    monkeypatch.setattr(mmfind.decode, "_decode_image", multi_line)
    path = make_random_bytes(tmp_path / "x.jpg", 100)
    st = path.stat()
    # the worker globals are set in this process: monkeypatch restores them after the test
    monkeypatch.setattr(mmfind.decode, "_config", None)
    monkeypatch.setattr(mmfind.decode, "_known", frozenset())
    _init_worker(DecodeConfig(ImageSpec((64, 64))), frozenset())
    result = decode_one(DecodeTask(str(path), "image", st.st_size, st.st_mtime_ns))
    assert result.reason == "bad data at offset 12 (libfoo)"  # type: ignore[union-attr]
