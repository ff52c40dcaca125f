"""What every light text tower shares: the Encoder protocol (texts only) on a tower file.

A subclass (mmfind.encoders.light_text for open_clip, mmfind.encoders.light_clap_text for
CLAP) reads its model from the file's header and arrays and implements `tokenize` (texts ->
an int64 array) and `_forward` (that array -> unit rows). This base checks the weights by
function: the first encode of each process runs the export's probe texts in the same batch
and compares their vectors with those recorded at export, and the rows of the token-embedding
table a batch uses are checked against their recorded CRC32s. Any mismatch raises TowerError,
and the caller answers with the full model instead.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from mmfind.encoders.blas_threads import one_blas_thread
from mmfind.encoders.numpy_ops import layer_norm
from mmfind.encoders.tower_file import TowerFile, TowerFileError, read_tower

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; annotations are not evaluated at run time

PROBE_TOLERANCE = 1e-5  # max abs difference of the probes' unit vectors from the recorded ones
SEEN_LIMIT = 4096  # texts whose vectors an encoder remembers


class TowerError(Exception):
    """The tower cannot be used: missing, damaged, from another model or of an unknown form."""


class LightTower:
    """The Encoder protocol (texts only) on an exported text tower; always on the CPU."""

    device = "cpu"
    FORMAT: ClassVar[int]
    KIND: ClassVar[str]
    EMBEDDING: ClassVar[str]  # the name of the token-embedding array (rows checked by CRC32)

    def __init__(self, tower: TowerFile) -> None:
        header = tower.header
        try:
            self.model_id = str(header["model_id"])
            self.space = str(header["space"])
            self.dim = int(header["dim"])
            self.width = int(header["width"])  # a transformer's: its width, heads, layers,
            self.heads = int(header["heads"])  # activation and LayerNorm epsilon
            self.layers = int(header["layers"])
            self.activation = str(header["activation"])
            self.ln_eps = float(header["ln_eps"])
            probe = header["probe"]
            self.probe_texts = [str(t) for t in probe["texts"]]
            self.probe_vectors = np.asarray(probe["vectors"], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise TowerError(f"bad tower header ({exc})") from exc
        if header.get("format") != self.FORMAT or header.get("kind") != self.KIND:
            raise TowerError("a tower of another format")
        if self.heads < 1 or self.width % self.heads or self.layers < 1:
            raise TowerError("implausible tower dimensions")
        self.a = tower.arrays
        self.verified = False
        self._rows_ok: set[int] = set()
        self._seen: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, path: Path, space: str, model_id: str) -> Self:
        """The tower at `path`, if it is intact and holds `model_id`'s text tower for `space`."""
        try:
            tower = read_tower(path)
        except TowerFileError as exc:
            raise TowerError(str(exc)) from exc
        if tower.header.get("model_id") != model_id or tower.header.get("space") != space:
            raise TowerError(f"the tower holds {tower.header.get('model_id')}, not {model_id}")
        return cls(tower)

    # -- what a tower implements ----------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def token_ids(self, tokens: np.ndarray) -> np.ndarray:
        """The token ids in what `tokenize` returns (the rows of the embedding table used)."""
        return tokens

    def _forward(self, tokens: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- the Encoder protocol -------------------------------------------------------------------
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of `texts`. A text seen before by this encoder gets the very same
        vector again (as the full model gives for a text alone): the rows of a matrix product
        can differ in the last bits with the batch around them (here: the probes), and a
        query whose --not text is its own text must cancel out exactly."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        new = list(dict.fromkeys(t for t in texts if t not in self._seen))
        if new:
            probes = [] if self.verified else self.probe_texts
            tokens = self.tokenize([*new, *probes])
            self._check_rows(self.token_ids(tokens))
            vectors = self.forward(tokens)
            if probes:
                got = vectors[len(new) :]
                if got.shape != self.probe_vectors.shape or not (
                    float(np.max(np.abs(got - self.probe_vectors))) <= PROBE_TOLERANCE
                ):
                    raise TowerError("the tower's weights are damaged (probe texts disagree)")
                self.verified = True
            if len(self._seen) > SEEN_LIMIT:
                self._seen.clear()
            self._seen.update(zip(new, vectors[: len(new)], strict=True))
        return np.stack([self._seen[t] for t in texts]).astype(np.float32, copy=False)

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        """What `tokenize` returned -> (n, dim) float32 unit rows."""
        with one_blas_thread():
            return self._forward(tokens)

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        """The LayerNorm whose weight and bias are the arrays `name`.weight and `name`.bias."""
        return layer_norm(x, self.a[name + ".weight"], self.a[name + ".bias"], self.ln_eps)

    # -- checks ---------------------------------------------------------------------------------
    def _check_rows(self, ids: np.ndarray) -> None:
        """The token-embedding rows this batch uses are the ones exported (CRC32 per row)."""
        table = self.a[self.EMBEDDING]
        crcs = self.a[self.EMBEDDING + ".crc32"]
        for token in np.unique(ids).tolist():
            if token in self._rows_ok:
                continue
            if not 0 <= token < len(table):
                raise TowerError(f"token {token} lies outside the tower's embedding table")
            if zlib.crc32(np.ascontiguousarray(table[token]).data) != int(crcs[token]):
                raise TowerError(f"the tower's embedding of token {token} is damaged")
            self._rows_ok.add(token)

    def _check_arrays(self, want: dict[str, tuple[int, ...]]) -> None:
        """Every array named in `want` is there with that shape (float; .crc32 ones uint)."""
        try:
            for name, shape in want.items():
                array = self.a[name]
                kind = "u" if name.endswith(".crc32") else "f"
                if array.shape != shape or array.dtype.kind != kind:
                    raise TowerError(f"{name} has shape {array.shape}, not {shape}")
        except KeyError as exc:
            raise TowerError(f"the tower lacks {exc}") from exc


def lines(blob: np.ndarray) -> list[str]:
    return text(blob).split("\n")


def text(blob: np.ndarray) -> str:
    return bytes(np.asarray(blob)).decode("utf-8")
