"""Readers for labelled retrieval datasets: which media there are and what is relevant to what.

A dataset is a list of media files (images or sounds), each with its captions (caption datasets)
or its class (class-folder datasets). Formats, detected from the path or named with `--format`:

- ``coco``: COCO captions JSON, the official ``captions_*.json`` (``images`` + ``annotations``;
  CLIP_benchmark's ``coco_test_karpathy.json`` is this format), Karpathy's ``dataset_coco.json``
  (``images[].sentences``, ``filepath``/``filename``, ``split``) and the LAVIS/BLIP list
  ``[{"image": ..., "caption": [...]}]``.
- ``flickr30k``: Karpathy's ``dataset_flickr30k.json``, the original
  ``results_20130124.token`` (``1000092795.jpg#0<TAB>caption``), Kaggle's ``results.csv``
  (``image_name| comment_number| comment``) and any CSV with ``image``/``filename`` and
  ``caption``/``raw`` columns (a JSON list of captions in one cell is expanded).
- ``csv``: CSV, TSV or JSONL of ``path,caption``: one row per caption (a path may repeat) or one
  row per file with several caption columns; without a header the first column is the path and
  the second the caption.
- ``audiocaps``: AudioCaps (``audiocap_id,youtube_id,start_time,caption``; the sound file is
  found by ``youtube_id`` as most downloaders name it) and Clotho (``file_name,caption_1..5``).
- ``folders``: ``root/<class>/<file>`` (files may sit in sub-folders of their class folder).

Relative media paths resolve against ``--media-root`` when given, else the dataset file's folder
(a name that is not found there is also looked for, by its base name, in the usual image
sub-folders: ``val2014/``, ``train2014/``, ``val2017/``, ``train2017/``, ``images/``,
``Images/``, ``flickr30k-images/``, and in the root itself). Files that do not exist are left
out and counted in ``Dataset.missing``; when none exists the reader raises `InputError`.

Datasets with splits (Karpathy JSON, a CSV with a ``split`` column) keep the ``test`` split unless
another is asked for (``all`` keeps every split).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mmfind.errors import InputError, UsageError
from mmfind.media.kinds import kind_of

FORMATS = ("coco", "flickr30k", "csv", "folders", "audiocaps")
MODALITIES = ("image", "audio")
DEFAULT_SPLIT = "test"
ALL_SPLITS = "all"

# where images usually sit below a dataset's folder, tried when a relative path is not found
_MEDIA_SUBDIRS = (
    "val2014", "train2014", "val2017", "train2017", "images", "Images", "flickr30k-images",
    "flickr30k_images",
)  # fmt: skip
_PATH_COLUMNS = (
    "path", "file", "filename", "file_name", "image", "image_name", "image_path", "image_file",
    "img", "audio", "audio_path", "audio_file", "fname",
)  # fmt: skip
_CAPTION_COLUMNS = ("caption", "captions", "text", "comment", "sentence", "description", "raw")
_NUMBERED_CAPTION = re.compile(r"^caption[_ ]?(\d+)$")
_FLICKR_TOKEN = re.compile(r"^([^\t#]+)#(\d+)\t(.*)$")
_MAX_MISSING_SHOWN = 3


@dataclass(frozen=True)
class Media:
    """One media file of a dataset."""

    id: str  # how the dataset names it (relative path, file name, YouTube id, ...)
    path: str  # absolute path on disk
    captions: tuple[str, ...] = ()
    label: str | None = None  # its class, for class-folder datasets

    def caption_ids(self) -> list[str]:
        """Stable ids of its captions: ``<media id>#<n>`` (n from 0, as Flickr30k numbers them)."""
        return [f"{self.id}#{n}" for n in range(len(self.captions))]


@dataclass
class Dataset:
    source: str  # the dataset file or folder, absolute
    format: str
    modality: str  # "image" | "audio"
    media: list[Media]
    split: str | None = None  # the split kept, when the dataset has splits
    classes: list[str] = field(default_factory=list)  # class-folder datasets only
    missing: list[str] = field(default_factory=list)  # listed media that were not found
    notes: list[str] = field(default_factory=list)

    @property
    def is_classes(self) -> bool:
        return self.format == "folders"

    @property
    def caption_count(self) -> int:
        return sum(len(m.captions) for m in self.media)

    def sample(self, n: int, seed: int = 0) -> Dataset:
        """A deterministic sample of n media (in dataset order). Class folders are sampled
        evenly across classes (round robin over per-class shuffles) so every class stays
        represented while n allows."""
        if n < 1:
            raise UsageError("--limit must be at least 1")
        if n >= len(self.media):
            return self
        rng = random.Random(seed)
        if self.is_classes:
            by_class: dict[str | None, list[int]] = {}
            for i, m in enumerate(self.media):
                by_class.setdefault(m.label, []).append(i)
            queues = []
            for label in sorted(by_class, key=str):
                members = by_class[label]
                rng.shuffle(members)
                queues.append(members)
            chosen: list[int] = []
            depth = 0
            while len(chosen) < n:
                for members in queues:
                    if depth < len(members) and len(chosen) < n:
                        chosen.append(members[depth])
                depth += 1
        else:
            chosen = rng.sample(range(len(self.media)), n)
        kept = [self.media[i] for i in sorted(chosen)]
        return replace(self, media=kept)


# -- entry point -------------------------------------------------------------------------------


def load_dataset(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    media_root: str | os.PathLike[str] | None = None,
    split: str | None = None,
) -> Dataset:
    """Read a dataset file or folder (see the module docstring for the formats)."""
    source = Path(path).expanduser().absolute()
    if not source.exists():
        raise InputError(f"no such dataset file or folder: {source}")
    if format is not None and format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    fmt = format or detect_format(source)
    if media_root is not None:
        root = Path(media_root).expanduser().absolute()
        if not root.is_dir():
            raise InputError(f"--media-root is not a folder: {root}")
    else:
        root = source if source.is_dir() else source.parent
    if fmt == "folders":
        if not source.is_dir():
            raise InputError(f"--format folders needs a folder of class folders, not {source}")
        if split is not None:
            raise UsageError("--split: a class-folder dataset has no splits")
        return _read_folders(source)
    if source.is_dir():
        raise InputError(f"{source} is a folder: give the dataset file (or --format folders)")
    reader = _Reader(source, fmt, root, split)
    return reader.read()


def detect_format(path: Path) -> str:
    """The format of a dataset path, judged by what it holds (not only by its extension)."""
    if path.is_dir():
        return "folders"
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = _load_json(path)
        if isinstance(data, dict) and str(data.get("dataset", "")).lower().startswith("flickr"):
            return "flickr30k"
        return "coco"
    if suffix == ".jsonl":
        return "csv"
    head = _first_line(path)
    if _FLICKR_TOKEN.match(head):
        return "flickr30k"
    columns = [c.lower() for c in _split_header(head)]
    if "youtube_id" in columns or "ytid" in columns:
        return "audiocaps"
    if "image_name" in columns and "comment" in columns:
        return "flickr30k"
    if any(_NUMBERED_CAPTION.match(c) for c in columns) and "file_name" in columns:
        return "audiocaps"  # Clotho
    return "csv"


# -- readers -----------------------------------------------------------------------------------


class _Reader:
    """Collects (id, relative path, caption, split) records, resolves paths, groups by file."""

    def __init__(self, source: Path, fmt: str, root: Path, split: str | None) -> None:
        self.source = source
        self.fmt = fmt
        self.root = root
        self.split = split
        self.order: list[str] = []  # resolved paths in first-seen order
        self.ids: dict[str, str] = {}
        self.captions: dict[str, list[str]] = {}
        self.missing: list[str] = []
        self.seen_missing: set[str] = set()
        self.splits: set[str] = set()
        self._stems: dict[str, str] | None = None

    # records from every format come through here
    def add(self, media_id: str, captions: Iterable[str], path: str | None = None) -> None:
        resolved = path if path is not None else self.resolve(media_id)
        if resolved is None:
            if media_id not in self.seen_missing:
                self.seen_missing.add(media_id)
                self.missing.append(media_id)
            return
        if resolved not in self.captions:
            self.order.append(resolved)
            self.ids[resolved] = media_id
            self.captions[resolved] = []
        for caption in captions:
            text = " ".join(str(caption).split())
            if text:
                self.captions[resolved].append(text)

    def resolve(self, name: str) -> str | None:
        name = name.strip()
        if not name:
            return None
        candidates: list[str]
        if os.path.isabs(name):
            candidates = [name]
        else:
            base = os.path.basename(name)
            candidates = [os.path.join(self.root, name)]
            candidates += [os.path.join(self.root, sub, base) for sub in _MEDIA_SUBDIRS]
            if base != name:
                candidates.append(os.path.join(self.root, base))
        for candidate in candidates:
            if os.path.isfile(candidate):
                return os.path.abspath(candidate)
        return None

    def keep_split(self, value: Any) -> bool:
        """Record a split name and say whether its rows are kept."""
        name = str(value).strip() if value is not None else ""
        if not name:
            return True
        self.splits.add(name)
        wanted = self.split or DEFAULT_SPLIT
        return wanted == ALL_SPLITS or name == wanted

    def read(self) -> Dataset:
        if self.source.suffix.lower() == ".json":
            self._read_json(_load_json(self.source))
        elif self.source.suffix.lower() == ".jsonl":
            self._read_jsonl()
        elif _FLICKR_TOKEN.match(_first_line(self.source)):
            self._read_flickr_token()
        else:
            self._read_table()
        return self._finish()

    # -- JSON --------------------------------------------------------------------------------
    def _read_json(self, data: Any) -> None:
        if isinstance(data, list):
            self._read_lavis(data)
        elif isinstance(data, dict) and isinstance(data.get("annotations"), list):
            self._read_coco(data)
        elif isinstance(data, dict) and isinstance(data.get("images"), list):
            self._read_karpathy(data["images"])
        else:
            raise InputError(
                f"{self.source}: not a captions JSON this reader knows (COCO images+annotations, "
                "Karpathy images[].sentences, or a list of {image, caption})"
            )

    def _read_coco(self, data: dict[str, Any]) -> None:
        images = data.get("images")
        if not isinstance(images, list):
            raise InputError(f"{self.source}: COCO captions JSON without an 'images' list")
        by_id: dict[Any, dict[str, Any]] = {}
        for image in images:
            if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
                raise InputError(f"{self.source}: every COCO image needs 'id' and 'file_name'")
            by_id[image["id"]] = image
        captions: dict[Any, list[str]] = {key: [] for key in by_id}
        for ann in data["annotations"]:
            if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
                raise InputError(
                    f"{self.source}: every COCO annotation needs 'image_id' and 'caption'"
                )
            if ann["image_id"] in captions:
                captions[ann["image_id"]].append(str(ann["caption"]))
        for key, image in by_id.items():
            if "split" in image and not self.keep_split(image["split"]):
                continue
            self.add(str(image["file_name"]), captions[key])

    def _read_karpathy(self, images: list[Any]) -> None:
        for image in images:
            if not isinstance(image, dict) or "filename" not in image:
                raise InputError(f"{self.source}: every Karpathy image needs a 'filename'")
            if not self.keep_split(image.get("split")):
                continue
            name = os.path.join(str(image.get("filepath") or ""), str(image["filename"]))
            sentences = image.get("sentences") or []
            texts = [s.get("raw", "") if isinstance(s, dict) else str(s) for s in sentences]
            self.add(name, texts)

    def _read_lavis(self, rows: list[Any]) -> None:
        for row in rows:
            if not isinstance(row, dict):
                raise InputError(f"{self.source}: a JSON list of objects is expected")
            self._record(row)

    def _read_jsonl(self) -> None:
        with open(self.source, encoding="utf-8-sig") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{self.source}:{number}: not JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise InputError(f"{self.source}:{number}: each line must be a JSON object")
                self._record(row)

    def _record(self, row: dict[str, Any]) -> None:
        """One object of a JSON list / JSONL line: a path key and caption(s)."""
        lowered = {str(k).lower(): v for k, v in row.items()}
        path_key = next((k for k in _PATH_COLUMNS if k in lowered), None)
        if path_key is None:
            raise InputError(
                f"{self.source}: a record names no media file (one of: {', '.join(_PATH_COLUMNS)})"
            )
        if "split" in lowered and not self.keep_split(lowered["split"]):
            return
        texts: list[str] = []
        for key in _CAPTION_COLUMNS:
            if key in lowered:
                texts.extend(_caption_values(lowered[key]))
        for key in sorted(k for k in lowered if _NUMBERED_CAPTION.match(k)):
            texts.extend(_caption_values(lowered[key]))
        self.add(str(lowered[path_key]), texts)

    # -- text tables -------------------------------------------------------------------------
    def _read_flickr_token(self) -> None:
        with open(self.source, encoding="utf-8-sig") as fh:
            for line in fh:
                match = _FLICKR_TOKEN.match(line.rstrip("\r\n"))
                if match:
                    self.add(match.group(1).strip(), [match.group(3)])

    def _read_table(self) -> None:
        rows = _read_rows(self.source)
        if not rows:
            raise InputError(f"{self.source}: the dataset is empty")
        header = [c.strip().lower() for c in rows[0]]
        if self.fmt == "audiocaps" and ("youtube_id" in header or "ytid" in header):
            self._read_audiocaps(header, rows[1:])
            return
        path_col = next((header.index(c) for c in _PATH_COLUMNS if c in header), None)
        if path_col is None:
            if len(rows[0]) >= 2 and kind_of(rows[0][0].strip()) is not None:
                header, path_col, body = ["path", "caption"], 0, rows  # no header
                caption_cols = [1]
                split_col = None
            else:
                raise InputError(
                    f"{self.source}: no column names the media file (one of: "
                    f"{', '.join(_PATH_COLUMNS)}); or give a header-less 'path,caption' file"
                )
        else:
            body = rows[1:]
            caption_cols = [i for i, c in enumerate(header) if c in _CAPTION_COLUMNS]
            caption_cols += [i for i, c in enumerate(header) if _NUMBERED_CAPTION.match(c)]
            split_col = header.index("split") if "split" in header else None
        if not caption_cols and self.fmt != "audiocaps":
            raise InputError(
                f"{self.source}: no caption column (one of: {', '.join(_CAPTION_COLUMNS)}, "
                "caption_1 ...)"
            )
        for row in body:
            if not row or all(not cell.strip() for cell in row):
                continue
            if split_col is not None and not self.keep_split(_cell(row, split_col)):
                continue
            texts: list[str] = []
            for col in caption_cols:
                texts.extend(_caption_values(_cell(row, col)))
            self.add(_cell(row, path_col), texts)

    def _read_audiocaps(self, header: list[str], body: list[list[str]]) -> None:
        yt = header.index("youtube_id") if "youtube_id" in header else header.index("ytid")
        cap_id = header.index("audiocap_id") if "audiocap_id" in header else None
        start = header.index("start_time") if "start_time" in header else None
        caption_cols = [i for i, c in enumerate(header) if c in _CAPTION_COLUMNS]
        caption_cols += [i for i, c in enumerate(header) if _NUMBERED_CAPTION.match(c)]
        split_col = header.index("split") if "split" in header else None
        for row in body:
            if not row or all(not cell.strip() for cell in row):
                continue
            if split_col is not None and not self.keep_split(_cell(row, split_col)):
                continue
            youtube_id = _cell(row, yt).strip()
            start_time = _cell(row, start).strip() if start is not None else ""
            media_id = f"{youtube_id}_{start_time}" if start_time else youtube_id
            names = [media_id, youtube_id, f"Y{youtube_id}"]
            if start_time:
                names.append(f"Y{youtube_id}_{start_time}")
                try:
                    begin = float(start_time)
                    names.append(f"Y{youtube_id}_{begin:.3f}_{begin + 10:.3f}")
                except ValueError:
                    pass
            if cap_id is not None:
                names.append(_cell(row, cap_id).strip())
            path = self._find_sound(names, youtube_id)
            texts = [t for col in caption_cols for t in _caption_values(_cell(row, col))]
            self.add(media_id, texts, path=path)

    def _find_sound(self, stems: Sequence[str], prefix: str) -> str | None:
        """A sound file under the media root named by one of `stems` (any audio extension),
        else the first whose name starts with the YouTube id."""
        if self._stems is None:
            self._stems = {}
            for found in _walk_files(self.root):
                if kind_of(found) == "audio":
                    stem = os.path.splitext(os.path.basename(found))[0]
                    self._stems.setdefault(stem, found)
        for stem in stems:
            if stem and stem in self._stems:
                return self._stems[stem]
        for candidate in (prefix, f"Y{prefix}"):
            if not candidate:
                continue
            for stem in sorted(self._stems):
                if stem.startswith(candidate + "_"):
                    return self._stems[stem]
        return None

    # -- the result --------------------------------------------------------------------------
    def _finish(self) -> Dataset:
        wanted = self.split or DEFAULT_SPLIT
        if self.splits and wanted != ALL_SPLITS and wanted not in self.splits:
            raise InputError(
                f"{self.source} has no split {wanted!r} (it has: {', '.join(sorted(self.splits))}"
                f"; or --split {ALL_SPLITS})"
            )
        if self.split is not None and not self.splits and self.split != ALL_SPLITS:
            raise UsageError(f"--split {self.split}: {self.source.name} has no splits")
        kept_split = wanted if self.splits else None
        media = [
            Media(self.ids[p], p, tuple(self.captions[p])) for p in self.order if self.captions[p]
        ]
        uncaptioned = len(self.order) - len(media)
        notes = []
        if uncaptioned:
            notes.append(f"{uncaptioned} media file(s) have no caption and are left out")
        if not media:
            raise InputError(self._nothing_found())
        if self.missing:
            shown = ", ".join(self.missing[:_MAX_MISSING_SHOWN])
            more = "" if len(self.missing) <= _MAX_MISSING_SHOWN else ", ..."
            notes.append(
                f"{len(self.missing)} media file(s) listed in the dataset were not found under "
                f"{self.root} ({shown}{more}); evaluating the {len(media)} that exist"
            )
        modality = _modality(media, self.source)
        if self.fmt == "audiocaps" and modality != "audio":
            raise InputError(f"{self.source}: --format audiocaps needs sound files")
        return Dataset(
            source=str(self.source),
            format=self.fmt,
            modality=modality,
            media=media,
            split=kept_split,
            missing=list(self.missing),
            notes=notes,
        )

    def _nothing_found(self) -> str:
        if self.missing:
            return (
                f"none of the {len(self.missing)} media files listed in {self.source.name} "
                f"exists under {self.root} (first: {self.missing[0]}); point --media-root at "
                "the folder that holds them"
            )
        return f"{self.source}: the dataset lists no captioned media"


def _read_folders(root: Path) -> Dataset:
    classes = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise InputError(f"{root} holds no class folders (expected {root}/<class>/<file>)")
    media: list[Media] = []
    ignored = 0
    for name in classes:
        for path in _walk_files(root / name):
            if kind_of(path) in MODALITIES:
                media.append(Media(os.path.relpath(path, root), path, (), name))
            else:
                ignored += 1
    if not media:
        raise InputError(f"the class folders of {root} hold no images or sound files")
    notes = []
    empty = [c for c in classes if not any(m.label == c for m in media)]
    if empty:
        notes.append(f"{len(empty)} class folder(s) hold no media: {', '.join(empty[:5])}")
        classes = [c for c in classes if c not in empty]
    if ignored:
        notes.append(f"{ignored} file(s) that are neither images nor sound were ignored")
    return Dataset(
        source=str(root),
        format="folders",
        modality=_modality(media, root),
        media=media,
        classes=classes,
        notes=notes,
    )


# -- helpers -----------------------------------------------------------------------------------


def _modality(media: Sequence[Media], source: Path) -> str:
    kinds = {kind_of(m.path) for m in media}
    if kinds == {"image"}:
        return "image"
    if kinds == {"audio"}:
        return "audio"
    if kinds <= {"image", "audio"}:
        raise InputError(f"{source} mixes images and sound files: evaluate them separately")
    odd = sorted(k or "files of unknown type" for k in kinds - {"image", "audio"})
    example = next(m.path for m in media if kind_of(m.path) not in ("image", "audio"))
    raise InputError(
        f"{source}: only images or sound files can be evaluated, not {', '.join(odd)} "
        f"(e.g. {example})"
    )


def _caption_values(value: Any) -> list[str]:
    """Captions in a cell or JSON value: a string, a list, or a string holding a JSON list."""
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value if str(v).strip()]
    if isinstance(value, dict):
        text = value.get("raw") or value.get("caption") or ""
        return [str(text)] if str(text).strip() else []
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return [str(v) for v in parsed if str(v).strip()]
    return [text] if text else []


def _cell(row: Sequence[str], index: int) -> str:
    return row[index].strip() if index < len(row) else ""


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            for line in fh:
                if line.strip():
                    return line.rstrip("\r\n")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return ""


def _delimiter(head: str) -> str:
    if "|" in head:
        return "|"
    if "\t" in head:
        return "\t"
    return ","


def _split_header(head: str) -> list[str]:
    row = next(csv.reader(io.StringIO(head), delimiter=_delimiter(head)), [])
    return [c.strip() for c in row]


def _read_rows(path: Path) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            text = fh.read()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    head = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = _delimiter(head)
    # Flickr30k's results.csv has a bare quote inside a caption: read it without quoting
    try:
        if delimiter == "|":
            reader = csv.reader(io.StringIO(text), delimiter=delimiter, quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(io.StringIO(text), delimiter=delimiter)
        return list(reader)
    except csv.Error as exc:
        raise InputError(f"{path}: malformed CSV ({exc})") from None


def _walk_files(root: Path | str) -> Iterator[str]:
    """Files under root, sorted, hidden entries skipped."""
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield os.path.join(current, name)
