"""Dataset readers of `mmfind eval`: every format on tiny generated files, format detection,
path resolution, splits, missing files and deterministic sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audio_factory import make_tone
from media_factory import make_photo

from mmfind.errors import InputError, UsageError
from mmfind.evaluate.datasets import Dataset, detect_format, load_dataset

SIZE = (32, 24)


def photos(folder: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        make_photo(folder / name, size=SIZE, seed=i)


def captions_of(ds: Dataset) -> dict[str, tuple[str, ...]]:
    return {m.id: m.captions for m in ds.media}


# --- COCO ---------------------------------------------------------------------------------------


def test_official_coco_captions_json(tmp_path: Path) -> None:
    photos(tmp_path / "val2014", ["COCO_val2014_1.jpg", "COCO_val2014_2.jpg"])
    data = {
        "images": [
            {"id": 1, "file_name": "COCO_val2014_1.jpg"},
            {"id": 2, "file_name": "COCO_val2014_2.jpg"},
            {"id": 3, "file_name": "COCO_val2014_3.jpg"},  # not on disk
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "A cat  on a mat.\n"},
            {"id": 11, "image_id": 1, "caption": "a small cat"},
            {"id": 12, "image_id": 2, "caption": "two dogs"},
            {"id": 13, "image_id": 3, "caption": "lost"},
        ],
    }
    (tmp_path / "coco_test_karpathy.json").write_text(json.dumps(data))
    ds = load_dataset(tmp_path / "coco_test_karpathy.json")  # images found under val2014/
    assert ds.format == "coco"
    assert ds.modality == "image"
    assert captions_of(ds) == {
        "COCO_val2014_1.jpg": ("A cat on a mat.", "a small cat"),
        "COCO_val2014_2.jpg": ("two dogs",),
    }
    assert ds.media[0].path == str(tmp_path / "val2014" / "COCO_val2014_1.jpg")
    assert ds.media[0].caption_ids() == ["COCO_val2014_1.jpg#0", "COCO_val2014_1.jpg#1"]
    assert ds.missing == ["COCO_val2014_3.jpg"]
    assert any("not found" in n for n in ds.notes)
    assert ds.split is None
    # --media-root straight at the image folder
    ds2 = load_dataset(tmp_path / "coco_test_karpathy.json", media_root=tmp_path / "val2014")
    assert [m.path for m in ds2.media] == [m.path for m in ds.media]


def test_karpathy_json_keeps_the_test_split_by_default(tmp_path: Path) -> None:
    photos(tmp_path / "coco" / "val2014", ["a.jpg", "b.jpg", "c.jpg"])
    data = {
        "dataset": "coco",
        "images": [
            {"filepath": "val2014", "filename": "a.jpg", "split": "test",
             "sentences": [{"raw": "first", "tokens": ["first"]}, {"raw": "second"}]},
            {"filepath": "val2014", "filename": "b.jpg", "split": "val",
             "sentences": [{"raw": "val one"}]},
            {"filepath": "val2014", "filename": "c.jpg", "split": "restval",
             "sentences": [{"raw": "train one"}]},
        ],
    }  # fmt: skip
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    root = tmp_path / "coco"
    ds = load_dataset(path, media_root=root)
    assert ds.format == "coco"
    assert ds.split == "test"
    assert captions_of(ds) == {"val2014/a.jpg": ("first", "second")}
    assert load_dataset(path, media_root=root, split="val").media[0].id == "val2014/b.jpg"
    assert len(load_dataset(path, media_root=root, split="all").media) == 3
    with pytest.raises(InputError, match=r"no split 'dev'.*restval, test, val"):
        load_dataset(path, media_root=root, split="dev")


def test_flickr30k_karpathy_json_is_detected_as_flickr(tmp_path: Path) -> None:
    photos(tmp_path / "flickr30k-images", ["1000.jpg"])
    data = {
        "dataset": "flickr30k",
        "images": [{"filename": "1000.jpg", "split": "test", "sentences": [{"raw": "a man"}]}],
    }
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(data))
    ds = load_dataset(tmp_path / "dataset_flickr30k.json")  # found in flickr30k-images/
    assert ds.format == "flickr30k"
    assert captions_of(ds) == {"1000.jpg": ("a man",)}


def test_lavis_list_json(tmp_path: Path) -> None:
    photos(tmp_path / "val2014", ["x.jpg"])
    rows = [{"image": "val2014/x.jpg", "caption": ["one", "two"], "image_id": 5}]
    (tmp_path / "coco_karpathy_test.json").write_text(json.dumps(rows))
    ds = load_dataset(tmp_path / "coco_karpathy_test.json")
    assert captions_of(ds) == {"val2014/x.jpg": ("one", "two")}


# --- Flickr30k text formats ---------------------------------------------------------------------


def test_flickr30k_results_csv_with_pipes(tmp_path: Path) -> None:
    photos(tmp_path / "flickr30k_images", ["1.jpg", "2.jpg"])
    text = (
        "image_name| comment_number| comment\n"
        "1.jpg| 0| Two young guys with shaggy hair look at their hands .\n"
        "1.jpg| 1| Two young , White males are outside near many bushes .\n"
        '2.jpg| 0| A "quoted word and a lone quote .\n'
    )
    (tmp_path / "results.csv").write_text(text)
    assert detect_format(tmp_path / "results.csv") == "flickr30k"
    ds = load_dataset(tmp_path / "results.csv")
    assert captions_of(ds) == {
        "1.jpg": (
            "Two young guys with shaggy hair look at their hands .",
            "Two young , White males are outside near many bushes .",
        ),
        "2.jpg": ('A "quoted word and a lone quote .',),
    }


def test_flickr30k_token_file(tmp_path: Path) -> None:
    photos(tmp_path, ["1000092795.jpg"])
    (tmp_path / "results_20130124.token").write_text(
        "1000092795.jpg#0\tTwo young guys .\n1000092795.jpg#1\tA man in a shirt .\n"
    )
    ds = load_dataset(tmp_path / "results_20130124.token")
    assert ds.format == "flickr30k"
    assert captions_of(ds) == {"1000092795.jpg": ("Two young guys .", "A man in a shirt .")}


def test_csv_with_a_json_list_of_captions_and_a_split_column(tmp_path: Path) -> None:
    photos(tmp_path / "images", ["a.jpg", "b.jpg"])
    text = (
        "raw,sentids,split,filename,img_id\n"
        '"[""cap one"", ""cap two""]","[0, 1]",test,a.jpg,0\n'
        '"[""other""]","[2]",train,b.jpg,1\n'
    )
    (tmp_path / "flickr_annotations_30k.csv").write_text(text)
    ds = load_dataset(tmp_path / "flickr_annotations_30k.csv")
    assert ds.split == "test"
    assert captions_of(ds) == {"a.jpg": ("cap one", "cap two")}


# --- plain CSV / TSV / JSONL --------------------------------------------------------------------


def test_csv_rows_per_caption_group_by_file(tmp_path: Path) -> None:
    photos(tmp_path / "pics", ["a.jpg", "b.png"])
    (tmp_path / "caps.csv").write_text(
        'path,caption\npics/a.jpg,a red thing\npics/b.png,"blue, with a comma"\n'
        "pics/a.jpg,another view\n./pics/a.jpg,same file other spelling\n\n"
    )
    ds = load_dataset(tmp_path / "caps.csv")
    assert ds.format == "csv"
    assert captions_of(ds) == {
        "pics/a.jpg": ("a red thing", "another view", "same file other spelling"),
        "pics/b.png": ("blue, with a comma",),
    }
    assert ds.caption_count == 4


def test_headerless_csv_and_tsv_and_several_caption_columns(tmp_path: Path) -> None:
    photos(tmp_path, ["a.jpg"])
    (tmp_path / "plain.csv").write_text("a.jpg,first\na.jpg,second\n")
    assert captions_of(load_dataset(tmp_path / "plain.csv")) == {"a.jpg": ("first", "second")}
    (tmp_path / "wide.tsv").write_text("image\tcaption_1\tcaption_2\na.jpg\tone\ttwo\n")
    assert captions_of(load_dataset(tmp_path / "wide.tsv")) == {"a.jpg": ("one", "two")}


def test_jsonl(tmp_path: Path) -> None:
    photos(tmp_path, ["a.jpg", "b.jpg"])
    (tmp_path / "d.jsonl").write_text(
        '{"path": "a.jpg", "caption": "one"}\n\n{"file": "b.jpg", "captions": ["x", "y"]}\n'
    )
    ds = load_dataset(tmp_path / "d.jsonl")
    assert ds.format == "csv"
    assert captions_of(ds) == {"a.jpg": ("one",), "b.jpg": ("x", "y")}


def test_absolute_paths_and_media_root(tmp_path: Path) -> None:
    photos(tmp_path / "media", ["a.jpg", "b.jpg"])
    data = tmp_path / "elsewhere"
    data.mkdir()
    (data / "d.csv").write_text(f"path,caption\n{tmp_path / 'media' / 'a.jpg'},abs\nb.jpg,rel\n")
    ds = load_dataset(data / "d.csv", media_root=tmp_path / "media")
    assert [m.path for m in ds.media] == [
        str(tmp_path / "media" / "a.jpg"),
        str(tmp_path / "media" / "b.jpg"),
    ]


# --- audio --------------------------------------------------------------------------------------


def test_clotho_csv(tmp_path: Path) -> None:
    make_tone(tmp_path / "audio" / "rain.wav", seconds=0.5)
    make_tone(tmp_path / "audio" / "birds.wav", freq=880, seconds=0.5)
    header = "file_name," + ",".join(f"caption_{i}" for i in range(1, 6))
    rows = [
        "rain.wav," + ",".join(f"rain falls {i}" for i in range(5)),
        "birds.wav," + ",".join(f"birds sing {i}" for i in range(5)),
    ]
    (tmp_path / "clotho_captions_evaluation.csv").write_text("\n".join([header, *rows]) + "\n")
    path = tmp_path / "clotho_captions_evaluation.csv"
    assert detect_format(path) == "audiocaps"
    ds = load_dataset(path, media_root=tmp_path / "audio")
    assert ds.modality == "audio"
    assert captions_of(ds)["rain.wav"] == tuple(f"rain falls {i}" for i in range(5))


def test_audiocaps_csv_finds_sounds_by_youtube_id(tmp_path: Path) -> None:
    make_tone(tmp_path / "wav" / "abc_30.wav", seconds=0.5)
    make_tone(tmp_path / "wav" / "Ydef_0.000_10.000.flac", freq=660, seconds=0.5)
    make_tone(tmp_path / "wav" / "ghi.wav", freq=770, seconds=0.5)
    (tmp_path / "test.csv").write_text(
        "audiocap_id,youtube_id,start_time,caption\n"
        "1,abc,30,a dog barks\n2,abc,30,barking\n3,def,0,an engine\n4,ghi,10,rain\n"
        "5,gone,0,a deleted video\n"
    )
    ds = load_dataset(tmp_path / "test.csv", media_root=tmp_path / "wav")
    assert ds.format == "audiocaps"
    assert captions_of(ds) == {
        "abc_30": ("a dog barks", "barking"),
        "def_0": ("an engine",),
        "ghi_10": ("rain",),
    }
    assert ds.missing == ["gone_0"]


# --- class folders ------------------------------------------------------------------------------


def test_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    photos(root / "cat", ["1.jpg", "2.jpg"])
    photos(root / "dog" / "nested", ["3.jpg"])
    (root / "dog" / "notes.txt").write_text("not media")
    (root / "empty").mkdir()
    (root / ".hidden").mkdir()
    ds = load_dataset(root)
    assert ds.format == "folders"
    assert ds.is_classes
    assert ds.classes == ["cat", "dog"]
    assert [(m.id, m.label) for m in ds.media] == [
        ("cat/1.jpg", "cat"),
        ("cat/2.jpg", "cat"),
        ("dog/nested/3.jpg", "dog"),
    ]
    assert any("empty" in n for n in ds.notes)
    with pytest.raises(InputError, match="no class folders"):
        load_dataset(root / "cat")
    with pytest.raises(UsageError, match="no splits"):
        load_dataset(root, split="test")


# --- errors -------------------------------------------------------------------------------------


def test_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such dataset"):
        load_dataset(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_dataset(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"something": 1}')
    with pytest.raises(InputError, match="not a captions JSON"):
        load_dataset(tmp_path / "other.json")
    (tmp_path / "none.csv").write_text("path,caption\nmissing.jpg,x\n")
    with pytest.raises(InputError, match=r"none of the 1 media files.*--media-root"):
        load_dataset(tmp_path / "none.csv")
    (tmp_path / "nocaption.csv").write_text("path,label\na.jpg,x\n")
    with pytest.raises(InputError, match="no caption column"):
        load_dataset(tmp_path / "nocaption.csv")
    with pytest.raises(UsageError, match="--format must be one of"):
        load_dataset(tmp_path / "none.csv", format="imagenet")
    photos(tmp_path, ["a.jpg"])
    make_tone(tmp_path / "a.wav", seconds=0.3)
    (tmp_path / "mixed.csv").write_text("path,caption\na.jpg,x\na.wav,y\n")
    with pytest.raises(InputError, match="mixes images and sound"):
        load_dataset(tmp_path / "mixed.csv")
    (tmp_path / "plain.csv").write_text("path,caption\na.jpg,x\n")
    with pytest.raises(UsageError, match="has no splits"):
        load_dataset(tmp_path / "plain.csv", split="val")


# --- sampling -----------------------------------------------------------------------------------


def test_sample_is_deterministic_and_keeps_order(tmp_path: Path) -> None:
    names = [f"{i:02d}.jpg" for i in range(12)]
    photos(tmp_path, names)
    (tmp_path / "d.csv").write_text("path,caption\n" + "".join(f"{n},caption {n}\n" for n in names))
    ds = load_dataset(tmp_path / "d.csv")
    a = ds.sample(5, seed=0)
    assert [m.id for m in a.media] == [m.id for m in ds.sample(5, seed=0).media]
    assert [m.id for m in a.media] == sorted(m.id for m in a.media)
    assert len(a.media) == 5
    assert [m.id for m in a.media] != [m.id for m in ds.sample(5, seed=1).media]
    assert ds.sample(50) is ds


def test_class_sample_is_spread_over_classes(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    for c in ("a", "b", "c"):
        photos(root / c, [f"{i}.jpg" for i in range(6)])
    ds = load_dataset(root).sample(6, seed=3)
    assert sorted(m.label or "" for m in ds.media) == ["a", "a", "b", "b", "c", "c"]
