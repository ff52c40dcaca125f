"""Generators of real test media files, for any test: `make_xxx(path, ...) -> Path`.

Everything is deterministic (seeded) and small unless asked otherwise. Images are written with PIL,
pillow_heif and tifffile; RAW files are minimal DNGs that LibRaw (rawpy) really opens.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pillow_heif
import tifffile
from PIL import Image, ImageCms, ImageDraw, ImageFilter

pillow_heif.register_heif_opener()

RGB = tuple[int, int, int]
RED: RGB = (255, 0, 0)
GREEN: RGB = (0, 255, 0)
BLUE: RGB = (0, 0, 255)
YELLOW: RGB = (255, 255, 0)
# The four quadrant colours of `quadrants()`: top-left, top-right, bottom-left, bottom-right.
QUADRANT_COLORS: tuple[RGB, RGB, RGB, RGB] = (RED, GREEN, BLUE, YELLOW)


def _save(img: Image.Image, path: str | Path, **params: object) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **params)
    return path


# --- photos --------------------------------------------------------------------------------------


def photo_image(size: tuple[int, int] = (640, 480), seed: int = 0) -> Image.Image:
    """A photo-like RGB picture: smooth gradients, blurred shapes, sensor-like noise."""
    w, h = size
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    base = np.empty((h, w, 3), np.float32)
    for c in range(3):
        fx, fy, px, py = rng.uniform(0.3, 2.5, 4)
        base[..., c] = rng.uniform(70, 180) + 55 * np.sin(6.28 * (fx * x + px))
        base[..., c] += 45 * np.cos(6.28 * (fy * y + py))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(14):
        x0, x1 = sorted(rng.integers(0, w, 2).tolist())
        y0, y1 = sorted(rng.integers(0, h, 2).tolist())
        fill = tuple(rng.integers(0, 256, 3).tolist())
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1 + 1, y1 + 1), fill=fill)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(max(1.0, min(w, h) / 400)))
    noise = rng.integers(-6, 7, size=(h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8))


def make_photo(
    path: str | Path, size: tuple[int, int] = (640, 480), seed: int = 0, quality: int = 90
) -> Path:
    """A photo-like JPEG (or whatever format the extension names), deterministic by seed."""
    return _save(photo_image(size, seed), path, quality=quality)


def make_near_duplicate(
    src: str | Path, dst: str | Path, scale: float = 0.5, quality: int = 70
) -> Path:
    """A resized, re-compressed copy of `src` (what a messaging app does to a photo)."""
    with Image.open(src) as img:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        return _save(
            img.convert("RGB").resize(size, Image.Resampling.LANCZOS), dst, quality=quality
        )


def make_solid(
    path: str | Path, color: object = RED, size: tuple[int, int] = (32, 24), mode: str = "RGB"
) -> Path:
    """One colour in any PIL mode, saved in the format the extension names."""
    return _save(Image.new(mode, size, color), path)


# --- orientation ---------------------------------------------------------------------------------


def quadrants(size: tuple[int, int] = (64, 32)) -> Image.Image:
    """An asymmetric picture: four solid quadrants in QUADRANT_COLORS order."""
    w, h = size
    img = Image.new("RGB", size)
    boxes = [
        (0, 0, w // 2, h // 2),
        (w // 2, 0, w, h // 2),
        (0, h // 2, w // 2, h),
        (w // 2, h // 2, w, h),
    ]
    for box, color in zip(boxes, QUADRANT_COLORS, strict=True):
        img.paste(color, box)
    return img


def make_oriented_jpeg(
    path: str | Path, orientation: int, size: tuple[int, int] = (64, 32)
) -> Path:
    """`quadrants(size)` stored as is, with EXIF orientation `orientation` (1–8)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(quadrants(size), path, exif=exif, quality=95)


def make_corrupt_exif_jpeg(path: str | Path, size: tuple[int, int] = (64, 32)) -> Path:
    """A JPEG whose APP1 EXIF block is garbage after a valid-looking TIFF header."""
    garbage = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + bytes(range(256)) * 4
    return _save(quadrants(size), path, exif=garbage, quality=95)


# --- pixel modes ---------------------------------------------------------------------------------


def make_bilevel_png(path: str | Path, size: tuple[int, int] = (32, 16)) -> Path:
    """Mode "1": left half black, right half white."""
    img = Image.new("1", size, 0)
    img.paste(1, (size[0] // 2, 0, size[0], size[1]))
    return _save(img, path)


def make_palette(path: str | Path, transparent: bool, size: tuple[int, int] = (32, 16)) -> Path:
    """Mode "P" (PNG or GIF by extension): left half index 0 = red, right half index 1 = green;
    index 1 is the transparent colour when `transparent`."""
    img = Image.new("P", size, 0)
    img.putpalette([*RED, *GREEN] + [0, 0, 0] * 254)
    img.paste(1, (size[0] // 2, 0, size[0], size[1]))
    return _save(img, path, **({"transparency": 1} if transparent else {}))


def make_alpha_png(path: str | Path, mode: str = "RGBA", size: tuple[int, int] = (32, 16)) -> Path:
    """Mode "RGBA" or "LA": left half opaque dark (RGB (20, 40, 60) or grey 40), right half fully
    transparent black (→ white); one middle column half transparent black (alpha 128)."""
    color = (20, 40, 60, 255) if mode == "RGBA" else (40, 255)
    img = Image.new(mode, size, color)
    img.paste((0,) * len(color), (size[0] // 2, 0, size[0], size[1]))
    img.paste((0,) * (len(color) - 1) + (128,), (size[0] // 2, 0, size[0] // 2 + 1, size[1]))
    return _save(img, path)


def make_premultiplied_gray_tiff(path: str | Path, grey: int = 100, alpha: int = 128) -> Path:
    """Mode "La" (grey with associated alpha): every pixel is (grey, alpha), premultiplied."""
    data = np.empty((8, 8, 2), np.uint8)
    data[..., 0], data[..., 1] = grey * alpha // 255, alpha
    tifffile.imwrite(path, data, photometric="minisblack", extrasamples=["ASSOCALPHA"])
    return Path(path)


def make_cmyk(path: str | Path, cmyk: tuple[int, int, int, int] = (255, 0, 0, 0)) -> Path:
    """Solid CMYK, default pure cyan. As JPEG, PIL writes Adobe-inverted CMYK (APP14 marker)."""
    return _save(Image.new("CMYK", (32, 24), cmyk), path, quality=95)


def make_ycbcr_tiff(path: str | Path, rgb: RGB = RED) -> Path:
    """Mode "YCbCr" TIFF of a solid colour."""
    return _save(Image.new("RGB", (16, 16), rgb).convert("YCbCr"), path)


def make_lab_tiff(path: str | Path, rgb: RGB = RED) -> Path:
    """Mode "LAB" (CIELab) TIFF of a solid sRGB colour, converted with littlecms."""
    lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
    transform = ImageCms.buildTransform(srgb, lab, "RGB", "LAB")
    return _save(transform.apply(Image.new("RGB", (16, 16), rgb)), path)


def gradient(dtype: str = "uint16", width: int = 256, height: int = 4) -> np.ndarray:
    """A horizontal ramp from 0 to the dtype's top (1.0 for floats; 2**20 for 32-bit ints)."""
    top = {"uint16": 65535, "int32": 1 << 20, "float32": 1.0}[np.dtype(dtype).name]
    ramp = np.linspace(0, top, width)
    return np.tile(ramp, (height, 1)).astype(dtype)


def make_gradient(path: str | Path, dtype: str = "uint16", width: int = 256) -> Path:
    """A one-channel high-bit ramp: PNG → mode I;16; TIFF ("<u2" I;16, ">u2" I;16B, int32 I,
    float32 F)."""
    path = Path(path)
    data = gradient(dtype, width)
    if path.suffix.lower() == ".png":
        return _save(Image.fromarray(data), path)
    byteorder = ">" if np.dtype(dtype).byteorder == ">" else "<"
    tifffile.imwrite(path, data, byteorder=byteorder, photometric="minisblack")
    return path


# --- containers ----------------------------------------------------------------------------------


def make_animated(path: str | Path, colors: Sequence[RGB] = (RED, GREEN, BLUE)) -> Path:
    """An animated GIF/WebP/PNG (by extension), one solid frame per colour."""
    frames = [Image.new("RGB", (24, 16), color) for color in colors]
    return _save(frames[0], path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def make_multipage_tiff(path: str | Path, colors: Sequence[RGB] = (RED, GREEN, BLUE)) -> Path:
    """A multi-page TIFF, one solid page per colour (pages of different sizes)."""
    pages = [Image.new("RGB", (24 + 8 * i, 16), color) for i, color in enumerate(colors)]
    return _save(pages[0], path, save_all=True, append_images=pages[1:])


def make_heic(path: str | Path, size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    """A HEIC (or AVIF, by extension) of `photo_image`."""
    return _save(photo_image(size, seed), path, quality=90)


# --- broken files --------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_png_bomb(path: str | Path, width: int = 50_000, height: int = 50_000) -> Path:
    """A tiny PNG whose IHDR declares width×height RGB pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
    path = Path(path)
    path.write_bytes(data + _png_chunk(b"IEND", b""))
    return path


def make_truncated(src: str | Path, dst: str | Path, keep: float = 0.5) -> Path:
    """The first `keep` fraction of `src`'s bytes."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def make_random_bytes(path: str | Path, size: int = 4096, seed: int = 0) -> Path:
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).bytes(size))
    return path


def make_text(path: str | Path) -> Path:
    path = Path(path)
    path.write_text("this is not a picture\n" * 20)
    return path


def make_empty(path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


# --- RAW -----------------------------------------------------------------------------------------

_DNG_TAGS = [
    (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
    (50708, "s", 0, "mmfind test camera", True),  # UniqueCameraModel
    (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),  # ColorMatrix1
    (50717, "H", 1, 4095, True),  # WhiteLevel
]
_CFA_TAGS = [
    (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
    (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: RGGB
]


def make_dng(
    path: str | Path,
    size: tuple[int, int] = (64, 48),
    preview: str | None = "jpeg",
    preview_image: Image.Image | None = None,
    orientation: int = 1,
) -> Path:
    """A minimal real DNG that LibRaw opens: a 12-bit RGGB mosaic (bright top-left quadrant) of
    `size`, optionally with an embedded preview in IFD0 ("jpeg" or "bitmap", default picture
    `quadrants(size // 2)`), and the TIFF Orientation tag `orientation`."""
    w, h = size
    mosaic = np.full((h, w), 300, np.uint16)
    mosaic[: h // 2, : w // 2] = 4000
    orient = [(274, "H", 1, orientation, True)]
    path = Path(path)
    with tifffile.TiffWriter(path) as tif:
        if preview is None:
            tif.write(mosaic, photometric=32803, extratags=_DNG_TAGS + _CFA_TAGS + orient)
            return path
        thumb = preview_image or quadrants((w // 2, h // 2))
        tif.write(
            np.asarray(thumb.convert("RGB")),
            photometric="rgb",
            subfiletype=1,
            subifds=1,
            rowsperstrip=thumb.height,
            extratags=_DNG_TAGS + orient,
        )
        tif.write(mosaic, photometric=32803, subfiletype=0, extratags=_CFA_TAGS)
    if preview == "jpeg":
        _jpeg_preview(path, thumb)
    return path


def _jpeg_preview(path: Path, thumb: Image.Image) -> None:
    """Turn IFD0's uncompressed strip into a JPEG one, in place (tifffile needs imagecodecs for
    JPEG; patching the Compression tag, the strip and its byte count is enough for LibRaw)."""
    buf = io.BytesIO()
    thumb.convert("RGB").save(buf, "JPEG", quality=95)
    jpeg = buf.getvalue()
    with tifffile.TiffFile(path) as tf:
        tags = tf.pages[0].tags
        compression = tags["Compression"].valueoffset
        strip = tags["StripOffsets"].value[0]
        count = tags["StripByteCounts"]
        count_at, count_fmt = count.valueoffset, "<I" if count.dtype == 4 else "<H"
    if len(jpeg) > thumb.width * thumb.height * 3:
        raise ValueError("preview too small to hold its JPEG")
    with open(path, "r+b") as f:
        for offset, value in ((compression, struct.pack("<H", 7)), (strip, jpeg)):
            f.seek(offset)
            f.write(value)
        f.seek(count_at)
        f.write(struct.pack(count_fmt, len(jpeg)))
