"""Image decoding: a photo file → the exact pixels open_clip's eval transform would feed the model.

Runs inside decode worker processes, so it stays light: PIL + numpy (+ pillow_heif, rawpy), never
torch. Every failure caused by the input becomes a `MediaError` with a short reason for the user.

Importing this module changes process-wide PIL settings: the HEIF/HEIC opener is registered; PIL's
own decompression-bomb check is switched off (`Image.MAX_IMAGE_PIXELS = None`) because `max_pixels`
replaces it, checked on the declared size before any pixel is decoded; and PIL's UserWarnings about
damaged files ("Corrupt EXIF data", ...) are ignored, so decoding never writes to stderr.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import BinaryIO

import numpy as np
import pillow_heif
import rawpy
from PIL import Image, ImageCms, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from mmfind.config import DEFAULT_MAX_PIXELS
from mmfind.errors import MediaError
from mmfind.media.kinds import RAW_EXTENSIONS

pillow_heif.register_heif_opener()
Image.MAX_IMAGE_PIXELS = None  # our `max_pixels` cap replaces PIL's warning/error
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


RESIZE_MODES = ("shortest", "squash", "longest")
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}

# EXIF orientation → the transpose that displays the picture upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# LibRaw's `flip` (bit 0: mirror, bit 1: upside down, bit 2: transpose) → EXIF orientation.
_LIBRAW_FLIP = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}

# A resize larger than this many times the model's input resamples only what the crop keeps.
_FULL_RESIZE_LIMIT = 16
_HIGH_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_PLAIN_MODES = frozenset({"1", "L", "P", "RGBX", "CMYK", "YCbCr", "HSV"})


@dataclass(frozen=True)
class ImageSpec:
    """The geometry a model's image input takes (open_clip's PreprocessCfg, minus mean/std)."""

    size: tuple[int, int]  # (height, width)
    resize_mode: str = "shortest"  # "shortest" | "squash" | "longest"
    interpolation: str = "bicubic"  # "bicubic" | "bilinear"
    fill_color: int = 0

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"bad image size {self.size!r}: want (height, width)")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"bad resize_mode {self.resize_mode!r}: want one of {RESIZE_MODES}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"bad interpolation {self.interpolation!r}: want bicubic or bilinear")


@dataclass
class PreparedImage:
    """One decoded picture, ready for the model: ToTensor + Normalize of `pixels` is its input."""

    pixels: np.ndarray  # uint8 (spec.size[0], spec.size[1], 3) RGB, ready for ToTensor/Normalize
    width: int  # full-resolution size after EXIF orientation
    height: int


def open_image(
    source: bytes | str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_to: tuple[int, int] | None = None,
    name: str | None = None,
) -> tuple[Image.Image, int, int]:
    """Decode to an upright RGB image plus the picture's full (width, height) after orientation.

    `source` is the file's content (bytes) or its path; `name` hints the extension when `source` is
    bytes (RAW files are recognised by extension only). `draft_to=(w, h)` lets JPEGs decode at a
    reduced size (DCT scaling) that is never smaller than (w, h) in either upright dimension; the
    returned image may then be smaller than the reported full size.
    """
    hint = name if name is not None else (None if isinstance(source, bytes) else os.fspath(source))
    is_raw = hint is not None and os.path.splitext(hint)[1].lower() in RAW_EXTENSIONS
    with _open_source(source) as fp:
        if is_raw:
            return _open_raw(fp, max_pixels, draft_to)
        return _open_pil(fp, max_pixels, draft_to)


def prepare_image(
    source: bytes | str | os.PathLike[str],
    spec: ImageSpec,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> PreparedImage:
    """Decode `source` (drafting JPEGs to what the model needs) and fit it to `spec`."""
    side = max(spec.size)
    img, width, height = open_image(source, max_pixels=max_pixels, draft_to=(side, side), name=name)
    return PreparedImage(pixels=fit_image(img, spec), width=width, height=height)


def fit_image(img: Image.Image, spec: ImageSpec) -> np.ndarray:
    """Resize/crop/pad an image exactly as open_clip's eval transform does; uint8 HxWx3 RGB.

    Mirrors `open_clip.transform.image_transform(is_train=False)` on PIL input: torchvision's
    Resize/CenterCrop and open_clip's ResizeKeepRatio/CenterCropOrPad.
    """
    img = to_rgb(img)
    th, tw = spec.size
    resample = _RESAMPLE[fit_interpolation(spec)]
    size = fit_size(img.width, img.height, spec)
    if spec.resize_mode == "squash":
        img = _resize(img, size, resample)
    elif spec.resize_mode == "longest":
        img = _center_crop_or_pad(_resize(img, size, resample), th, tw, spec.fill_color)
    else:
        img = _resize_then_crop(img, size, th, tw, resample)
    return np.array(img)


def fit_size(width: int, height: int, spec: ImageSpec) -> tuple[int, int]:
    """The (width, height) a picture of this size is resized to before the crop or pad."""
    th, tw = spec.size
    if spec.resize_mode == "squash":
        return tw, th
    if spec.resize_mode == "longest":
        return _keep_ratio_size(width, height, th, tw, longest=1.0)
    if th == tw:  # shortest, square: torchvision Resize(int) then CenterCrop
        short, long = min(width, height), max(width, height)
        new_long = int(th * long / short)
        return (th, new_long) if width <= height else (new_long, th)
    # shortest, non-square: open_clip uses ResizeKeepRatio
    return _keep_ratio_size(width, height, th, tw, longest=0.0)


def fit_interpolation(spec: ImageSpec) -> str:
    """The resize filter: the spec's, except that open_clip's ResizeKeepRatio is always bicubic."""
    th, tw = spec.size
    if spec.resize_mode == "shortest" and th != tw:
        return "bicubic"
    return spec.interpolation


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → "RGB": alpha composited on white, 16/32-bit and float scaled to 8 bits."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _HIGH_BIT_MODES:
        return Image.fromarray(_scale_to_8bit(img)).convert("RGB")
    if img.has_transparency_data:
        rgba = img.convert("LA" if mode == "La" else "RGBA").convert("RGBA")  # PIL: La → LA only
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if mode == "LAB":
        return _lab_to_srgb().apply(img)
    if mode in _PLAIN_MODES or mode == "RGB":
        return img.convert("RGB")
    raise MediaError(f"unsupported image mode: {mode}")


# --- decoding ---------------------------------------------------------------------------------


@contextmanager
def _open_source(source: bytes | str | os.PathLike[str]) -> Iterator[BinaryIO]:
    if isinstance(source, bytes):
        if not source:
            raise MediaError("empty file")
        yield io.BytesIO(source)
        return
    try:
        f = open(source, "rb")  # noqa: SIM115 - `with f` below; only open()'s errors are caught
    except OSError as exc:
        raise MediaError(f"cannot read file: {exc.strerror or exc}") from exc
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            raise MediaError("empty file")
        yield f


def _open_pil(
    fp: BinaryIO, max_pixels: int, draft_to: tuple[int, int] | None
) -> tuple[Image.Image, int, int]:
    img, orientation, width, height = _decode_pil(fp, max_pixels, draft_to, default_orientation=1)
    if orientation >= 5:
        width, height = height, width
    return _upright_rgb(img, orientation), width, height


def _decode_pil(
    fp: BinaryIO, max_pixels: int, draft_to: tuple[int, int] | None, default_orientation: int
) -> tuple[Image.Image, int, int, int]:
    """Load the first frame as stored: (image, orientation, full width, full height).

    The orientation is the file's own EXIF one, else `default_orientation`.
    """
    try:
        img = Image.open(fp)
    except UnidentifiedImageError as exc:
        raise MediaError("not an image (unrecognised format)") from exc
    except Exception as exc:  # PIL's plugins raise many types on bad input
        raise _corrupt(exc) from exc
    width, height = img.size
    _check_pixels(width, height, max_pixels)
    if draft_to is not None and isinstance(img, JpegImageFile):  # JPEG and MPO
        dw, dh = draft_to
        if _orientation(img, default_orientation) >= 5:  # the draft size is meant upright
            dw, dh = dh, dw
        try:
            img.draft("RGB", (dw, dh))
        except Exception as exc:
            raise _corrupt(exc) from exc
    try:
        img.load()
    except Exception as exc:
        raise _corrupt(exc) from exc
    return img, _orientation(img, default_orientation), width, height


def _open_raw(
    fp: BinaryIO, max_pixels: int, draft_to: tuple[int, int] | None
) -> tuple[Image.Image, int, int]:
    try:
        raw = rawpy.imread(fp)
    except Exception as exc:  # LibRawError and friends; maybe a JPEG/TIFF with a RAW extension
        fp.seek(0)
        try:
            return _open_pil(fp, max_pixels, draft_to)
        except MediaError:
            raise MediaError(f"unreadable RAW file: {_detail(exc)}") from exc
    with raw:
        sizes = raw.sizes
        orientation = _LIBRAW_FLIP.get(sizes.flip, 1)
        width, height = sizes.width, sizes.height
        if orientation >= 5:
            width, height = height, width
        try:  # the embedded preview, stored sideways like the RAW: JPEG bytes or a bitmap array
            preview = raw.extract_thumb().data
        except Exception:  # none, an unsupported or a broken one: develop the RAW instead
            preview = None
        if isinstance(preview, bytes):
            with _open_source(preview) as preview_fp:
                img, orientation, _, _ = _decode_pil(preview_fp, max_pixels, draft_to, orientation)
        elif preview is not None:
            img = Image.fromarray(_bitmap_to_uint8(np.asarray(preview)))
        else:
            _check_pixels(sizes.width, sizes.height, max_pixels)
            try:
                rgb = raw.postprocess(half_size=True, use_camera_wb=True)
            except Exception as exc:
                reason = f"RAW file has no usable preview and cannot be developed: {_detail(exc)}"
                raise MediaError(reason) from exc
            img, orientation = Image.fromarray(rgb), 1  # postprocess output is already upright
    return _upright_rgb(img, orientation), width, height


def _bitmap_to_uint8(array: np.ndarray) -> np.ndarray:
    """A LibRaw bitmap thumbnail (HxWx3 or HxWx1, 8 or 16 bits) as uint8 RGB or grey."""
    if array.dtype != np.uint8:
        array = (array.astype(np.uint16) >> 8).astype(np.uint8)
    return array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array


def _upright_rgb(img: Image.Image, orientation: int) -> Image.Image:
    img = to_rgb(img)
    return img.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else img


def _orientation(img: Image.Image, default: int = 1) -> int:
    """EXIF orientation 2–8, else `default` (absent, 1, invalid or unreadable: never an error)."""
    try:
        value = img.getexif().get(0x0112)
    except Exception:
        return default
    return value if isinstance(value, int) and 2 <= value <= 8 else default


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise MediaError(f"truncated or corrupt image: size {width}×{height}")
    if width * height > max_pixels:
        raise MediaError(
            f"image too large: {width}×{height} = {_mp(width * height)} MP"
            f" exceeds the pixel cap of {_mp(max_pixels)} MP"
        )


def _scale_to_8bit(img: Image.Image) -> np.ndarray:
    """16/32-bit or float pixels → uint8, mapping [min(0, lowest), highest] onto [0, 255].

    PIL's own convert clips everything above 255 to white; this keeps the picture's real range.
    """
    a = np.asarray(img, dtype=np.float32)
    if img.mode == "F":
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = min(float(a.min()), 0.0), float(a.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return ((a - lo) * scale + 0.5).astype(np.uint8)


@cache
def _lab_to_srgb() -> ImageCms.ImageCmsTransform:
    lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
    return ImageCms.buildTransform(lab, srgb, "LAB", "RGB")


def _corrupt(exc: BaseException) -> MediaError:
    return MediaError(f"truncated or corrupt image: {_detail(exc)}")


def _detail(exc: BaseException) -> str:
    arg = exc.args[0] if len(exc.args) == 1 else None
    text = arg.decode(errors="replace") if isinstance(arg, bytes) else str(exc)
    return text or type(exc).__name__


def _mp(pixels: int) -> str:
    mp = pixels / 1e6
    return f"{mp:.0f}" if mp >= 10 else f"{mp:.2g}"


# --- geometry (mirrors torchvision / open_clip on PIL input) ----------------------------------


def _resize(img: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    return img if img.size == size else img.resize(size, resample)


def _keep_ratio_size(w: int, h: int, th: int, tw: int, longest: float) -> tuple[int, int]:
    """open_clip ResizeKeepRatio.get_params (no random scale/aspect); returns (width, height)."""
    ratio_h, ratio_w = h / th, w / tw
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return max(1, round(w / ratio)), max(1, round(h / ratio))  # ≥ 1: open_clip would crash


def _resize_then_crop(
    img: Image.Image, size: tuple[int, int], th: int, tw: int, resample: Image.Resampling
) -> Image.Image:
    """`_resize` to `size`, then `_center_crop_or_pad`. When the resized picture would be far
    larger than the crop (a 1×60000 strip resized so that its short side fits), only the part
    the crop keeps is resampled (Pillow's `box`: the same source coordinates and filter support;
    on photos the pixels match to within rounding, ±2 levels), instead of allocating gigabytes
    and minutes of work for a 300-byte file."""
    nw, nh = size
    if nw * nh <= _FULL_RESIZE_LIMIT * tw * th or nw < tw or nh < th:
        return _center_crop_or_pad(_resize(img, size, resample), th, tw, 0)
    left, top = round((nw - tw) / 2.0), round((nh - th) / 2.0)
    sx, sy = img.width / nw, img.height / nh
    box = (left * sx, top * sy, (left + tw) * sx, (top + th) * sy)
    return img.resize((tw, th), resample, box=box)


def _center_crop_or_pad(img: Image.Image, th: int, tw: int, fill: int) -> Image.Image:
    """torchvision CenterCrop / open_clip CenterCropOrPad: pad (centred, `fill`) then crop."""
    w, h = img.size
    left = round((w - tw) / 2.0) if w >= tw else -((tw - w) // 2)
    top = round((h - th) / 2.0) if h >= th else -((th - h) // 2)
    if w >= tw and h >= th:
        return img.crop((left, top, left + tw, top + th))
    out = Image.new("RGB", (tw, th), (fill, fill, fill))
    out.paste(img, (-left, -top))
    return out
