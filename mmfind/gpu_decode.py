"""Decoding JPEGs on the encoder's device during an index run (nvJPEG on CUDA).

When on, the decode workers only read, hash and check the header of a JPEG (mmfind.media.
jpeg_probe) and pass its bytes on; batches of them are decoded and prepared by
mmfind.media.jpeg_batch, one batch ahead of the encoder, in a thread on its own CUDA stream. What
the batched decoder refuses goes back to the decode workers to be decoded the PIL way, where a
file that cannot be decoded at all is recorded as failed with the same reason as without this.

`--gpu-decode auto` (the default) turns it on when the image-text encoder runs on CUDA and a
self-test decode succeeds there; `on` forces it on any device (on the CPU it runs the same code
with torchvision's CPU decoder: that is how the tests exercise it); `off` never.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mmfind.decode import Decoded, DecodeTask, Payload
from mmfind.errors import UsageError

if TYPE_CHECKING:
    from mmfind.media.jpeg_batch import JpegBatch, JpegBatchDecoder
    from mmfind.media.jpeg_probe import EncodedJpeg

GPU_DECODE_MODES = ("auto", "on", "off")
BYTES_IN_FLIGHT = 256 * 1024 * 1024  # JPEG bytes held by the decode pool at once
BYTES_PER_BATCH = 128 * 1024 * 1024  # a batch is cut short when its JPEGs reach this


def create_jpeg_decoder(encoder: Any, mode: str) -> JpegBatchDecoder | None:
    """The batched decoder for `encoder`'s device, or None where JPEGs take the PIL path."""
    if mode not in GPU_DECODE_MODES:
        wanted = ", ".join(GPU_DECODE_MODES)
        raise UsageError(f"bad gpu-decode mode {mode!r}: want one of {wanted}")
    device = str(encoder.device)
    if mode == "off" or (mode == "auto" and not device.startswith("cuda")):
        return None
    try:
        from mmfind.media.jpeg_batch import JpegBatchDecoder
        from mmfind.media.jpeg_probe import EncodedJpeg

        decoder = JpegBatchDecoder(
            encoder.image_spec, encoder.image_mean, encoder.image_std, device
        )
        probe = decoder.decode([EncodedJpeg(_tiny_jpeg(), 1, 16, 16)])
        if probe.rejected:
            raise RuntimeError(probe.rejected[0])
    except Exception as exc:
        if mode == "on":
            raise UsageError(f"batched JPEG decoding does not work on {device}: {exc}") from exc
        return None  # auto: the PIL path, as without a GPU
    return decoder


def _tiny_jpeg() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(out, "JPEG")
    return out.getvalue()


def jpeg_bytes(decoded: Decoded) -> int:
    """How many bytes of JPEG data a decoded file carries (0 unless it awaits the stage)."""
    return sum(len(j.data) for p in decoded.payloads if p.modality == "jpeg" for j in p.data)


_Staged = tuple[list[Decoded], "Future[JpegBatch] | None"]


class JpegStage:
    """Holds one batch in preparation: the JPEGs of batch k+1 are decoded while the caller
    encodes and stores batch k. `push` returns batches with their "jpeg" payloads turned into
    "tensor" payloads, and the tasks of the files the decoder refused (to decode the PIL way)."""

    def __init__(self, decoder: JpegBatchDecoder) -> None:
        self.decoder = decoder
        self.refused: list[tuple[str, str]] = []  # (path, reason), for the run's summary
        self._staged: _Staged | None = None

    def push(self, batch: list[Decoded]) -> tuple[list[Decoded], list[DecodeTask]]:
        previous, self._staged = self._staged, (batch, self._start(batch))
        return self._finish(previous) if previous is not None else ([], [])

    def drain(self) -> tuple[list[Decoded], list[DecodeTask]]:
        previous, self._staged = self._staged, None
        return self._finish(previous) if previous is not None else ([], [])

    def close(self) -> None:
        self._staged = None
        self.decoder.close()

    def _start(self, batch: Sequence[Decoded]) -> Future[JpegBatch] | None:
        jpegs: list[EncodedJpeg] = [
            j for d in batch for p in d.payloads if p.modality == "jpeg" for j in p.data
        ]
        return self.decoder.submit(jpegs) if jpegs else None

    def _finish(self, staged: _Staged) -> tuple[list[Decoded], list[DecodeTask]]:
        batch, future = staged
        if future is None:
            return batch, []
        rows: dict[int, int] = {}
        reasons: dict[int, str] = {}
        try:
            result = self.decoder.take(future)
            rows = {position: row for row, position in enumerate(result.ok)}
            reasons = result.rejected
        except Exception as exc:  # e.g. out of GPU memory: the whole batch goes the PIL way
            pixels = None
            failure = f"batched JPEG decoder: {type(exc).__name__}: {' '.join(str(exc).split())}"
        else:
            pixels = result.pixels
            failure = "batched JPEG decoder: no result"
        ready: list[Decoded] = []
        refused: list[DecodeTask] = []
        position = 0
        for decoded in batch:
            payloads: list[Payload] = []
            for payload in decoded.payloads:
                if payload.modality != "jpeg":
                    payloads.append(payload)
                    continue
                row, reason = rows.get(position), reasons.get(position, failure)
                position += 1  # (a "jpeg" payload holds one file's JPEG: one position)
                if row is None or pixels is None:
                    self.refused.append((decoded.task.path, reason))
                    payloads = []
                    break
                tensor = pixels[row : row + 1]
                payloads.append(Payload(payload.space, "tensor", tensor, payload.spans))
            if payloads:
                decoded.payloads = payloads
                ready.append(decoded)
            else:
                refused.append(replace(decoded.task, jpeg_bytes=False))
        return ready, refused
