"""Which JPEGs the batched (GPU) decoder may take, decided from the header alone.

Runs in the decode workers, so it stays light (PIL header parsing, never torch). Anything unusual
is left to the PIL path (`mmfind.media.image`), which decodes it or records why it cannot: a file
that is not a plain JPEG by content (whatever its name), CMYK/YCCK, MPO, a JPEG with bytes after
its end marker (or cut short), a decompression bomb, a picture larger than `GPU_MAX_PIXELS`, or a
strip so thin that resizing it whole would take far more pixels than the model's input.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from mmfind.media.image import (
    _FULL_RESIZE_LIMIT,
    ImageSpec,
    _orientation,
    fit_size,
)

# Larger pictures take the PIL path, which decodes JPEGs at reduced size (DCT scaling); this also
# bounds what one picture costs in GPU memory (3 bytes a pixel decoded, 12 as float32).
GPU_MAX_PIXELS = 50_000_000
_SOI = b"\xff\xd8\xff"
_EOI = b"\xff\xd9"


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG file's bytes plus what its header says, for the batched decoder."""

    data: bytes
    orientation: int  # EXIF orientation 1–8, applied after decoding
    width: int  # as stored (before orientation)
    height: int


def probe_jpeg(data: bytes, spec: ImageSpec, *, max_pixels: int) -> EncodedJpeg | None:
    """`data` as an EncodedJpeg when the batched decoder can take it; None: use the PIL path.

    Never raises: a file it cannot make sense of goes to the PIL path, which records the reason.
    """
    if not data.startswith(_SOI) or not data.endswith(_EOI):
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None
            width, height = img.size
            orientation = _orientation(img)
    except Exception:
        return None
    if width <= 0 or height <= 0 or width * height > min(max_pixels, GPU_MAX_PIXELS):
        return None
    upright = (height, width) if orientation >= 5 else (width, height)
    nw, nh = fit_size(*upright, spec)
    th, tw = spec.size
    if nw * nh > _FULL_RESIZE_LIMIT * th * tw:
        return None
    return EncodedJpeg(data, orientation, width, height)
