"""GPU indexing throughput of issue 5: `gpu_img_per_s_2mp` and `gpu_img_per_s_12mp`.

End to end through the product's entry point (`run_index`): scan, read and hash in the decode
workers, JPEG decoding batched on the encoder's device (nvJPEG on CUDA, see mmfind/gpu_decode.py),
encoding and the SQLite writes, into a fresh index each time. The model is loaded once beforehand
and a small warm-up run (CUDA context, nvJPEG handles, kernels) is not timed.

    python -m bench.gpu                # CUDA, 4,000 2 MP + 1,000 12 MP JPEGs, random ViT-B-32-256
    python -m bench.gpu --smoke        # seconds, any machine: test-tiny on the CPU, same code path

On the CPU (--smoke) the numbers only show that the path runs; they say nothing about a GPU.
Heavy imports stay inside functions: decode workers (spawned) re-import this module.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import corpus

SEEDS = {"2mp": 12, "12mp": 13}  # photo generator seeds of the GPU corpora


def corpus_dir(which: str, count: int) -> Path:
    """The folder of `count` photo-like JPEGs (2 MP or 12 MP), written once and reused."""
    size = corpus.SIZE_2MP if which == "2mp" else corpus.SIZE_12MP
    folder = corpus.CORPUS_DIR / f"gpu-gpu_img_per_s_{which}-{count}"
    corpus.write_photos(folder, count, size, SEEDS[which])
    return folder


def measure(
    dir_2mp: Path,
    dir_12mp: Path,
    model_id: str,
    device: str = "cuda",
    *,
    batch_size: int | None = None,
    gpu_decode: str = "auto",
    workers: int | None = None,
) -> dict[str, Any]:
    """Index each folder of JPEGs into a fresh index and return images per second.

    Returns `gpu_img_per_s_2mp` and `gpu_img_per_s_12mp` plus the details of each run."""
    from mmfind.config import default_workers
    from mmfind.encoders.presets import canonical_model, load_image_encoder
    from mmfind.gpu_decode import create_jpeg_decoder
    from mmfind.indexer import IndexOptions, run_index

    model_id = canonical_model(model_id)
    encoder = load_image_encoder(model_id, device)
    decoder = create_jpeg_decoder(encoder, gpu_decode)
    if decoder is not None:
        decoder.close()
    batch = batch_size or (256 if str(encoder.device).startswith("cuda") else 32)
    options: dict[str, Any] = dict(
        model=model_id,
        device=str(encoder.device),
        batch_size=batch,
        gpu_decode=gpu_decode,
        workers=default_workers() if workers is None else workers,
    )
    out: dict[str, Any] = {
        "device": str(encoder.device),
        "model": model_id,
        "batched_jpeg_decoding": decoder is not None,
        "batch_size": batch,
        "workers": options["workers"],
    }
    with tempfile.TemporaryDirectory(prefix="mmfind-bench-gpu-") as scratch:
        warm = Path(scratch) / "warm"
        warm.mkdir()
        for path in sorted(dir_2mp.glob("*.jpg"))[: min(batch, 64)]:
            shutil.copy(path, warm)
        run_index(Path(scratch) / "warm-index", IndexOptions(paths=[str(warm)], **options),
                  encoders={"clip": encoder})  # fmt: skip
        for key, folder in (("2mp", dir_2mp), ("12mp", dir_12mp)):
            index_dir = Path(scratch) / f"index-{key}"
            started = time.perf_counter()
            summary = run_index(
                index_dir, IndexOptions(paths=[str(folder)], **options), encoders={"clip": encoder}
            )
            wall = time.perf_counter() - started
            expected = len(list(folder.glob("*.jpg")))
            if summary.new != expected:
                raise RuntimeError(f"indexed {summary.counts()} of {expected} JPEGs in {folder}")
            out[f"gpu_img_per_s_{key}"] = round(summary.new / wall, 1)
            out[f"details_{key}"] = {
                "folder": str(folder),
                "seconds": round(wall, 3),
                "counts": summary.counts(),
                "notes": summary.notes,
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run on the CPU (test-tiny)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--model", default=None, help="default: random ViT-B-32-256 checkpoint")
    parser.add_argument("--count-2mp", type=int, default=None)
    parser.add_argument("--count-12mp", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--gpu-decode", default=None, choices=("auto", "on", "off"))
    args = parser.parse_args(argv)
    if args.smoke:
        device, model, n2, n12, mode = "cpu", "test-tiny", 16, 4, "on"
    else:
        device, model, n2, n12, mode = "cuda", None, 4000, 1000, "auto"
    if model is None and args.model is None:
        from mmfind.encoders.presets import canonical_model

        ckpt = corpus.CORPUS_DIR / "checkpoints" / f"{corpus.DEFAULT_ARCH}-random.safetensors"
        corpus.random_checkpoint(ckpt)
        model = canonical_model(f"{corpus.DEFAULT_ARCH}:{ckpt}")
    result = measure(
        corpus_dir("2mp", args.count_2mp or n2),
        corpus_dir("12mp", args.count_12mp or n12),
        args.model or model,
        args.device or device,
        batch_size=args.batch_size,
        gpu_decode=args.gpu_decode or mode,
        workers=args.workers,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
