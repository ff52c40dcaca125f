"""Regenerate the project's own sample media in sample_data/ (see sample_data/LICENSES.md).

    .venv/bin/python scripts/make_sample_media.py [--out sample_data] [--photos sample_data]

Writes:
- speech-dog-in-the-garden.flac: espeak-ng (en-us) reading SPEECH_TEXT, 48 kHz mono.
- doorbell.flac: a two-tone "ding-dong" doorbell, rung twice, synthesised here with numpy.
- slideshow.mp4: five of the sample photos, 2 s each (320×240, H.264), with a sound track: the
  speech at 0.5 s, the doorbell at 5.5 s (AAC, 48 kHz mono).
- notes-tax-return-2023.md: written for this project (the text is in this script).

Needs espeak-ng on PATH (Debian: `apt-get install espeak-ng`) and, from the project's venv, PyAV,
numpy, Pillow, soundfile and soxr. Everything but the speech is bit-for-bit reproducible with the
same library versions; the speech depends on the espeak-ng version (1.51 made the committed one).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf  # type: ignore[import-untyped]
import soxr  # type: ignore[import-untyped]
from PIL import Image, ImageOps

RATE = 48_000
SPEECH_TEXT = "A dog is barking in the garden, and someone is ringing the doorbell."
SLIDES = ("cat.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg", "galaxies.jpg")
SLIDE_S = 2
VIDEO_SIZE = (320, 240)
VIDEO_FPS = 10

NOTES = """\
# Tax return 2023: notes to self

The tax return for 2023 is due on 31 July. The accountant, Maria, wants everything by the end of
May so she has time to check it; the appointment is on 28 May at 10:00 in her office above the
bakery on Station Road.

## What to bring

- The annual salary statement from work and the bank's interest certificate (arrived in February,
  filed in the blue folder).
- Receipts for the home office: the new desk chair, the monitor and a share of the internet bill.
  I worked from home three days a week from March on, so the flat-rate deduction probably beats
  itemising the room itself. Ask Maria which one to use.
- Donations: the animal shelter (monthly, see bank statements) and the one-off gift to the flood
  relief appeal in October. The shelter sends a yearly receipt; the appeal's receipt is an email.
- The dentist and the new glasses count as medical costs only above the threshold, so collect
  them anyway and let her decide.

## Still open

The rental income from the garage is small but has to be declared. I lost the January payment
record: ask the tenant for a copy of the bank transfer. Also check whether the bicycle bought for
commuting counts as a work expense, and whether the train pass was already refunded by the
employer (then it does not).

Last year's refund came in September. If the numbers look similar, expect about the same.
"""


def speech(text: str = SPEECH_TEXT) -> np.ndarray:
    """espeak-ng's en-us voice reading `text`, mono float32 at RATE, peak-normalised to -1 dBFS."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        cmd = ["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text]
        subprocess.run(cmd, check=True)
        samples, rate = sf.read(wav, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    out = soxr.resample(mono, rate, RATE, quality="HQ").astype(np.float32)
    return normalise(trim_silence(out))


def doorbell(rings: int = 2) -> np.ndarray:
    """A two-tone chime (E5 then C#5, bell-like partials, exponential decay), rung `rings` times."""
    t = np.arange(round(1.2 * RATE), dtype=np.float64) / RATE

    def strike(f0: float) -> np.ndarray:
        tone = np.zeros_like(t)
        for ratio, level, decay in ((1.0, 1.0, 2.2), (2.0, 0.35, 3.5), (3.01, 0.12, 5.0)):
            tone += level * np.sin(2 * np.pi * f0 * ratio * t) * np.exp(-decay * t)
        attack = np.minimum(1.0, t / 0.004)  # no click
        return tone * attack

    ding, dong = strike(659.26), strike(554.37)
    gap = round(0.45 * RATE)
    ring = np.zeros(gap + len(dong) + round(0.6 * RATE))
    ring[: len(ding)] += ding
    ring[gap : gap + len(dong)] += dong
    return normalise(np.concatenate([ring] * rings).astype(np.float32))


def trim_silence(samples: np.ndarray, threshold: float = 1e-3, pad_s: float = 0.1) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples) > threshold)
    if len(loud) == 0:
        return samples
    pad = round(pad_s * RATE)
    return samples[max(0, loud[0] - pad) : loud[-1] + pad]


def normalise(samples: np.ndarray, peak_db: float = -1.0) -> np.ndarray:
    peak = float(np.abs(samples).max()) or 1.0
    return (samples * (10 ** (peak_db / 20) / peak)).astype(np.float32)


def write_flac(path: Path, samples: np.ndarray) -> None:
    sf.write(path, samples, RATE, format="FLAC", subtype="PCM_16")


def slideshow(path: Path, photos_dir: Path, sound: np.ndarray) -> None:
    """The SLIDES photos, SLIDE_S seconds each, cropped to VIDEO_SIZE, with `sound` as the track."""
    slides = [
        ImageOps.fit(Image.open(photos_dir / name).convert("RGB"), VIDEO_SIZE) for name in SLIDES
    ]
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as out:
        out.metadata["title"] = "mmfind sample slideshow"
        video = out.add_stream("libx264", rate=VIDEO_FPS)
        video.width, video.height = VIDEO_SIZE
        video.pix_fmt = "yuv420p"
        video.codec_context.gop_size = VIDEO_FPS * SLIDE_S  # a keyframe on every slide
        video.codec_context.options = {"preset": "slow", "crf": "26", "threads": "1"}
        video.codec_context.time_base = Fraction(1, VIDEO_FPS)
        audio = out.add_stream("aac", rate=RATE, layout="mono")
        audio.codec_context.bit_rate = 64_000
        packets: list[av.Packet] = []
        for i in range(len(slides) * SLIDE_S * VIDEO_FPS):
            frame = av.VideoFrame.from_image(slides[i // (SLIDE_S * VIDEO_FPS)])
            frame.pts, frame.time_base = i, Fraction(1, VIDEO_FPS)
            packets.extend(video.encode(frame))
        packets.extend(video.encode(None))
        for start in range(0, len(sound), 1024):
            chunk = sound[start : start + 1024]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = RATE, start, Fraction(1, RATE)
            packets.extend(audio.encode(frame))
        packets.extend(audio.encode(None))

        def when(p: av.Packet) -> float:
            ts = p.dts if p.dts is not None else p.pts
            return float((ts or 0) * (p.time_base or 0))

        for packet in sorted(packets, key=when):
            out.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sample_data = Path(__file__).resolve().parent.parent / "sample_data"
    parser.add_argument("--out", type=Path, default=sample_data, help="where to write")
    parser.add_argument("--photos", type=Path, default=sample_data, help="where SLIDES are")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    voice, bell = speech(), doorbell()
    write_flac(out / "speech-dog-in-the-garden.flac", voice)
    write_flac(out / "doorbell.flac", bell)

    duration = len(SLIDES) * SLIDE_S
    track = np.zeros(duration * RATE, np.float32)
    for at_s, part in ((0.5, voice), (5.5, bell)):
        start = round(at_s * RATE)
        part = part[: len(track) - start]
        track[start : start + len(part)] += 0.9 * part
    slideshow(out / "slideshow.mp4", args.photos, track)

    (out / "notes-tax-return-2023.md").write_text(NOTES, encoding="utf-8")
    for name in (
        "speech-dog-in-the-garden.flac",
        "doorbell.flac",
        "slideshow.mp4",
        "notes-tax-return-2023.md",
    ):
        print(f"{out / name}: {(out / name).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
