"""`mmfind eval` end to end: CliRunner, the test-tiny models, tiny generated datasets.

Also checks that eval answers queries with mmfind's own code: its text vectors are
`query_vector`'s, its media vectors are what `mmfind query --image` computes, and its exact
rankings are `mmfind query`'s.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from audio_factory import make_tone
from click.testing import Result
from media_factory import make_near_duplicate, make_photo
from typer.testing import CliRunner

from mmfind.cli.app import app
from mmfind.evaluate.galleries import text_query_vectors
from mmfind.search import Query, query_vector, run_query
from mmfind.store.ann import EF_SEARCH
from mmfind.store.catalog import Catalog

MODEL = "test-tiny"
SIZE = (64, 48)
runner = CliRunner()


def cli(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> Result:
    result = runner.invoke(app, [os.fspath(a) for a in args], env={"COLUMNS": "200", **(env or {})})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"mmfind {args} raised {result.exception!r}") from result.exception
    assert "Traceback" not in result.output
    return result


def evaluate(*args: str | os.PathLike[str]) -> dict[str, Any]:
    result = cli("eval", *args, "--workers", "0", "--device", "cpu", "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@pytest.fixture(scope="module")
def captions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 photos with 2 captions each (a repeated path per caption), as a CSV."""
    base = tmp_path_factory.mktemp("captions")
    lines = ["path,caption"]
    for i in range(6):
        make_photo(base / "pics" / f"p{i}.jpg", size=SIZE, seed=10 + i)
        lines += [f"pics/p{i}.jpg,a picture of thing {i}", f"pics/p{i}.jpg,photo {i} outdoors"]
    (base / "caps.csv").write_text("\n".join(lines) + "\n")
    return base / "caps.csv"


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes of 3 near-duplicates each: image→image retrieval is easy even for test-tiny."""
    root = tmp_path_factory.mktemp("classes") / "animals"
    for c, name in enumerate(("red_fox", "cat", "owl")):
        first = make_photo(root / name / "0.jpg", size=SIZE, seed=100 + c)
        for j in (1, 2):
            make_near_duplicate(first, root / name / f"{j}.jpg", scale=1.0 - 0.2 * j, quality=80)
    return root


# --- caption datasets ---------------------------------------------------------------------------

DIRECTION_KEYS = [
    "recall@1", "recall@5", "recall@10", "mrr", "map@10", "ndcg@10",
    "precision@1", "precision@5", "precision@10", "set_recall@1", "set_recall@5",
    "set_recall@10", "f1@1", "f1@5", "f1@10", "queries", "skipped", "gallery",
]  # fmt: skip


def test_caption_csv_json_report(captions: Path, tmp_path: Path) -> None:
    doc = evaluate(captions, "--model", MODEL)
    assert list(doc) == [
        "dataset", "model", "index", "k", "text_to_image", "image_to_text", "notes", "seconds",
    ]  # fmt: skip
    for direction in ("text_to_image", "image_to_text"):
        assert list(doc[direction]) == DIRECTION_KEYS
        for key in DIRECTION_KEYS[:-3]:
            assert 0.0 <= doc[direction][key] <= 1.0
        assert doc[direction]["recall@1"] <= doc[direction]["recall@5"]
        assert doc[direction]["recall@10"] == 1.0  # 6 images, 12 captions: all within 10
    assert doc["text_to_image"]["queries"] == 12
    assert doc["text_to_image"]["gallery"] == 6
    assert doc["image_to_text"]["queries"] == 6
    assert doc["image_to_text"]["gallery"] == 12
    assert doc["dataset"] == {
        "path": str(captions), "format": "csv", "modality": "image", "split": None,
        "media": 6, "captions": 12, "classes": None, "missing": 0, "failed": 0,
        "limit": None, "seed": 0,
    }  # fmt: skip
    assert doc["model"] == {"space": "clip", "id": "test-tiny", "device": "cpu"}
    assert doc["index"]["temporary"] is True
    assert doc["index"]["path"] is None
    assert doc["k"] == [1, 5, 10]
    # the user's index (MMFIND_HOME) is never created or touched
    assert not (Path(os.environ["MMFIND_HOME"]) / "catalog.sqlite3").exists()


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def recompute(records: list[dict[str, Any]], ks: list[int]) -> dict[str, float]:
    """The aggregates, from per-query lines alone (written out independently of metrics.py)."""
    depth = max(ks)
    sums: dict[str, float] = defaultdict(float)
    n = 0
    for r in records:
        relevant, ranked, first = set(r["relevant"]), r["ranked"], r["first_relevant_rank"]
        if not relevant:
            continue
        n += 1
        hits = [1 if x in relevant else 0 for x in ranked]
        assert first == (hits.index(1) + 1 if 1 in hits else None)
        sums["mrr"] += 1 / first if first else 0.0
        precisions = [sum(hits[: i + 1]) / (i + 1) for i in range(len(hits)) if hits[i]]
        sums[f"map@{depth}"] += sum(precisions) / min(len(relevant), depth)
        dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits[:depth]))
        ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), depth)))
        sums[f"ndcg@{depth}"] += dcg / ideal
        for k in ks:
            found = sum(hits[:k])
            p, r_ = found / k, found / len(relevant)
            sums[f"recall@{k}"] += 1.0 if found else 0.0
            sums[f"precision@{k}"] += p
            sums[f"set_recall@{k}"] += r_
            sums[f"f1@{k}"] += 2 * p * r_ / (p + r_) if p + r_ else 0.0
    return {key: value / n for key, value in sums.items()}


def test_per_query_lines_recompute_every_aggregate(captions: Path, tmp_path: Path) -> None:
    out = tmp_path / "per-query.jsonl"
    doc = evaluate(captions, "--model", MODEL, "--k", "1,3", "--k", "5", "--per-query", out)
    records = read_records(out)
    assert {r["direction"] for r in records} == {"text_to_image", "image_to_text"}
    assert {r["search"] for r in records} == {"exact"}
    text_records = [r for r in records if r["direction"] == "text_to_image"]
    assert len(text_records) == 12
    first = text_records[0]
    assert list(first) == [
        "direction", "search", "query", "query_id", "ranked", "relevant", "first_relevant_rank",
    ]  # fmt: skip
    assert first["query"] == "a picture of thing 0"
    assert first["query_id"] == "pics/p0.jpg#0"
    assert first["relevant"] == ["pics/p0.jpg"]
    assert len(first["ranked"]) == 5
    image_records = [r for r in records if r["direction"] == "image_to_text"]
    assert image_records[0]["relevant"] == ["pics/p0.jpg#0", "pics/p0.jpg#1"]
    for direction, subset in (("text_to_image", text_records), ("image_to_text", image_records)):
        recomputed = recompute(subset, [1, 3, 5])
        for key, value in recomputed.items():
            assert doc[direction][key] == pytest.approx(value, abs=1e-6), (direction, key)
        assert doc[direction]["queries"] == len(subset)


def test_ann_section_and_ef_tradeoff(captions: Path, tmp_path: Path) -> None:
    out = tmp_path / "pq.jsonl"
    doc = evaluate(captions, "--model", MODEL, "--ef", "8,64", "--per-query", out)
    ann = doc["ann"]
    assert [run["ef"] for run in ann["runs"]] == [8, 64]
    assert ann["items"] == 6
    assert ann["bytes"] > 0
    assert (ann["M"], ann["ef_construction"]) == (16, 200)
    for run in ann["runs"]:
        assert list(run) == ["ef", "text_to_image"]  # image→text ranks captions: no ANN
        section = run["text_to_image"]
        assert section["queries"] == 12
        assert section["ann_recall@1"] == section["ann_recall@10"] == 1.0  # a tiny graph is exact
        assert all(v == pytest.approx(0.0) for v in section["loss"].values())
        assert section["exact"]["recall@1"] == pytest.approx(doc["text_to_image"]["recall@1"])
        assert set(section["latency_ms"]) == {"ann_p50", "ann_p95", "exact_p50", "exact_p95"}
        assert 0 < section["latency_ms"]["ann_p50"] <= section["latency_ms"]["ann_p95"]
    records = read_records(out)
    ann_records = [r for r in records if r["search"] == "ann"]
    assert {r["ef"] for r in ann_records} == {8, 64}
    recomputed = recompute([r for r in ann_records if r["ef"] == 8], [1, 5, 10])
    assert ann["runs"][0]["text_to_image"]["ann"]["mrr"] == pytest.approx(
        recomputed["mrr"], abs=1e-6
    )


def test_limit_samples_media(captions: Path) -> None:
    doc = evaluate(captions, "--model", MODEL, "--limit", "3", "--seed", "4")
    assert doc["dataset"]["media"] == 3
    assert doc["dataset"]["limit"] == 3
    assert doc["text_to_image"]["queries"] == 6
    assert doc["text_to_image"]["gallery"] == 3


def test_table_and_plain_output(captions: Path) -> None:
    table = cli("eval", captions, "--model", MODEL, "--workers", "0", "--table", "--ann")
    assert table.exit_code == 0, table.stderr
    assert "text→image" in table.stdout and "image→text" in table.stdout
    assert "R@1" in table.stdout and "nDCG@10" in table.stdout
    assert "ANN" in table.stdout and "exact p50/p95 ms" in table.stdout
    plain = cli("eval", captions, "--model", MODEL, "--workers", "0")
    assert plain.exit_code == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert lines[0].startswith("text_to_image queries=12 recall@1=")
    assert lines[1].startswith("image_to_text queries=6 ")


# --- class folders ------------------------------------------------------------------------------


def test_class_folders_image_to_image_and_zero_shot(classes: Path, tmp_path: Path) -> None:
    out = tmp_path / "pq.jsonl"
    doc = evaluate(
        classes, "--model", MODEL, "--prompt-template", "a photo of a {}.",
        "--prompt-template", "a blurry photo of a {}.", "--per-query", out, "--ann",
    )  # fmt: skip
    assert doc["dataset"]["format"] == "folders"
    assert doc["dataset"]["classes"] == 3
    assert doc["dataset"]["templates"] == ["a photo of a {}.", "a blurry photo of a {}."]
    i2i = doc["image_to_image"]
    assert i2i["queries"] == 9
    assert i2i["recall@1"] == 1.0  # near-duplicates find each other
    assert i2i["precision@1"] == 1.0
    assert doc["text_to_image"]["queries"] == 3
    assert doc["image_to_text"]["queries"] == 9
    assert doc["image_to_text"]["gallery"] == 3
    records = read_records(out)
    own = [r for r in records if r["direction"] == "image_to_image"]
    for r in own:
        assert r["query"] not in r["ranked"]  # the query image is left out of its own ranking
        assert r["query"] not in r["relevant"]
        assert len(r["relevant"]) == 2
    zero_shot = [r for r in records if r["direction"] == "text_to_image" and r["search"] == "exact"]
    assert sorted(r["query"] for r in zero_shot) == ["cat", "owl", "red_fox"]
    classify = [r for r in records if r["direction"] == "image_to_text"]
    assert classify[0]["relevant"] == ["cat"]
    assert {run["ef"] for run in doc["ann"]["runs"]} == {EF_SEARCH}
    assert set(doc["ann"]["runs"][0]) == {"ef", "image_to_image", "text_to_image"}
    assert doc["ann"]["runs"][0]["image_to_image"]["ann_recall@1"] == 1.0


def test_direction_filter(classes: Path) -> None:
    doc = evaluate(classes, "--model", MODEL, "--direction", "image_to_image")
    assert "image_to_image" in doc
    assert "text_to_image" not in doc and "image_to_text" not in doc


# --- existing index, and eval uses mmfind's own query code --------------------------------------


@pytest.fixture(scope="module")
def indexed(captions: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    idx = tmp_path_factory.mktemp("idx") / "index"
    extra = captions.parent / "extra"
    make_photo(extra / "other.jpg", size=SIZE, seed=99)
    for folder in (captions.parent / "pics", extra):
        result = cli(
            "index", folder, "--index", idx, "--model", MODEL, "--workers", "0", "--device", "cpu",
            "-q",
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
    return idx


def test_existing_index_gives_the_same_numbers(captions: Path, indexed: Path) -> None:
    fresh = evaluate(captions, "--model", MODEL)
    existing = evaluate(captions, "--index", indexed)
    assert existing["index"] == {
        "path": str(indexed), "temporary": False, "gallery": 6, "distractors": 0,
        "seconds": 0.0,
    }  # fmt: skip
    for direction in ("text_to_image", "image_to_text"):
        for key in DIRECTION_KEYS:
            assert existing[direction][key] == pytest.approx(fresh[direction][key]), key
    with_distractors = evaluate(captions, "--index", indexed, "--distractors")
    assert with_distractors["index"]["gallery"] == 7
    assert with_distractors["index"]["distractors"] == 1
    assert with_distractors["text_to_image"]["gallery"] == 7


def test_existing_index_refusals(captions: Path, indexed: Path, tmp_path: Path) -> None:
    make_photo(tmp_path / "new.jpg", size=SIZE, seed=5)
    (tmp_path / "more.csv").write_text(
        f"path,caption\n{captions.parent / 'pics' / 'p0.jpg'},x\n{tmp_path / 'new.jpg'},y\n"
    )
    result = cli("eval", tmp_path / "more.csv", "--index", indexed)
    assert result.exit_code == 2
    assert "1 of the dataset's 2 media files are not in the index" in result.stderr
    assert "new.jpg" in result.stderr
    mismatch = cli("eval", captions, "--index", indexed, "--model", "laion-b32")
    assert mismatch.exit_code == 2
    assert "built with test-tiny" in mismatch.stderr
    missing = cli("eval", captions, "--index", tmp_path / "no-index")
    assert missing.exit_code == 2
    assert "no index at" in missing.stderr


def test_eval_answers_queries_with_mmfind_query_code(
    captions: Path, indexed: Path, tmp_path: Path, tiny_encoder: Any
) -> None:
    texts = ["a picture of thing 0", "photo 3 outdoors", "something else entirely"]
    batched = text_query_vectors(tiny_encoder, texts, batch=2)
    for text, vector in zip(texts, batched, strict=True):
        single = query_vector(tiny_encoder, "clip", Query(text=text))
        np.testing.assert_allclose(vector, single, atol=1e-5)
    # a media query's vector (from the catalog) is what `mmfind query --image` computes
    catalog = Catalog.open(indexed, create=False)
    try:
        p0 = str(captions.parent / "pics" / "p0.jpg")
        stored = catalog.vectors_of_file(catalog.all_files()[p0].id).mean(axis=0)
    finally:
        catalog.close()
    by_image = query_vector(tiny_encoder, "clip", Query(images=[p0]))
    np.testing.assert_allclose(stored / np.linalg.norm(stored), by_image, atol=1e-5)
    # exact rankings are `mmfind query`'s (whole index as gallery: --distractors)
    out = tmp_path / "pq.jsonl"
    evaluate(captions, "--index", indexed, "--distractors", "--per-query", out)
    pics = captions.parent / "pics"
    for record in read_records(out):
        if record["direction"] != "text_to_image":
            continue
        response = run_query(
            indexed, Query(text=record["query"], limit=10), encoders={"clip": tiny_encoder}
        )
        expected = [
            os.path.relpath(r.hit.path, pics.parent) if r.hit.path.startswith(str(pics)) else
            r.hit.path
            for r in response.results
        ]  # fmt: skip
        assert record["ranked"] == expected


# --- audio --------------------------------------------------------------------------------------


def test_audio_caption_dataset(tmp_path: Path) -> None:
    header = "file_name," + ",".join(f"caption_{i}" for i in range(1, 6))
    rows = [header]
    for i, freq in enumerate((220, 440, 880)):
        make_tone(tmp_path / "clips" / f"t{i}.wav", freq=freq, seconds=1.0)
        rows.append(f"t{i}.wav," + ",".join(f"tone {freq} take {j}" for j in range(5)))
    (tmp_path / "clotho.csv").write_text("\n".join(rows) + "\n")
    doc = evaluate(tmp_path / "clotho.csv", "--media-root", tmp_path / "clips", "--model", MODEL)
    assert doc["dataset"]["format"] == "audiocaps"
    assert doc["dataset"]["modality"] == "audio"
    assert doc["model"]["space"] == "clap"
    assert doc["model"]["id"] == "test-tiny-clap"
    assert doc["text_to_audio"]["queries"] == 15
    assert doc["audio_to_text"]["queries"] == 3
    assert doc["audio_to_text"]["gallery"] == 15


# --- usage errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--distractors"], "--distractors needs --index"),
        (["--k", "0"], "--k values must be at least 1"),
        (["--k", "x"], "--k takes whole numbers"),
        (["--ef", "5,a"], "--ef takes whole numbers"),
        (["--direction", "image_to_image"], "this dataset allows text_to_image, image_to_text"),
        (["--direction", "sideways"], "--direction must be one of"),
        (["--prompt-template", "a {}"], "class-folder datasets only"),
        (["--format", "imagenet"], "--format must be one of"),
        (["--json", "--table"], "choose one output format"),
        (["--split", "val"], "has no splits"),
    ],
)
def test_usage_errors(captions: Path, args: list[str], message: str) -> None:
    result = cli("eval", captions, "--model", MODEL, "--workers", "0", *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert message in result.stderr


def test_bad_prompt_template_and_missing_dataset(classes: Path, tmp_path: Path) -> None:
    result = cli("eval", classes, "--model", MODEL, "--prompt-template", "no placeholder")
    assert result.exit_code == 2
    assert "exactly one '{}'" in result.stderr
    missing = cli("eval", tmp_path / "nothing.csv")
    assert missing.exit_code == 2
    assert "no such dataset" in missing.stderr


def test_help_lists_every_option() -> None:
    result = cli("eval", "--help")
    assert result.exit_code == 0
    options = (
        "--format --media-root --split --index --model --audio-model --limit --seed --k --ann "
        "--ef --per-query --prompt-template --direction --distractors --device --batch-size "
        "--workers --json --table"
    )
    for option in options.split():
        assert option in result.stdout, option
