"""The on-disk form of an exported text tower: one file, a checked header, memory-mapped arrays.

Layout: MAGIC, the header's length (8 bytes, little-endian), the header (UTF-8 JSON), its
BLAKE2b digest (32 bytes), then each array's raw little-endian bytes at a 64-byte aligned offset
the header records, with its dtype, shape and digest. One file, so replacing it is one atomic
rename (written to a private temporary file, fsync'ed, renamed, directory fsync'ed).

Reading checks what costs little: the magic, the header's digest, the file's size, that every
array lies inside the file, and the digest of each array the writer marked `hashed` (the small
ones: ~2 MB for a ViT-B/32 text tower). The large matrices (~250 MB) are not hashed on every
query (blake2b: ~0.18 s for the 151 MB of weight matrices, measured): the encoder checks them
by function instead (see mmfind.encoders.light_text).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mmfind.fsutil import durable_replace

MAGIC = b"mmfind-tower\x00\x00\x00\x01"
ALIGN = 64
DIGEST_BYTES = 32


class TowerFileError(Exception):
    """The file is missing, cut short, overwritten or not a tower file."""


@dataclass
class TowerFile:
    header: dict[str, Any]
    arrays: dict[str, np.ndarray]  # read-only views of one memory map of the file


def digest(data: np.ndarray | bytes) -> str:
    view = np.ascontiguousarray(data).data if isinstance(data, np.ndarray) else data
    return hashlib.blake2b(view, digest_size=16).hexdigest()


def write_tower(
    path: Path,
    header: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    *,
    unhashed: Collection[str] = (),
) -> None:
    """Write header + arrays to `path` atomically (the old file stays until the rename).

    Every array's digest is recorded; those not named in `unhashed` are checked on each read."""
    table: list[dict[str, Any]] = []
    blobs = []
    offset = 0  # relative to the data start, fixed up below
    for name, array in arrays.items():
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        table.append(
            {"name": name, "dtype": data.dtype.str, "shape": list(data.shape),
             "offset": offset, "digest": digest(data), "hashed": name not in unhashed}
        )  # fmt: skip
        blobs.append(data)
        offset = _aligned(offset + data.nbytes)
    # the data start depends on the header's length, which depends on the offsets: iterate
    start = 0
    for _ in range(4):
        full = {**header, "arrays": [{**e, "offset": e["offset"] + start} for e in table]}
        full["size"] = start + offset
        encoded = json.dumps(full, sort_keys=True).encode()
        new_start = _aligned(len(MAGIC) + 8 + len(encoded) + DIGEST_BYTES)
        if new_start == start:
            break
        start = new_start
    else:
        raise RuntimeError("the tower header did not settle")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(MAGIC)
            fh.write(len(encoded).to_bytes(8, "little"))
            fh.write(encoded)
            fh.write(hashlib.blake2b(encoded, digest_size=DIGEST_BYTES).digest())
            for entry, data in zip(full["arrays"], blobs, strict=True):
                fh.write(b"\x00" * (entry["offset"] - fh.tell()))
                fh.write(data.data.cast("B"))
            fh.write(b"\x00" * (full["size"] - fh.tell()))
        durable_replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_header(path: Path) -> dict[str, Any]:
    """The checked header alone (no array is touched)."""
    try:
        with open(path, "rb") as fh:
            return _read_header(fh, path.name)
    except OSError as exc:
        raise TowerFileError(f"{path.name}: {exc.strerror or exc}") from exc


def _read_header(fh: BinaryIO, name: str) -> dict[str, Any]:
    if fh.read(len(MAGIC)) != MAGIC:
        raise TowerFileError(f"{name} is not a text-tower file of this version")
    length = int.from_bytes(fh.read(8), "little")
    if length > 16 << 20:
        raise TowerFileError(f"{name}: implausible header length")
    encoded = fh.read(length)
    stored = fh.read(DIGEST_BYTES)
    size = os.fstat(fh.fileno()).st_size
    if hashlib.blake2b(encoded, digest_size=DIGEST_BYTES).digest() != stored:
        raise TowerFileError(f"{name}: the header is damaged")
    try:
        header = json.loads(encoded)
    except ValueError as exc:
        raise TowerFileError(f"{name}: the header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise TowerFileError(f"{name}: the header is not a JSON object")
    if header.get("size") != size:
        raise TowerFileError(f"{name}: {size} bytes, its header says {header.get('size')}")
    return header


def read_tower(path: Path) -> TowerFile:
    """The header and every array, memory-mapped read-only; the `hashed` arrays checked."""
    try:
        with open(path, "rb") as fh:  # one open for the header and the mapping
            header = _read_header(fh, path.name)
            try:  # one mapping for all arrays (a np.memmap each: ~0.3 ms)
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as exc:
                raise TowerFileError(f"{path.name}: cannot be mapped ({exc})") from exc
    except OSError as exc:
        raise TowerFileError(f"{path.name}: {exc.strerror or exc}") from exc
    size = int(header["size"])
    arrays: dict[str, np.ndarray] = {}
    if len(mapped) != size:
        raise TowerFileError(f"{path.name}: changed while it was opened")
    try:
        for entry in header["arrays"]:
            dtype = np.dtype(entry["dtype"])
            shape = tuple(int(n) for n in entry["shape"])
            offset = int(entry["offset"])
            count = int(np.prod(shape, dtype=np.int64))
            if offset < 0 or offset + dtype.itemsize * count > size or dtype.kind not in "fiu":
                raise TowerFileError(f"{path.name}: array {entry['name']} lies outside the file")
            array = np.frombuffer(mapped, dtype=dtype, count=count, offset=offset).reshape(shape)
            if entry["hashed"] is not False and digest(array) != entry["digest"]:
                raise TowerFileError(f"{path.name}: array {entry['name']} is damaged")
            arrays[str(entry["name"])] = array
    except (KeyError, TypeError, ValueError) as exc:
        raise TowerFileError(f"{path.name}: bad array table ({exc})") from exc
    return TowerFile(header, arrays)


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN
