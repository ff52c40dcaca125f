"""The light text tower: a torch-free tokenizer and NumPy text tower exported into the index,
giving the vectors (and so the rankings) of the full open_clip model without importing torch."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cold_cli import cold_query
from media_factory import make_photo

from mmfind import fsutil, text_towers
from mmfind.encoders import light_text, numpy_ops, tower_export, tower_file
from mmfind.encoders.clip_bpe import ClipBpeTokenizer
from mmfind.encoders.light_text import LightTextEncoder, TowerError
from mmfind.encoders.presets import load_image_encoder
from mmfind.encoders.tower_export import ExportRefused, export
from mmfind.indexer import IndexOptions, run_index
from mmfind.search import Query, run_query

TEXTS = [
    "a photo of a dog",
    "A Photo Of A DOG",
    "“Curly quotes” and ‘single’ ones, „German“ «French»",
    "Fish &amp; chips &lt;b&gt;bold&lt;/b&gt; &amp;amp; &#39;x&#39; &nbsp; done",
    "emoji 🙂🐶🏳️‍🌈 👩‍👩‍👧 and flags 🇫🇷",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Café naïve façade — Ångström, São Paulo, Ærøskøbing, İstanbul",
    "mojibake: cafÃ© dÃ©jÃ  vu, â€œquotedâ€\x9d",
    "digits 1234567890 3.14159 1,000,000 and 2nd 3rd 21st",
    "MiXeD CaSe WoRdS, it's, DON'T, we'll, I'd, they've, you're, I'm",
    "tabs\tand\nnewlines\r\n  and   runs   of   spaces  ",
    "<start_of_text> literal specials <end_of_text> inside",
    "zero\u200bwidth and non\u00a0breaking and combining e\u0301",
    "العربية والعبرית עברית",
    "punctuation!!! ??? ... --- ((brackets)) [x] {y} @home #tag $5 %50 ^_^ ~ `code`",
    "",
    "   ",
    "&nbsp;",
    "\n\t",
    " ".join(f"word{i}" for i in range(150)),
    "supercalifragilisticexpialidocious " * 30,
]


def _random_texts(n: int, seed: int) -> list[str]:
    """Strings mixing every kind of character the tokenizer treats differently."""
    alphabet = (
        "abcxyzABCXYZ0123456789 \t\n'’\"“”&;<>#!?.,-_éüßøłçñÅ東京日本語한국어"
        "🙂🐶\u200b\u00a0\u0301ـعבα"
    )
    rng = random.Random(seed)
    pieces = ["&amp;", "&lt;", "'s", "'ll", "<end_of_text>", "Ã©", "http://x.y/z?a=1"]
    out = []
    for _ in range(n):
        parts = [
            rng.choice(pieces) if rng.random() < 0.1 else rng.choice(alphabet)
            for _ in range(rng.randint(0, 60))
        ]
        out.append("".join(parts))
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Any) -> Path:
    path = tmp_path_factory.mktemp("tower") / "clip.text-tower"
    export(tiny_encoder, path)
    return path


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    base = tmp_path_factory.mktemp("towered")
    root = base / "photos"
    for i in range(12):
        make_photo(root / f"img{i:02d}.jpg", size=(96, 64), seed=700 + i)
    (root / "notes.txt").write_text("a dog on the beach\n\nreceipts and tax returns\n")
    idx = base / "idx"
    summary = run_index(idx, IndexOptions(paths=[str(root)], model="test-tiny", workers=0))
    return idx, root, summary


# -- the tokenizer -------------------------------------------------------------------------


def test_tokenizer_gives_open_clips_ids() -> None:
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()  # the real vocabulary shipped inside open_clip, 77 tokens
    merges = [f"{a} {b}" for (a, b), _ in sorted(reference.bpe_ranks.items(), key=lambda e: e[1])]
    vocab = [reference.decoder[i] for i in range(len(reference.decoder))]
    specials = [reference.decoder[i] for i in reference.all_special_ids]
    port = ClipBpeTokenizer(vocab, merges, specials, reference.context_length)
    texts = TEXTS + _random_texts(400, seed=5)
    expected = reference(texts).numpy()
    got = port(texts)
    assert got.dtype == np.int64 and got.shape == expected.shape == (len(texts), 77)
    mismatched = [t for t, a, b in zip(texts, expected, got, strict=True) if not (a == b).all()]
    assert mismatched == []
    assert (got[:, 0] == reference.sot_token_id).all()
    long_row = got[TEXTS.index(" ".join(f"word{i}" for i in range(150)))]
    assert long_row[-1] == reference.eot_token_id and (long_row != 0).all()  # cut, eot last
    assert got[TEXTS.index("&nbsp;")][:3].tolist() == [
        reference.sot_token_id,
        reference.eot_token_id,
        0,
    ]


def test_erfc_is_float32_exact() -> None:
    x = np.linspace(-9.0, 9.0, 20001)
    expected = np.array([math.erfc(v) for v in x])
    assert np.max(np.abs(numpy_ops.erfc(x) - expected) / expected) < 2e-7


# -- vectors ---------------------------------------------------------------------------------


def test_light_vectors_equal_the_full_models(exported: Path, tiny_encoder: Any) -> None:
    light = LightTextEncoder.open(exported, "clip", "test-tiny")
    texts = TEXTS + _random_texts(60, seed=9)
    expected = tiny_encoder.encode_texts(texts)
    got = light.encode_texts(texts)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert float(np.max(np.abs(got - expected))) < 2e-6
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    one_by_one = np.stack([light.encode_texts([t])[0] for t in TEXTS])  # padding cannot matter
    assert float(np.max(np.abs(one_by_one - expected[: len(TEXTS)]))) < 2e-6
    assert light.encode_texts([]).shape == (0, tiny_encoder.dim)
    assert (light.model_id, light.space, light.dim, light.device) == (
        "test-tiny", "clip", tiny_encoder.dim, "cpu"
    )  # fmt: skip


def test_quick_gelu_is_detected_and_honoured(tmp_path: Path) -> None:
    from open_clip.transformer import QuickGELU

    encoder = load_image_encoder.__wrapped__("test-tiny", "cpu")
    for block in encoder.model.transformer.resblocks:
        block.mlp.gelu = QuickGELU()
    export(encoder, tmp_path / "t")
    light = LightTextEncoder.open(tmp_path / "t", "clip", "test-tiny")
    assert light.activation == "quick_gelu"
    expected = encoder.encode_texts(TEXTS)
    assert float(np.max(np.abs(light.encode_texts(TEXTS) - expected))) < 2e-6


def test_export_verifies_before_writing(
    tmp_path: Path, tiny_encoder: Any, monkeypatch: Any
) -> None:
    """A NumPy tower that computes something else is caught by the export's own check."""
    monkeypatch.setattr(light_text, "activation", lambda name, x: x / (1 + np.exp(-1.702 * x)))
    with pytest.raises(ExportRefused, match="differs"):
        export(tiny_encoder, tmp_path / "t")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "alter, why",
    [
        (
            lambda m: [setattr(b.mlp, "gelu", torch.nn.SiLU()) for b in m.transformer.resblocks],
            "SiLU",
        ),
        (lambda m: setattr(m.transformer.resblocks[1].mlp, "gelu", torch.nn.SiLU()), "mixed"),
        (lambda m: setattr(m, "text_pool_type", "last"), "argmax"),
        (lambda m: setattr(m.transformer.resblocks[0], "ls_1", torch.nn.Dropout(0.0)), "scale"),
        (lambda m: setattr(m, "attn_mask", torch.zeros(32, 32)), "causal"),
    ],
)
def test_unsupported_models_are_refused(tmp_path: Path, alter: Any, why: str) -> None:
    encoder = load_image_encoder.__wrapped__("test-tiny", "cpu")
    alter(encoder.model)
    with pytest.raises(ExportRefused, match=why):
        export(encoder, tmp_path / "t")
    assert list(tmp_path.iterdir()) == []


def test_non_clip_tokenizer_is_refused(tmp_path: Path) -> None:
    encoder = load_image_encoder.__wrapped__("test-tiny", "cpu")
    encoder.tokenizer = lambda texts: torch.zeros(len(texts), 32, dtype=torch.long)
    with pytest.raises(ExportRefused, match="tokenizer"):
        export(encoder, tmp_path / "t")


# -- in the index ------------------------------------------------------------------------------


def test_index_run_exports_and_light_ranking_equals_plain(
    indexed: tuple[Path, Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    idx, root, summary = indexed
    status = summary.text_towers["clip"]
    assert (status.state, status.model) == ("written", "test-tiny")
    assert text_towers.holds(text_towers.tower_path(idx, "clip"), "clip", "test-tiny")
    queries = [
        Query(text="a dog on a beach", limit=20),
        Query(text="tax return", limit=5, kinds=["text"]),
        Query(text="sunset", negatives=["people", "city"], limit=20, all_moments=True),
        Query(text="&amp; 東京 🙂 " + "long " * 100, limit=20),
    ]
    plain = [run_query(idx, q, device="cpu") for q in queries]
    import mmfind.models

    def no_full_model(*args: Any) -> Any:
        raise AssertionError("the light path loaded the full model")

    monkeypatch.setattr(mmfind.models, "load_image_encoder", no_full_model)
    for q, expected in zip(queries, plain, strict=True):
        got = run_query(idx, q, device="cpu", light_text=True)
        assert [r.hit.path for r in got.results] == [r.hit.path for r in expected.results]
        assert [r.score for r in got.results] == pytest.approx(
            [r.score for r in expected.results], abs=1e-5
        )
        assert got.results
    with pytest.raises(AssertionError, match="loaded the full model"):  # the check can fail
        run_query(idx, Query(text="x", images=[str(root / "img00.jpg")]), light_text=True)


def test_cold_cli_query_does_not_import_torch(indexed: tuple[Path, Path, Any]) -> None:
    idx = indexed[0]
    # nor the media decoders (PyAV, Pillow): the CLI imports a command's heavy modules lazily
    watched = ["torch", "open_clip", "av", "PIL", "mmfind.indexer"]
    light, light_run = cold_query(idx, "a dog on a beach", watched)
    assert light_run == {"code": 0, "imported": []}
    plain, plain_run = cold_query(idx, "a dog on a beach", watched, {"MMFIND_TEXT_TOWER": "off"})
    assert {"torch", "open_clip"} <= set(plain_run["imported"])  # the check can fail
    assert plain_run["code"] == 0
    assert [r["path"] for r in light["results"]] == [r["path"] for r in plain["results"]]
    assert [r["score"] for r in light["results"]] == pytest.approx(
        [r["score"] for r in plain["results"]], abs=1e-5
    )


def _copy_index(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _tower_entry(path: Path, name: str) -> dict[str, Any]:
    header = tower_file.read_header(path)
    return next(e for e in header["arrays"] if e["name"] == name)


@pytest.mark.parametrize(
    "damage", ["layer", "embedding row", "vocabulary", "truncated", "header", "other model"]
)
def test_damaged_tower_falls_back_to_the_full_model(
    indexed: tuple[Path, Path, Any], tmp_path: Path, damage: str
) -> None:
    idx = _copy_index(indexed[0], tmp_path / "idx")
    path = text_towers.tower_path(idx, "clip")
    query = Query(text="a dog on a beach", limit=20)
    expected = run_query(idx, query, device="cpu")
    if damage == "layer":  # a weight matrix: not hashed when opened, caught by the probes
        entry = _tower_entry(path, "blocks.1.mlp.c_fc.weight.T")
        with open(path, "r+b") as fh:
            fh.seek(entry["offset"] + 1024)
            fh.write(np.full(256, 3.0, dtype=np.float32).tobytes())
    elif damage == "embedding row":  # the row of a token of this very query
        tokens = LightTextEncoder.open(path, "clip", "test-tiny").tokenizer([query.text or ""])
        entry = _tower_entry(path, "token_embedding")
        with open(path, "r+b") as fh:
            fh.seek(entry["offset"] + int(tokens[0, 2]) * 64 * 4)
            fh.write(np.zeros(4, dtype=np.float32).tobytes())
    elif damage == "vocabulary":  # hashed when opened
        entry = _tower_entry(path, "tokenizer.vocab")
        with open(path, "r+b") as fh:
            fh.seek(entry["offset"] + 5000)
            fh.write(b"x")
    elif damage == "truncated":
        os.truncate(path, path.stat().st_size - 4096)
    elif damage == "header":
        with open(path, "r+b") as fh:
            fh.seek(40)
            byte = fh.read(1)
            fh.seek(40)
            fh.write(bytes([byte[0] ^ 0x20]))
    else:
        header = tower_file.read_header(path)
        header["model_id"] = "ViT-B-32:openai"
        arrays = tower_file.read_tower(path).arrays
        copies = {k: np.array(v) for k, v in arrays.items()}
        tower_file.write_tower(path, header, copies, unhashed=tower_export.unhashed(copies))
    if damage in ("layer", "embedding row"):
        with pytest.raises(TowerError):
            LightTextEncoder.open(path, "clip", "test-tiny").encode_texts([query.text or ""])
    else:
        assert text_towers.light_encoder(idx, "clip", "test-tiny") is None
    got = run_query(idx, query, device="cpu", light_text=True)
    # a tower that fails only when used says so (one that does not open is never tried)
    noted = any("text tower failed its checks" in n for n in got.notes)
    assert noted == (damage in ("layer", "embedding row"))
    assert [r.hit.path for r in got.results] == [r.hit.path for r in expected.results]
    assert [r.score for r in got.results] == pytest.approx([r.score for r in expected.results])
    # the query that had to load the full model wrote a sound tower in its place
    healed = LightTextEncoder.open(path, "clip", "test-tiny")
    healed.encode_texts(["checked against the probes"])


def test_refused_model_leaves_no_tower_and_queries_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = load_image_encoder.__wrapped__("test-tiny", "cpu")
    encoder.model.text_pool_type = "last"  # open_clip's encode_text honours it; the tower cannot
    root = tmp_path / "photos"
    for i in range(4):
        make_photo(root / f"p{i}.jpg", size=(64, 64), seed=40 + i)
    idx = tmp_path / "idx"
    options = IndexOptions(paths=[str(root)], model="test-tiny", workers=0)
    summary = run_index(idx, options, encoders={"clip": encoder})
    status = summary.text_towers["clip"]
    assert status.state == "refused" and "argmax" in (status.reason or "")
    assert not text_towers.tower_path(idx, "clip").exists()
    assert text_towers.describe(idx, {"clip": "test-tiny"})["clip"]["state"] == "refused"
    again = run_index(idx, options, encoders={"clip": encoder})
    assert again.unchanged == 4 and again.text_towers == {}  # nothing encoded: nothing tried

    def tried(*args: Any) -> None:
        raise AssertionError("a refused model was tried again")

    monkeypatch.setattr(tower_export, "export", tried)
    assert text_towers.ensure(idx, encoder).state == "refused"  # remembered, not tried again
    response = run_query(idx, Query(text="red", limit=4), encoders={"clip": encoder})
    assert len(response.results) == 4
    assert not text_towers.tower_path(idx, "clip").exists()


def test_failed_export_never_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tower_export, "write_tower", full_disk)
    root = tmp_path / "photos"
    make_photo(root / "p.jpg", size=(64, 64), seed=3)
    summary = run_index(
        tmp_path / "idx", IndexOptions(paths=[str(root)], model="test-tiny", workers=0)
    )
    assert summary.new == 1
    assert summary.text_towers["clip"].state == "failed"
    assert "No space left" in (summary.text_towers["clip"].reason or "")
    assert any("light text tower" in n for n in summary.notes)
    assert not text_towers.tower_path(tmp_path / "idx", "clip").exists()
    assert text_towers.read_refusal(tmp_path / "idx", "clip") is None  # tried again next run


def test_tower_write_is_atomic(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "clip.text-tower"
    path.write_bytes(exported.read_bytes())
    before = path.read_bytes()
    tower = tower_file.read_tower(path)
    arrays = {k: np.array(v) for k, v in tower.arrays.items()}

    def crash(*args: Any) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(fsutil.os, "replace", crash)  # the rename write_tower ends with
    with pytest.raises(OSError):
        tower_file.write_tower(path, {**tower.header, "model_id": "other"}, arrays)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.text-tower"]


def test_stale_tower_is_removed_after_reembed(tmp_path: Path, tiny_encoder: Any) -> None:
    from safetensors.torch import save_file

    checkpoint = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_encoder.model.state_dict().items()}, checkpoint)
    root = tmp_path / "photos"
    make_photo(root / "p.jpg", size=(64, 64), seed=11)
    idx = tmp_path / "idx"
    run_index(idx, IndexOptions(paths=[str(root)], model="test-tiny", workers=0))
    assert text_towers.holds(text_towers.tower_path(idx, "clip"), "clip", "test-tiny")
    other = f"mmfind-test-tiny:{checkpoint}"
    summary = run_index(idx, IndexOptions(paths=[str(root)], model=other, reembed=True, workers=0))
    assert summary.text_towers["clip"].state == "written"
    path = text_towers.tower_path(idx, "clip")
    assert not text_towers.holds(path, "clip", "test-tiny")
    assert text_towers.holds(path, "clip", other)
    assert sorted(p.name for p in idx.glob("*text-tower*")) == ["clip.text-tower"]
    text_towers.prune(idx, {})  # a space that no longer holds a model keeps no tower
    assert not path.exists()


def test_switched_off(indexed: tuple[Path, Path, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMFIND_TEXT_TOWER", "off")
    assert text_towers.light_encoder(indexed[0], "clip", "test-tiny") is None
    monkeypatch.setenv("MMFIND_TEXT_TOWER", "on")
    assert text_towers.light_encoder(indexed[0], "clip", "test-tiny") is not None


@pytest.mark.slow
def test_default_architecture_text_tower(tmp_path: Path) -> None:
    """The default model's architecture (ViT-B-32-256, random weights: no download)."""
    import open_clip

    from mmfind.encoders.clip import OpenClipEncoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32-256", pretrained=None, device="cpu")
    encoder = OpenClipEncoder(model, open_clip.get_tokenizer("ViT-B-32-256"), "arch-test", "cpu")
    export(encoder, tmp_path / "t")
    light = LightTextEncoder.open(tmp_path / "t", "clip", "arch-test")
    assert (light.width, light.layers, light.context_length, light.activation) == (
        512, 12, 77, "gelu"
    )  # fmt: skip
    texts = [*TEXTS[:12], TEXTS[19]]
    assert float(np.max(np.abs(light.encode_texts(texts) - encoder.encode_texts(texts)))) < 1e-5


def test_info_reports_the_tower(indexed: tuple[Path, Path, Any]) -> None:
    from mmfind.index_info import describe

    idx = indexed[0]
    towers = describe(idx).text_towers
    size = text_towers.tower_path(idx, "clip").stat().st_size
    assert towers == {"clip": {"state": "present", "bytes": size, "reason": None}}
    assert size > 1 << 20


def test_a_text_and_its_own_not_cancel_out_on_the_light_path(
    indexed: tuple[Path, Path, Any],
) -> None:
    from mmfind.errors import UsageError

    idx = indexed[0]
    light = text_towers.light_encoder(idx, "clip", "test-tiny")
    assert light is not None
    first = light.encode_texts(["a red car"])  # with the probes in its batch
    assert np.array_equal(light.encode_texts(["a red car"]), first)  # alone: the same bits
    query = Query(text="a red car", negatives=["a red car"], not_weight=1.0)
    with pytest.raises(UsageError, match="cancel out"):
        run_query(idx, query, device="cpu", light_text=True)


def test_the_cli_shows_results_before_writing_a_missing_tower(
    indexed: tuple[Path, Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index without a tower (made before towers existed) gets one from its first query,
    but only after the results are out: the export takes seconds."""
    import sys

    from typer.testing import CliRunner

    from mmfind.cli.app import app

    idx = _copy_index(indexed[0], tmp_path / "idx")
    path = text_towers.tower_path(idx, "clip")
    path.unlink()
    deferred: list[Any] = []
    run_query(idx, Query(text="a dog on a beach"), device="cpu", light_text=True, deferred=deferred)
    assert not path.exists() and len(deferred) == 1  # left for the caller ...
    deferred[0]()
    assert text_towers.light_encoder(idx, "clip", "test-tiny") is not None  # ... who writes it
    path.unlink()
    shown_first: list[bool] = []
    ensure = text_towers.ensure

    def watching(index_dir: Path, encoder: Any, **kwargs: Any) -> Any:
        shown_first.append(b"\t" in sys.stdout.buffer.getvalue())  # (CliRunner's BytesIO)
        return ensure(index_dir, encoder, **kwargs)

    monkeypatch.setattr(text_towers, "ensure", watching)
    done = CliRunner().invoke(
        app, ["query", "a dog on a beach", "--index", str(idx), "--no-server", "--device", "cpu"]
    )
    assert done.exit_code == 0, done.output
    assert shown_first == [True] and path.exists()


def test_doctor_checks_the_tower_and_a_repair_removes_a_damaged_one(
    indexed: tuple[Path, Path, Any], tmp_path: Path
) -> None:
    from mmfind.doctor import OK, PROBLEM, run_doctor

    idx = _copy_index(indexed[0], tmp_path / "idx")
    path = text_towers.tower_path(idx, "clip")
    sound = run_doctor(idx).check("text tower:clip")
    assert sound is not None and sound.status == OK and "sound" in sound.detail
    entry = _tower_entry(path, "blocks.0.mlp.c_fc.weight.T")  # not hashed: only probes catch it
    with open(path, "r+b") as fh:
        fh.seek(entry["offset"] + 512)
        fh.write(np.full(128, 5.0, dtype=np.float32).tobytes())
    report = run_doctor(idx)
    damaged = report.check("text tower:clip")
    assert damaged is not None and damaged.status == PROBLEM and not report.healthy
    repaired = run_doctor(idx, repair=True)
    after = repaired.check("text tower:clip")
    assert after is not None and after.status == OK and after.repaired and repaired.healthy
    assert not path.exists()
    run_query(idx, Query(text="a dog"), device="cpu", light_text=True)  # loads the model ...
    assert text_towers.light_encoder(idx, "clip", "test-tiny") is not None  # ... and rewrites it
