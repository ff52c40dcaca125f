"""mmfind.media.image: decoding any photo file into the pixels open_clip's eval transform makes."""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from pathlib import Path

import media_factory as mf
import numpy as np
import pytest
from PIL import Image, ImageOps, features

from mmfind.errors import MediaError
from mmfind.media.image import (
    DEFAULT_MAX_PIXELS,
    ImageSpec,
    PreparedImage,
    fit_image,
    open_image,
    prepare_image,
    to_rgb,
)

SPEC = ImageSpec((224, 224))


def rgb_at(img: Image.Image, x: float, y: float) -> np.ndarray:
    """The colour at a relative position (0–1) of an image, as int array."""
    return np.asarray(img)[int(y * img.height), int(x * img.width)].astype(int)


def assert_color(actual: np.ndarray, expected: tuple[int, ...], tol: int = 6) -> None:
    assert np.abs(actual - np.array(expected)).max() <= tol, (actual, expected)


def decode(path: Path, **kwargs: object) -> tuple[Image.Image, int, int]:
    img, w, h = open_image(path, **kwargs)  # type: ignore[arg-type]
    assert img.mode == "RGB"
    return img, w, h


# --- geometry: identical to open_clip ------------------------------------------------------------

GEOMETRY_SIZES = [(300, 120), (90, 260), (10, 7), (640, 480), (225, 301), (224, 224), (160, 224)]


@pytest.fixture(scope="module")
def geometry_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("geometry")
    return [
        mf.make_photo(d / f"{w}x{h}.png", (w, h), seed=i) for i, (w, h) in enumerate(GEOMETRY_SIZES)
    ]


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(224, 224), (160, 224)])
@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
def test_matches_open_clip_eval_transform(
    geometry_files: list[Path], resize_mode: str, size: tuple[int, int], interpolation: str
) -> None:
    transform_mod = pytest.importorskip("open_clip.transform")
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    fill = 128 if resize_mode == "longest" else 0
    spec = ImageSpec(size, resize_mode=resize_mode, interpolation=interpolation, fill_color=fill)
    reference = transform_mod.image_transform(
        size,
        is_train=False,
        mean=OPENAI_DATASET_MEAN,
        std=OPENAI_DATASET_STD,
        resize_mode=resize_mode,
        interpolation=interpolation,
        fill_color=fill,
    )
    mean = np.array(OPENAI_DATASET_MEAN, np.float32)[:, None, None]
    std = np.array(OPENAI_DATASET_STD, np.float32)[:, None, None]
    for path in geometry_files:
        prepared = prepare_image(path, spec)
        assert prepared.pixels.dtype == np.uint8 and prepared.pixels.shape == (*size, 3)
        ours = (prepared.pixels.transpose(2, 0, 1).astype(np.float32) / 255 - mean) / std
        with Image.open(path) as img:
            expected = reference(img).numpy()
            assert (prepared.width, prepared.height) == img.size
        np.testing.assert_allclose(ours, expected, atol=1e-5, err_msg=str(path.name))


def test_fit_image_accepts_any_mode() -> None:
    pixels = fit_image(Image.new("L", (50, 30), 77), ImageSpec((16, 16)))
    assert pixels.shape == (16, 16, 3) and (pixels == 77).all() and pixels.flags.writeable


def test_image_spec_rejects_nonsense() -> None:
    for bad in ({"resize_mode": "crop"}, {"interpolation": "nearest"}, {"size": (0, 224)}):
        with pytest.raises(ValueError):
            ImageSpec(**{"size": (224, 224), **bad})  # type: ignore[arg-type]


# --- JPEG draft ----------------------------------------------------------------------------------


def test_jpeg_draft_is_close_to_full_decode(tmp_path: Path) -> None:
    path = mf.make_photo(tmp_path / "big.jpg", (4000, 3000), seed=3)
    drafted, w, h = open_image(path, draft_to=(224, 224))
    assert (w, h) == (4000, 3000)
    assert min(drafted.size) >= 224 and drafted.size[0] < 4000  # decoded at a reduced scale
    prepared = prepare_image(path, SPEC)
    assert (prepared.width, prepared.height) == (4000, 3000)
    full, _, _ = open_image(path)
    assert full.size == (4000, 3000)
    diff = np.abs(prepared.pixels.astype(int) - fit_image(full, SPEC).astype(int))
    assert diff.mean() < 2.0, diff.mean()


def test_draft_size_is_meant_upright(tmp_path: Path) -> None:
    # stored 2000×500, orientation 6 → upright 500×2000; ask for at least 100×450 upright
    path = mf.make_oriented_jpeg(tmp_path / "tall.jpg", 6, size=(2000, 500))
    img, w, h = open_image(path, draft_to=(100, 450))
    assert (w, h) == (500, 2000)
    assert img.width >= 100 and img.height >= 450
    assert img.width < 500  # and it was drafted


def test_draft_ignored_for_other_formats(tmp_path: Path) -> None:
    img, w, h = open_image(mf.make_photo(tmp_path / "a.png", (600, 400)), draft_to=(50, 50))
    assert img.size == (w, h) == (600, 400)


# --- pixel modes ---------------------------------------------------------------------------------


def test_mode_1_and_l(tmp_path: Path) -> None:
    img, _, _ = decode(mf.make_bilevel_png(tmp_path / "bw.png"))
    assert_color(rgb_at(img, 0.25, 0.5), (0, 0, 0), 0)
    assert_color(rgb_at(img, 0.75, 0.5), (255, 255, 255), 0)
    img, _, _ = decode(mf.make_solid(tmp_path / "grey.png", 100, mode="L"))
    assert_color(rgb_at(img, 0.5, 0.5), (100, 100, 100), 0)


@pytest.mark.parametrize("ext", [".png", ".gif"])
def test_palette_with_and_without_transparency(tmp_path: Path, ext: str) -> None:
    img, _, _ = decode(mf.make_palette(tmp_path / f"opaque{ext}", transparent=False))
    assert_color(rgb_at(img, 0.25, 0.5), mf.RED, 0)
    assert_color(rgb_at(img, 0.75, 0.5), mf.GREEN, 0)
    img, _, _ = decode(mf.make_palette(tmp_path / f"transparent{ext}", transparent=True))
    assert_color(rgb_at(img, 0.25, 0.5), mf.RED, 0)
    assert_color(rgb_at(img, 0.75, 0.5), (255, 255, 255), 0)


@pytest.mark.parametrize(("mode", "opaque"), [("RGBA", (20, 40, 60)), ("LA", (40, 40, 40))])
def test_alpha_composited_on_white(tmp_path: Path, mode: str, opaque: tuple[int, ...]) -> None:
    img, _, _ = decode(mf.make_alpha_png(tmp_path / f"{mode}.png", mode))
    assert_color(rgb_at(img, 0.25, 0.5), opaque, 0)
    assert_color(rgb_at(img, 0.9, 0.5), (255, 255, 255), 0)
    assert_color(np.asarray(img)[8, 16].astype(int), (127, 127, 127), 1)  # half-transparent black


def test_premultiplied_alpha(tmp_path: Path) -> None:
    path = mf.make_premultiplied_gray_tiff(tmp_path / "La.tif", grey=100, alpha=128)
    with Image.open(path) as raw:
        assert raw.mode == "La"
    img, _, _ = decode(path)
    assert_color(rgb_at(img, 0.5, 0.5), (177, 177, 177), 2)  # 100·a + 255·(1 − a), a = 128/255
    rgba = Image.new("RGBa", (4, 4), (50, 0, 0, 128))  # premultiplied: straight red ≈ 100
    assert_color(rgb_at(to_rgb(rgba), 0.5, 0.5), (177, 127, 127), 2)


@pytest.mark.parametrize("ext", [".jpg", ".tif"])
def test_cmyk(tmp_path: Path, ext: str) -> None:
    path = mf.make_cmyk(tmp_path / f"cyan{ext}")
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
        if ext == ".jpg":
            assert "adobe" in raw.info  # Adobe APP14: PIL stores and reads it inverted
    img, _, _ = decode(path)
    assert_color(rgb_at(img, 0.5, 0.5), (0, 255, 255))


def test_ycbcr_and_lab(tmp_path: Path) -> None:
    for path, mode in [
        (mf.make_ycbcr_tiff(tmp_path / "ycc.tif", mf.RED), "YCbCr"),
        (mf.make_lab_tiff(tmp_path / "lab.tif", mf.RED), "LAB"),
    ]:
        with Image.open(path) as raw:
            assert raw.mode == mode
        img, _, _ = decode(path)
        assert_color(rgb_at(img, 0.5, 0.5), mf.RED, 8)


@pytest.mark.parametrize(
    ("name", "dtype", "mode"),
    [
        ("g16.png", "uint16", "I;16"),
        ("g16le.tif", "<u2", "I;16"),
        ("g16be.tif", ">u2", "I;16B"),
        ("g32.tif", "int32", "I"),
        ("gf.tif", "float32", "F"),
    ],
)
def test_high_bit_depth_keeps_its_range(tmp_path: Path, name: str, dtype: str, mode: str) -> None:
    path = mf.make_gradient(tmp_path / name, dtype, width=256)
    with Image.open(path) as raw:
        assert raw.mode == mode
    img, _, _ = decode(path)
    row = np.asarray(img)[1, :, 0].astype(int)
    np.testing.assert_array_equal(row, np.arange(256))  # the ramp 0..top becomes 0..255


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I;16N", "I", "F"])
def test_high_bit_modes_in_memory(mode: str) -> None:
    img = Image.new(mode, (4, 2), 0)
    img.putpixel((3, 0), 1000)
    img.putpixel((1, 1), 500)
    out = np.asarray(to_rgb(img))
    assert out[0, 3].tolist() == [255, 255, 255]
    assert out[1, 1].tolist() == [128, 128, 128]
    assert out[0, 0].tolist() == [0, 0, 0]


def test_float_nan_and_constant_images() -> None:
    img = Image.fromarray(np.array([[np.nan, 0.5], [np.inf, 1.0]], np.float32))
    assert np.asarray(to_rgb(img))[:, :, 0].tolist() == [[0, 128], [0, 255]]
    assert np.asarray(to_rgb(Image.new("I;16", (2, 2), 0))).max() == 0


# --- EXIF orientation ----------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(tmp_path: Path, orientation: int) -> None:
    path = mf.make_oriented_jpeg(tmp_path / f"o{orientation}.jpg", orientation, size=(64, 32))
    img, w, h = decode(path)
    assert (w, h) == ((32, 64) if orientation >= 5 else (64, 32))
    assert img.size == (w, h)
    with Image.open(path) as raw:
        expected = ImageOps.exif_transpose(raw).convert("RGB")
    for x in (0.25, 0.75):
        for y in (0.25, 0.75):
            assert_color(rgb_at(img, x, y), tuple(rgb_at(expected, x, y)), 10)
    tl, tr, bl, br = mf.QUADRANT_COLORS
    expected_top_left = {1: tl, 2: tr, 3: br, 4: bl, 5: tl, 6: bl, 7: br, 8: tr}[orientation]
    assert_color(rgb_at(img, 0.25, 0.25), expected_top_left, 10)


@pytest.mark.filterwarnings("ignore:.*corrupt EXIF:UserWarning")  # pytest resets our filter
def test_corrupt_exif_still_decodes(tmp_path: Path) -> None:
    path = mf.make_corrupt_exif_jpeg(tmp_path / "badexif.jpg", size=(64, 32))
    img, w, h = decode(path)
    assert (w, h) == img.size == (64, 32)
    assert_color(rgb_at(img, 0.25, 0.25), mf.RED, 10)


@pytest.mark.parametrize("value", [0, 9, 65535])
def test_invalid_orientation_value_is_ignored(tmp_path: Path, value: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = value
    path = tmp_path / "weird.jpg"
    mf.quadrants().save(path, exif=exif)
    img, w, h = decode(path)
    assert (w, h) == (64, 32)
    assert_color(rgb_at(img, 0.25, 0.25), mf.RED, 10)


# --- containers and formats ----------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".gif", ".webp", ".png"])
def test_animation_gives_first_frame(tmp_path: Path, ext: str) -> None:
    img, w, h = decode(mf.make_animated(tmp_path / f"anim{ext}"))
    assert (w, h) == (24, 16)
    assert_color(rgb_at(img, 0.5, 0.5), mf.RED, 4)


def test_multipage_tiff_gives_first_page(tmp_path: Path) -> None:
    img, w, h = decode(mf.make_multipage_tiff(tmp_path / "pages.tif"))
    assert (w, h) == (24, 16)
    assert_color(rgb_at(img, 0.5, 0.5), mf.RED, 0)


@pytest.mark.parametrize("ext", [".bmp", ".webp", ".tiff", ".jpe"])
def test_other_formats(tmp_path: Path, ext: str) -> None:
    _img, w, h = decode(mf.make_photo(tmp_path / f"p{ext}", (120, 80)))
    assert (w, h) == (120, 80)


@pytest.mark.parametrize("ext", [".heic", ".avif"])
def test_heif_family(tmp_path: Path, ext: str) -> None:
    if ext == ".avif" and not features.check("avif"):
        pytest.skip("this Pillow cannot write AVIF")
    path = mf.make_heic(tmp_path / f"p{ext}", (64, 48), seed=5)
    img, w, h = decode(path)
    assert (w, h) == (64, 48)
    source = np.asarray(mf.photo_image((64, 48), seed=5)).astype(int)
    assert np.abs(np.asarray(img).astype(int) - source).mean() < 12
    assert prepare_image(path.read_bytes(), SPEC).pixels.shape == (224, 224, 3)


def test_wrong_extension_still_decodes(tmp_path: Path) -> None:
    png = mf.make_solid(tmp_path / "x.png", mf.BLUE)
    lying = tmp_path / "actually_png.jpg"
    lying.write_bytes(png.read_bytes())
    img, _, _ = decode(lying)
    assert_color(rgb_at(img, 0.5, 0.5), mf.BLUE, 0)


def test_bytes_and_path_agree(tmp_path: Path) -> None:
    path = mf.make_photo(tmp_path / "p.jpg", (800, 600), seed=9)
    a = prepare_image(path, SPEC)
    b = prepare_image(path.read_bytes(), SPEC)
    c = prepare_image(str(path), SPEC)
    assert isinstance(a, PreparedImage)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    np.testing.assert_array_equal(a.pixels, c.pixels)


# --- failures ------------------------------------------------------------------------------------


def reason(source: object, **kwargs: object) -> str:
    with pytest.raises(MediaError) as info:
        open_image(source, **kwargs)  # type: ignore[arg-type]
    assert type(info.value) is MediaError
    return info.value.reason


def test_empty_file(tmp_path: Path) -> None:
    assert reason(mf.make_empty(tmp_path / "empty.jpg")) == "empty file"
    assert reason(b"") == "empty file"
    assert reason(mf.make_empty(tmp_path / "empty.dng")) == "empty file"


def test_not_an_image(tmp_path: Path) -> None:
    expected = "not an image (unrecognised format)"
    assert reason(mf.make_random_bytes(tmp_path / "noise.jpg")) == expected
    assert reason(mf.make_text(tmp_path / "notes.jpg")) == expected
    assert reason(b"hello") == expected


def test_missing_file(tmp_path: Path) -> None:
    assert reason(tmp_path / "gone.jpg").startswith("cannot read file: ")
    assert reason(tmp_path).startswith("cannot read file: ")  # a directory


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".gif", ".tif"])
def test_truncated(tmp_path: Path, ext: str) -> None:
    full = mf.make_photo(tmp_path / f"full{ext}", (300, 200), seed=4)
    cut = mf.make_truncated(full, tmp_path / f"cut{ext}", keep=0.5)
    assert reason(cut).startswith("truncated or corrupt image: ")
    assert reason(cut, draft_to=(50, 50)).startswith("truncated or corrupt image: ")


def test_pixel_cap_refuses_bomb_without_decoding(tmp_path: Path) -> None:
    bomb = mf.make_png_bomb(tmp_path / "bomb.png", 50_000, 50_000)
    assert bomb.stat().st_size < 200
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        message = reason(bomb)
        with pytest.raises(MediaError):
            prepare_image(bomb.read_bytes(), SPEC)
    assert time.perf_counter() - start < 0.5
    assert message == "image too large: 50000×50000 = 2500 MP exceeds the pixel cap of 200 MP"


def test_pixel_cap_is_configurable(tmp_path: Path) -> None:
    path = mf.make_photo(tmp_path / "p.jpg", (400, 300))
    assert reason(path, max_pixels=100_000).startswith("image too large: 400×300 = 0.12 MP")
    assert open_image(path, max_pixels=120_000)[1:] == (400, 300)
    assert Image.MAX_IMAGE_PIXELS is None  # PIL's own bomb check is off: ours is the only one
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL would warn above 89 MP, and raise above 179 MP
        bomb = mf.make_png_bomb(tmp_path / "b.png", 20_000, 10_000)
        assert reason(bomb, max_pixels=150_000_000).startswith("image too large: 20000×10000")
    assert DEFAULT_MAX_PIXELS == 200_000_000


# --- RAW -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("preview", ["jpeg", "bitmap"])
def test_raw_embedded_preview(tmp_path: Path, preview: str) -> None:
    path = mf.make_dng(tmp_path / f"{preview}.dng", size=(64, 48), preview=preview)
    img, w, h = decode(path)
    assert (w, h) == (64, 48)  # the sensor's size, not the preview's
    assert img.size == (32, 24)
    assert_color(rgb_at(img, 0.25, 0.25), mf.RED, 8)
    assert_color(rgb_at(img, 0.75, 0.75), mf.YELLOW, 8)
    prepared = prepare_image(path.read_bytes(), SPEC, name="IMG_0001.DNG")
    assert (prepared.width, prepared.height) == (64, 48)
    assert_color(prepared.pixels[50, 40].astype(int), mf.RED, 8)


@pytest.mark.parametrize("preview", ["jpeg", "bitmap", None])
def test_raw_orientation(tmp_path: Path, preview: str | None) -> None:
    path = mf.make_dng(tmp_path / "rot.dng", size=(64, 48), preview=preview, orientation=6)
    img, w, h = decode(path)
    assert (w, h) == (48, 64)
    assert img.width < img.height
    if preview is None:  # developed mosaic: the bright top-left quadrant turns to top-right
        assert rgb_at(img, 0.75, 0.25).mean() > 2 * rgb_at(img, 0.25, 0.25).mean()
    else:
        assert_color(rgb_at(img, 0.25, 0.25), mf.BLUE, 8)  # bottom-left → top-left
        assert_color(rgb_at(img, 0.75, 0.25), mf.RED, 8)


def test_raw_without_preview_is_developed(tmp_path: Path) -> None:
    path = mf.make_dng(tmp_path / "bare.dng", size=(64, 48), preview=None)
    img, w, h = decode(path)
    assert (w, h) == (64, 48) and img.size == (32, 24)  # half-size development
    assert rgb_at(img, 0.25, 0.25).mean() > 2 * rgb_at(img, 0.75, 0.75).mean()
    assert reason(path, max_pixels=1000).startswith("image too large: 64×48")
    cut = mf.make_truncated(path, tmp_path / "cut.dng", keep=0.6)
    assert reason(cut).startswith("RAW file has no usable preview and cannot be developed: ")


@pytest.mark.parametrize("ext", [".dng", ".cr2", ".nef"])
def test_corrupt_raw(tmp_path: Path, ext: str) -> None:
    assert reason(mf.make_random_bytes(tmp_path / f"junk{ext}")).startswith("unreadable RAW file: ")
    assert reason(mf.make_text(tmp_path / f"text{ext}")).startswith("unreadable RAW file: ")
    cut = mf.make_truncated(mf.make_dng(tmp_path / "ok.dng"), tmp_path / f"cut{ext}", keep=0.3)
    with pytest.raises(MediaError):
        open_image(cut)


def test_jpeg_with_raw_extension_still_decodes(tmp_path: Path) -> None:
    jpeg = mf.make_photo(tmp_path / "p.jpg", (200, 100))
    _img, w, h = open_image(jpeg.read_bytes(), name="odd.cr2")
    assert (w, h) == (200, 100)


def test_module_stays_light_and_quiet(tmp_path: Path) -> None:
    """No torch in decode workers, and nothing on stderr even for a file PIL warns about."""
    path = mf.make_corrupt_exif_jpeg(tmp_path / "badexif.jpg")
    code = (
        "import sys, mmfind.media.image as m; "
        f"m.prepare_image({str(path)!r}, m.ImageSpec((32, 32))); "
        "sys.exit('torch' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True)
    assert run.returncode == 0 and run.stderr == b"" and run.stdout == b"", run.stderr
