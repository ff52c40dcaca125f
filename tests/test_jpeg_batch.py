"""Batched JPEG decoding (the GPU path of `mmfind index`), exercised on the CPU.

The same code runs on CUDA with nvJPEG; here torchvision's CPU decoder stands in for it. The
pixels are compared with the PIL path's (`prepare_image`), the reference every other test trusts.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from media_factory import (
    make_cmyk,
    make_corrupt_exif_jpeg,
    make_empty,
    make_near_duplicate,
    make_oriented_jpeg,
    make_photo,
    make_random_bytes,
    make_solid,
    make_truncated,
    photo_image,
)
from PIL import Image
from test_decode import ThreadedPool
from typer.testing import CliRunner

from mmfind.cli.app import app
from mmfind.decode import DecodeConfig, Decoded, DecodePool, DecodeTask, Failed
from mmfind.errors import UsageError
from mmfind.indexer import IndexOptions, IndexSummary, run_index
from mmfind.media import jpeg_batch
from mmfind.media.image import _TRANSPOSE, ImageSpec, prepare_image
from mmfind.media.jpeg_batch import JpegBatchDecoder
from mmfind.media.jpeg_probe import probe_jpeg
from mmfind.search import Query, run_query
from mmfind.store.catalog import Catalog

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's OpenAI mean/std
STD = (0.26862954, 0.26130258, 0.27577711)
SPEC = ImageSpec(size=(224, 224))
# Mean absolute difference, in normalised units (1 unit ≈ 67 grey levels), between the batched
# path and the PIL path on the same file. The two differ only by decoder rounding and by PIL's
# DCT-scaled "draft" decoding (≤ 0.01 measured); a horizontal flip, a 4-pixel crop shift, swapped
# channels or a missing normalisation are all ≥ 0.05 (see test_tolerance_catches_wrong_geometry).
TOLERANCE = 0.03


def reference(data: bytes, spec: ImageSpec = SPEC) -> torch.Tensor:
    """The PIL path's pixels for `data`, normalised: what encode_images would feed the model."""
    pixels = torch.from_numpy(prepare_image(data, spec).pixels).permute(2, 0, 1).float()
    mean = torch.tensor(MEAN).view(3, 1, 1) * 255
    std = torch.tensor(STD).view(3, 1, 1) * 255
    return (pixels - mean) / std


def batched(paths: list[Path], spec: ImageSpec = SPEC) -> jpeg_batch.JpegBatch:
    items = [probe_jpeg(p.read_bytes(), spec, max_pixels=10**9) for p in paths]
    assert all(item is not None for item in items), "the probe refused a plain JPEG"
    return JpegBatchDecoder(spec, MEAN, STD, "cpu").decode([i for i in items if i is not None])


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean())


# --- pixels ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        SPEC,
        ImageSpec(size=(256, 256), interpolation="bilinear"),
        ImageSpec(size=(224, 224), resize_mode="squash"),
        ImageSpec(size=(224, 224), resize_mode="longest", fill_color=128),
        ImageSpec(size=(192, 256)),  # shortest, not square: open_clip's ResizeKeepRatio
    ],
    ids=["shortest", "bilinear-256", "squash", "longest-pad", "keep-ratio"],
)
def test_batched_tensors_match_pil_path(tmp_path: Path, spec: ImageSpec) -> None:
    sizes = [(640, 480), (1632, 1224), (480, 640), (300, 200), (120, 160), (100, 100)]
    paths = [make_photo(tmp_path / f"{i}.jpg", size, seed=i) for i, size in enumerate(sizes)]
    result = batched(paths, spec)
    assert result.ok == list(range(len(paths))) and not result.rejected
    assert result.pixels.shape == (len(paths), 3, *spec.size)
    assert result.pixels.dtype == torch.float32  # fp16 only on CUDA
    for path, got in zip(paths, result.pixels, strict=True):
        assert diff(got, reference(path.read_bytes(), spec)) < TOLERANCE, path.name


def test_grey_and_progressive_jpegs_match_pil_path(tmp_path: Path) -> None:
    grey = tmp_path / "grey.jpg"
    photo_image((320, 240), seed=3).convert("L").save(grey, quality=90)
    progressive = tmp_path / "progressive.jpg"
    photo_image((320, 240), seed=4).save(progressive, quality=90, progressive=True)
    result = batched([grey, progressive])
    for path, got in zip([grey, progressive], result.pixels, strict=True):
        assert diff(got, reference(path.read_bytes())) < TOLERANCE, path.name


def test_tolerance_catches_wrong_geometry(tmp_path: Path) -> None:
    """The tolerance above is tight enough to fail a wrong orientation, crop, channel order or
    normalisation: each of these mistakes, made on purpose, exceeds it."""
    path = make_photo(tmp_path / "p.jpg", (640, 480), seed=7)
    got = batched([path]).pixels[0]
    ref = reference(path.read_bytes())
    assert diff(got, ref) < TOLERANCE
    mean = torch.tensor(MEAN).view(3, 1, 1) * 255
    std = torch.tensor(STD).view(3, 1, 1) * 255
    wrong = {
        "mirrored": got.flip(-1),
        "rotated": torch.rot90(got, 1, dims=(-2, -1)),
        "crop shifted 4 px": reference(_shifted_crop(path, 4)),
        "squashed, not cropped": batched(
            [path], ImageSpec(size=(224, 224), resize_mode="squash")
        ).pixels[0],
        "BGR": got.flip(0),
        "not normalised": got * std / 255 + mean / 255,  # 0..1, as ToTensor without Normalize
    }
    for name, tensor in wrong.items():
        assert diff(tensor, ref) > 2 * TOLERANCE, name


def _shifted_crop(path: Path, shift: int) -> bytes:
    """The same photo with columns cut off its left: its 224-pixel centre crop moves `shift`
    pixels sideways."""
    with Image.open(path) as img:
        out = io.BytesIO()
        cut = round(2 * shift * min(img.size) / 224)
        img.crop((cut, 0, img.width, img.height)).save(out, "PNG")
        return out.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_comes_out_upright(tmp_path: Path, orientation: int) -> None:
    path = make_oriented_jpeg(tmp_path / "o.jpg", orientation, size=(128, 64))
    spec = ImageSpec(size=(64, 64), resize_mode="squash")  # the whole picture, squashed
    item = probe_jpeg(path.read_bytes(), spec, max_pixels=10**9)
    assert item is not None and item.orientation == orientation
    got = JpegBatchDecoder(spec, (0, 0, 0), (1 / 255,) * 3, "cpu").decode([item]).pixels[0]
    with Image.open(path) as img:
        upright = img.convert("RGB")
        if orientation in _TRANSPOSE:
            upright = upright.transpose(_TRANSPOSE[orientation])
    want = torch.from_numpy(np.array(upright.resize((64, 64), Image.Resampling.BICUBIC)))
    assert diff(got, want.permute(2, 0, 1).float()) < 6  # grey levels: JPEG chroma blur only
    ref = reference(path.read_bytes(), spec)
    mean = torch.tensor(MEAN).view(3, 1, 1) * 255
    std = torch.tensor(STD).view(3, 1, 1) * 255
    assert diff((got - mean) / std, ref) < TOLERANCE


# --- which files take which path ---------------------------------------------------------------


def test_probe_leaves_unusual_files_to_the_pil_path(tmp_path: Path) -> None:
    photo = make_photo(tmp_path / "photo.jpg", (200, 150))
    cases = {
        "cmyk.jpg": make_cmyk(tmp_path / "cmyk.jpg"),
        "truncated.jpg": make_truncated(photo, tmp_path / "truncated.jpg"),
        "png-named.jpg": make_photo(tmp_path / "png-named.png", (64, 48)).rename(
            tmp_path / "png-named.jpg"
        ),
        "noise.jpg": make_random_bytes(tmp_path / "noise.jpg"),
        "trailing-bytes.jpg": _with_trailing_bytes(photo, tmp_path / "trailing-bytes.jpg"),
    }
    for name, path in cases.items():
        assert probe_jpeg(path.read_bytes(), SPEC, max_pixels=10**9) is None, name
    assert probe_jpeg(photo.read_bytes(), SPEC, max_pixels=150 * 200 - 1) is None  # a bomb
    thin = make_solid(tmp_path / "thin.jpg", size=(4000, 8))  # resized whole: 500x the input
    assert probe_jpeg(thin.read_bytes(), SPEC, max_pixels=10**9) is None
    bad_exif = make_corrupt_exif_jpeg(tmp_path / "bad-exif.jpg")
    item = probe_jpeg(bad_exif.read_bytes(), SPEC, max_pixels=10**9)
    assert item is not None and item.orientation == 1
    item = probe_jpeg(photo.read_bytes(), SPEC, max_pixels=10**9)
    assert item is not None and (item.width, item.height) == (200, 150)


def _with_trailing_bytes(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes() + b"trailer")
    return dst


def _bad_huffman(src: Path, dst: Path) -> Path:
    """A JPEG whose header and end marker are fine but whose Huffman table is garbage: both
    decoders refuse it."""
    data = src.read_bytes()
    i = data.index(b"\xff\xc4")
    dst.write_bytes(data[: i + 5] + b"\xff" * 16 + data[i + 21 :])
    return dst


def test_decoder_rejects_only_the_bad_item(tmp_path: Path) -> None:
    good = [make_photo(tmp_path / f"{i}.jpg", (160, 120), seed=i) for i in range(3)]
    bad = _bad_huffman(good[0], tmp_path / "bad.jpg")
    result = batched([good[0], bad, good[1], good[2]])
    assert result.ok == [0, 2, 3]
    assert list(result.rejected) == [1]
    assert result.rejected[1] == "batched JPEG decoder: Bogus Huffman table definition"
    for row, path in enumerate([good[0], good[1], good[2]]):
        assert diff(result.pixels[row], reference(path.read_bytes())) < TOLERANCE


def test_decoder_splits_calls_by_pixels(tmp_path: Path) -> None:
    paths = [make_photo(tmp_path / f"{i}.jpg", (160, 120), seed=i) for i in range(5)]
    items = [probe_jpeg(p.read_bytes(), SPEC, max_pixels=10**9) for p in paths]
    decoder = JpegBatchDecoder(SPEC, MEAN, STD, "cpu", max_call_pixels=2 * 160 * 120)
    assert decoder._chunks([i for i in items if i is not None]) == [[0, 1], [2, 3], [4]]
    result = decoder.decode([i for i in items if i is not None])
    whole = batched(paths)
    assert result.ok == whole.ok and torch.equal(result.pixels, whole.pixels)


def test_workers_pass_plain_jpegs_as_bytes_and_decode_the_rest(tmp_path: Path) -> None:
    photo = make_photo(tmp_path / "photo.jpg", (200, 150))
    files = {
        "photo.jpg": photo,
        "rotated.jpg": make_oriented_jpeg(tmp_path / "rotated.jpg", 6, size=(64, 32)),
        "cmyk.jpg": make_cmyk(tmp_path / "cmyk.jpg"),
        "png-named.jpg": make_photo(tmp_path / "x.png", (64, 48)).rename(tmp_path / "png.jpg"),
        "truncated.jpg": make_truncated(photo, tmp_path / "truncated.jpg"),
        "noise.jpg": make_random_bytes(tmp_path / "noise.jpg"),
        "empty.jpg": make_empty(tmp_path / "empty.jpg"),
    }
    tasks = []
    for path in files.values():
        st = path.stat()
        tasks.append(DecodeTask(str(path), "image", st.st_size, st.st_mtime_ns))
    config = DecodeConfig(SPEC)
    plain = {r.task.path: r for r in DecodePool(config, workers=0).run(tasks)}
    as_bytes = [DecodeTask(t.path, t.kind, t.size, t.mtime_ns, jpeg_bytes=True) for t in tasks]
    passed = {r.task.path: r for r in DecodePool(config, workers=0).run(as_bytes)}
    for name, path in files.items():
        a, b = plain[str(path)], passed[str(path)]
        assert type(a) is type(b), name
        if isinstance(a, Failed):  # failures are recorded exactly as without the GPU path
            assert isinstance(b, Failed) and (a.reason, a.retry) == (b.reason, b.retry), name
            continue
        assert isinstance(a, Decoded) and isinstance(b, Decoded)
        assert (a.digest, a.width, a.height) == (b.digest, b.width, b.height), name
        modality = b.payloads[0].modality
        assert modality == ("jpeg" if name in ("photo.jpg", "rotated.jpg") else "pixels"), name
    rotated = passed[str(files["rotated.jpg"])]
    assert isinstance(rotated, Decoded) and (rotated.width, rotated.height) == (32, 64)


def test_decode_pool_bounds_jpeg_bytes_in_flight() -> None:
    import threading
    import time

    lock = threading.Lock()
    huge_size = 10_000
    now = {"bytes": 0, "small_peak": 0, "huge_running": 0, "overlaps": 0, "huge_runs": 0}

    def slow(task: DecodeTask) -> Failed:
        with lock:
            if task.size == huge_size:
                now["huge_runs"] += 1
                now["overlaps"] += now["bytes"] > 0  # small tasks still in flight as it starts
                now["huge_running"] = 1
            else:
                now["overlaps"] += now["huge_running"]  # a small task started beside it
                now["bytes"] += task.size
                now["small_peak"] = max(now["small_peak"], now["bytes"])
        time.sleep(0.02)
        with lock:
            if task.size == huge_size:
                now["huge_running"] = 0
            else:
                now["bytes"] -= task.size
        return Failed(task, "ok")

    tasks = [DecodeTask(f"/x/{i}.jpg", "image", 100, 1, jpeg_bytes=True) for i in range(30)]
    huge = DecodeTask("/x/huge.jpg", "image", huge_size, 1, jpeg_bytes=True)  # alone is fine
    tasks.insert(15, huge)  # mid-stream: small tasks both before and after it
    with ThreadedPool(DecodeConfig(SPEC), workers=4, byte_budget=350, decode=slow) as pool:
        results = list(pool.run(tasks))
    assert len(results) == len(tasks)
    assert now["huge_runs"] == 1
    assert now["overlaps"] == 0, "the over-budget task ran beside other JPEG tasks"
    assert 200 <= now["small_peak"] <= 350, now["small_peak"]  # the budget binds, and is used


# --- index runs --------------------------------------------------------------------------------


def _index(idx: Path, root: Path, gpu_decode: str, workers: int = 0) -> IndexSummary:
    options = IndexOptions(
        paths=[str(root)],
        model="test-tiny",
        device="cpu",
        workers=workers,
        batch_size=4,
        gpu_decode=gpu_decode,
    )
    return run_index(idx, options)


def _contents(idx: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    catalog = Catalog.open(idx, create=False)
    try:
        vectors = {p: catalog.vectors_of_file(r.id) for p, r in catalog.all_files().items()}
        failures = {f.path: f.reason for f in catalog.failures()}
    finally:
        catalog.close()
    return vectors, failures


@pytest.fixture
def mixed_library(tmp_path: Path) -> Path:
    root = tmp_path / "library"
    root.mkdir()
    for i in range(9):
        make_photo(root / f"photo{i}.jpg", (240 + 16 * i, 180), seed=i)
    make_photo(root / "big.jpg", (1632, 1224), seed=20)
    make_oriented_jpeg(root / "rotated.jpg", 6, size=(128, 64))
    make_photo(root / "picture.png", (200, 150), seed=21)
    make_cmyk(root / "cmyk.jpg")
    make_truncated(root / "photo0.jpg", root / "truncated.jpg")
    make_photo(root / "really-a.png", (64, 48), seed=22).rename(root / "png-named.jpg")
    make_random_bytes(root / "noise.jpg")
    make_empty(root / "empty.jpg")
    _bad_huffman(root / "photo1.jpg", root / "bad-huffman.jpg")
    return root


def _same_index(off: Path, on: Path) -> None:
    vectors_off, failures_off = _contents(off)
    vectors_on, failures_on = _contents(on)
    assert failures_on == failures_off
    assert vectors_on.keys() == vectors_off.keys()
    for path, a in vectors_off.items():
        b = vectors_on[path]
        assert a.shape == b.shape
        assert float(np.sum(a * b, axis=-1).min()) > 0.99, path


def test_index_with_batched_decoding_matches_the_pil_path(
    tmp_path: Path, mixed_library: Path
) -> None:
    off = _index(tmp_path / "off", mixed_library, "off")
    on = _index(tmp_path / "on", mixed_library, "on", workers=1)
    assert on.counts() == off.counts()
    assert off.failed == 4 and off.new == 14
    assert on.failure_reasons == off.failure_reasons
    _same_index(tmp_path / "off", tmp_path / "on")
    assert any("bad-huffman.jpg" in note for note in on.notes)  # refused, then failed the PIL way
    assert not any("bad-huffman.jpg" in note for note in off.notes)

    # an image query finds the same file first in both
    from mmfind.encoders.presets import load_image_encoder

    encoder = load_image_encoder("test-tiny", "cpu")
    probe = tmp_path / "probe.jpg"
    for name in ("photo3.jpg", "big.jpg"):
        make_near_duplicate(mixed_library / name, probe, scale=0.5, quality=70)
        query = Query(images=[str(probe)], limit=3)
        tops = [
            run_query(idx, query, encoders={"clip": encoder}).results[0].hit.path
            for idx in (tmp_path / "off", tmp_path / "on")
        ]
        assert tops == [str(mixed_library / name)] * 2


def test_refused_jpeg_falls_back_to_the_pil_decoder(
    tmp_path: Path, mixed_library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JPEG the batched decoder refuses (as nvJPEG may a valid file) is decoded the PIL way."""
    refused_size = (mixed_library / "photo4.jpg").stat().st_size
    real: Callable[..., Any] = jpeg_batch.decode_jpeg

    def picky(data: Any, **kw: Any) -> Any:
        tensors = data if isinstance(data, list) else [data]
        if any(t.numel() == refused_size for t in tensors):
            raise RuntimeError("nvjpeg: unsupported JPEG")
        return real(data, **kw)

    monkeypatch.setattr(jpeg_batch, "decode_jpeg", picky)
    _index(tmp_path / "off", mixed_library, "off")
    on = _index(tmp_path / "on", mixed_library, "on")
    _same_index(tmp_path / "off", tmp_path / "on")
    [note] = on.notes  # photo4.jpg (decoded the PIL way) and bad-huffman.jpg (failed that way too)
    assert note.startswith("2 JPEG(s) were decoded on the CPU instead: the batched decoder refused")


def test_auto_leaves_cpu_runs_alone_and_bad_modes_are_refused(
    tmp_path: Path, mixed_library: Path
) -> None:
    from mmfind.gpu_decode import create_jpeg_decoder

    encoder = type("Enc", (), {"device": "cpu"})()
    assert create_jpeg_decoder(encoder, "auto") is None
    assert create_jpeg_decoder(encoder, "off") is None
    with pytest.raises(UsageError):
        _index(tmp_path / "idx", mixed_library, "sometimes")


def test_cli_hidden_option(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    make_photo(root / "a.jpg", (120, 90))
    args = ["index", str(root), "--index", str(tmp_path / "idx"), "--model", "test-tiny"]
    args += ["--device", "cpu", "--workers", "0", "--json"]
    env = {"COLUMNS": "200"}
    runner = CliRunner()
    result = runner.invoke(app, [*args, "--gpu-decode", "on"], env=env)
    assert result.exit_code == 0, result.output
    assert '"new": 1' in result.stdout
    result = runner.invoke(app, [*args, "--gpu-decode", "maybe"], env=env)
    assert result.exit_code == 2
    assert "--gpu-decode" not in runner.invoke(app, ["index", "--help"], env=env).stdout
    assert os.path.isdir(tmp_path / "idx")
