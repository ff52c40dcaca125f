"""The embedding spaces an index holds. Vectors of different spaces (or models) never mix."""

from __future__ import annotations

CLIP = "clip"  # image-text model (open_clip): images, video frames, text-file chunks
CLAP = "clap"  # audio-text model (CLAP): audio windows, video sound tracks

SPACES = (CLIP, CLAP)
