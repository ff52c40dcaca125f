"""Batched JPEG decoding into model-ready tensors: torchvision's `decode_jpeg` (nvJPEG on CUDA).

Takes the JPEGs the decode workers passed through as bytes (`mmfind.media.jpeg_probe`) and gives
what `OpenClipEncoder.encode_image_tensor` takes: (N, 3, H, W), normalised with the model's
mean/std, fp16 on CUDA, on the encoder's device. The geometry is `fit_image`'s (open_clip's eval
transform): EXIF orientation, resize with an antialiased bicubic (or bilinear) filter, centre
crop or pad. The picture is decoded at full size (nvJPEG has no DCT-scaled "draft" mode).

EXIF orientation is applied here from the header the worker read, on every device alike:
torchvision applies `apply_exif_orientation` on CPU only.

A JPEG the decoder refuses is reported in `JpegBatch.rejected` with the reason; the caller decodes
it the PIL way instead. One refused file in a batch costs a retry of that batch one by one.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from mmfind.media.image import ImageSpec, fit_interpolation, fit_size
from mmfind.media.jpeg_probe import EncodedJpeg

# Deprecated since torchvision 0.29 in favour of TorchCodec (warned on import and on each call).
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities", category=DeprecationWarning
)
from torchvision.io import ImageReadMode, decode_jpeg  # noqa: E402

# Decoded pixels per decode_jpeg call: bounds the uint8 images alive at once (about 1.2 GB).
MAX_CALL_PIXELS = 400_000_000


@dataclass
class JpegBatch:
    pixels: torch.Tensor  # (len(ok), 3, H, W) model-ready, on the decoder's device
    ok: list[int]  # the input positions that `pixels` holds, in order
    rejected: dict[int, str] = field(default_factory=dict)  # input position -> why not


class JpegBatchDecoder:
    """Decodes batches of JPEGs on `device` (CUDA: nvJPEG on its own stream; else the CPU)."""

    def __init__(
        self,
        spec: ImageSpec,
        mean: Sequence[float],
        std: Sequence[float],
        device: str,
        *,
        dtype: torch.dtype | None = None,
        max_call_pixels: int = MAX_CALL_PIXELS,
    ) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.decode_device = self.device if self.cuda else torch.device("cpu")
        self.dtype = dtype or (torch.float16 if self.cuda else torch.float32)
        self.max_call_pixels = max_call_pixels
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(3, 1, 1) * 255
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(3, 1, 1) * 255
        self._stream = torch.cuda.Stream(self.device) if self.cuda else None  # type: ignore[no-untyped-call]
        self._thread: ThreadPoolExecutor | None = None

    def decode(self, items: Sequence[EncodedJpeg]) -> JpegBatch:
        """Decode and prepare `items`; the result's tensors are ready when this returns."""
        host = self._host_tensors(items)
        with torch.inference_mode():
            if self._stream is None:
                return self._decode(items, host)
            with torch.cuda.stream(self._stream):
                batch = self._decode(items, host)
            self._stream.synchronize()  # `host` (pinned) must outlive the copies that read it
        return batch

    def submit(self, items: Sequence[EncodedJpeg]) -> Future[JpegBatch]:
        """`decode` in a background thread, so it overlaps the caller's encoding; see `take`."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="mmfind-jpeg")
        return self._thread.submit(self.decode, list(items))

    def take(self, future: Future[JpegBatch]) -> JpegBatch:
        """The result of `submit`, made safe to use on the caller's CUDA stream."""
        batch = future.result()
        if self.cuda and batch.pixels.numel():  # allocated on our stream, freed after the caller's
            batch.pixels.record_stream(torch.cuda.current_stream(self.device))
        return batch

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None

    # -- steps ------------------------------------------------------------------------------------
    def _host_tensors(self, items: Sequence[EncodedJpeg]) -> list[torch.Tensor]:
        """The files' bytes as 1-D uint8 tensors: views of one buffer, pinned for CUDA."""
        total = sum(len(item.data) for item in items)
        buf = torch.empty(total, dtype=torch.uint8, pin_memory=self.cuda)
        view = buf.numpy()
        out = []
        offset = 0
        for item in items:
            n = len(item.data)
            view[offset : offset + n] = np.frombuffer(item.data, dtype=np.uint8)
            out.append(buf[offset : offset + n])
            offset += n
        return out

    def _decode(self, items: Sequence[EncodedJpeg], host: list[torch.Tensor]) -> JpegBatch:
        ready: list[torch.Tensor] = []
        ok: list[int] = []
        rejected: dict[int, str] = {}
        for chunk in self._chunks(items):
            images = self._decode_chunk([host[i] for i in chunk])
            for i, image in zip(chunk, images, strict=True):
                if isinstance(image, str):
                    rejected[i] = image
                    continue
                item = items[i]
                if tuple(image.shape) != (3, item.height, item.width):
                    rejected[i] = (
                        f"batched JPEG decoder returned {tuple(image.shape)}, "
                        f"the header says {item.width}x{item.height}"
                    )
                    continue
                ready.append(self._fit(image.to(self.device), item.orientation))
                ok.append(i)
        th, tw = self.spec.size
        if not ready:
            return JpegBatch(torch.empty((0, 3, th, tw), dtype=self.dtype, device=self.device), ok)
        pixels = ((torch.stack(ready) - self._mean) / self._std).to(self.dtype)
        return JpegBatch(pixels, ok, rejected)

    def _chunks(self, items: Sequence[EncodedJpeg]) -> list[list[int]]:
        chunks: list[list[int]] = [[]]
        pixels = 0
        for i, item in enumerate(items):
            size = item.width * item.height
            if chunks[-1] and pixels + size > self.max_call_pixels:
                chunks.append([])
                pixels = 0
            chunks[-1].append(i)
            pixels += size
        return [c for c in chunks if c]

    def _decode_chunk(self, tensors: list[torch.Tensor]) -> list[torch.Tensor | str]:
        """Decoded CHW uint8 images; a reason (str) in place of each one the decoder refused."""
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.decode_device))
        except Exception:  # one bad file fails the whole call: find it
            pass
        out: list[torch.Tensor | str] = []
        for tensor in tensors:
            try:
                out.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=self.decode_device))
            except Exception as exc:
                out.append(f"batched JPEG decoder: {_detail(exc)}")
        return out

    def _fit(self, image: torch.Tensor, orientation: int) -> torch.Tensor:
        """uint8 CHW as stored → float32 (3, H, W) in 0..255, as `fit_image` makes it."""
        x = orient(image, orientation)
        h, w = x.shape[-2:]
        nw, nh = fit_size(w, h, self.spec)
        x = x.to(torch.float32)
        if (nh, nw) != (h, w):
            mode = fit_interpolation(self.spec)
            x = F.interpolate(
                x[None], size=(nh, nw), mode=mode, antialias=True, align_corners=False
            )
            x = x[0].clamp_(0, 255).round_()  # what Pillow's uint8 resize gives
        th, tw = self.spec.size
        fill = self.spec.fill_color if self.spec.resize_mode == "longest" else 0
        return center_crop_or_pad(x, th, tw, fill)


def concat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Join prepared batches (for the indexer, which does not import torch itself)."""
    return torch.cat(list(tensors))


def orient(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF orientation 1–8 to a (..., H, W) tensor, as PIL's exif_transpose does."""
    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-2, -1)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(x, -1, dims=(-2, -1))
    if orientation == 7:
        return x.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(x, 1, dims=(-2, -1))
    return x


def center_crop_or_pad(x: torch.Tensor, th: int, tw: int, fill: int) -> torch.Tensor:
    """torchvision CenterCrop / open_clip CenterCropOrPad on CHW, as image._center_crop_or_pad."""
    h, w = x.shape[-2:]
    left = round((w - tw) / 2.0) if w >= tw else -((tw - w) // 2)
    top = round((h - th) / 2.0) if h >= th else -((th - h) // 2)
    if w >= tw and h >= th:
        return x[:, top : top + th, left : left + tw]
    out = x.new_full((x.shape[0], th, tw), float(fill))
    sx, sy, dx, dy = max(0, left), max(0, top), max(0, -left), max(0, -top)
    cw, ch = min(w - sx, tw - dx), min(h - sy, th - dy)
    out[:, dy : dy + ch, dx : dx + cw] = x[:, sy : sy + ch, sx : sx + cw]
    return out


def _detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    # torchvision prefixes "decode_jpeg, /path/to/decode_jpeg.cpp:171, ": keep the message only
    return text.rsplit(", ", 1)[-1] if ".cpp:" in text else (text or type(exc).__name__)
