"""The light CLAP text tower: the clap space's text vectors with NumPy and `tokenizers`, so a
text query on an index holding images and sounds imports neither torch nor transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from audio_factory import make_noise, make_speechlike, make_tone
from cold_cli import cold_query
from media_factory import make_photo
from test_text_tower import TEXTS, _random_texts

from mmfind import text_towers
from mmfind.encoders import clap_tower_export, light_clap_text, tower_file
from mmfind.encoders.audio_presets import load_audio_encoder
from mmfind.encoders.clap import ClapEncoder
from mmfind.encoders.light_clap_text import LightClapTextEncoder
from mmfind.encoders.light_tower import TowerError
from mmfind.encoders.tower_export import ExportRefused
from mmfind.indexer import IndexOptions, IndexSummary, run_index
from mmfind.search import Query, run_query

MODEL = "test-tiny-clap"
CLAP_TEXTS = [
    *TEXTS,
    "<s> <pad> </s> <unk> <mask> literal specials",
    "dog barking" * 40,  # one long word: byte-level pieces beyond 77 tokens
    "Hund bellt, chien qui aboie, 犬が吠える, собака лает",
]


def fresh_clap() -> Any:
    return load_audio_encoder.__wrapped__(MODEL, "cpu")


def light_of(path: Path) -> LightClapTextEncoder:
    return LightClapTextEncoder.open(path, "clap", MODEL)


@pytest.fixture(scope="module")
def tiny_clap() -> Any:
    return load_audio_encoder(MODEL, "cpu")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_clap: Any) -> Path:
    path = tmp_path_factory.mktemp("clap-tower") / "clap.text-tower"
    clap_tower_export.export(tiny_clap, path)
    return path


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, IndexSummary]:
    """A real index of photos, sounds and a text file (tiny CLIP + tiny CLAP)."""
    base = tmp_path_factory.mktemp("mixed-towers")
    root = base / "media"
    for i in range(6):
        make_photo(root / f"img{i}.jpg", size=(96, 64), seed=300 + i)
    make_tone(root / "tone.wav", seconds=3)
    make_tone(root / "high.wav", freq=1760.0, seconds=2)
    make_noise(root / "rain.flac", seconds=3)
    make_speechlike(root / "talk.ogg", seconds=3)
    (root / "notes.txt").write_text("a dog barking at night\n\nreceipts and tax returns\n")
    idx = base / "idx"
    summary = run_index(idx, IndexOptions(paths=[str(root)], model="test-tiny", workers=0))
    return idx, root, summary


def assert_same_answer(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """The same ranking: cosines to float rounding (the vectors agree within 2e-6), scores a
    little looser (calibrated across spaces, they are divided by a spread); two items may
    swap only where their scores tie to that precision (in a population of three, the middle
    item's calibrated score is close to 0, as is a population of one's)."""
    assert len(got) == len(expected)
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-4)
    for mine, theirs in zip(got, expected, strict=True):
        if mine["path"] != theirs["path"]:
            tied = [r["path"] for r in expected if abs(r["score"] - theirs["score"]) <= 1e-4]
            assert mine["path"] in tied, (mine, theirs)
    cosines = {r["path"]: r["cosine"] for r in expected}
    assert [r["cosine"] for r in got] == pytest.approx([cosines[r["path"]] for r in got], abs=1e-5)


def rows(response: Any) -> list[dict[str, Any]]:
    return [{"path": r.hit.path, "cosine": r.cosine, "score": r.score} for r in response.results]


# -- tokens ------------------------------------------------------------------------------------


def test_token_ids_and_mask_equal_the_full_models(exported: Path, tiny_clap: Any) -> None:
    light = light_of(exported)
    texts = CLAP_TEXTS + _random_texts(300, seed=17)
    expected = clap_tower_export.reference_tokens(tiny_clap, texts)
    got = light.tokenize(texts)
    assert got.dtype == np.int64 and got.shape == expected.shape
    assert expected.shape[2] == 77  # the batch holds a text cut at 77 tokens
    bad = [t for t, a, b in zip(texts, expected, got, strict=True) if not np.array_equal(a, b)]
    assert bad == []
    assert (got[:, 1] == 0).any()  # shorter texts are padded, and the mask says so


def _roberta_tokenizer() -> Any:
    """A RoBERTa tokenizer (transformers' RobertaTokenizer: byte-level BPE, RobertaProcessing,
    <mask> with lstrip) over a small vocabulary, as laion/clap-htsat-* ship a large one."""
    from tokenizers import pre_tokenizers
    from transformers import RobertaTokenizer

    merges = ["Ġ t", "h e", "Ġt he", "Ġ d", "o g", "Ġd og", "Ġ b", "a r", "Ġb ar", "k i",
              "n g", "ki ng", "Ġbar king", "Ã ©", "i n", "e r"]  # fmt: skip
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *sorted(pre_tokenizers.ByteLevel.alphabet())]
    tokens += ["".join(m.split()) for m in merges] + ["<mask>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return RobertaTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges])


def test_roberta_tokenizer_port_end_to_end(tmp_path: Path) -> None:
    """A tiny CLAP with a RoBERTa tokenizer exports, and gives ClapEncoder's ids and vectors."""
    tokenizer = _roberta_tokenizer()
    base = fresh_clap()
    model = base.model
    model.text_model.resize_token_embeddings(len(tokenizer))
    encoder = ClapEncoder(model, tokenizer, base.feature_extractor, "tiny-roberta", "cpu")
    clap_tower_export.export(encoder, tmp_path / "t")
    light = LightClapTextEncoder.open(tmp_path / "t", "clap", "tiny-roberta")
    texts = CLAP_TEXTS + _random_texts(200, seed=23) + ["the dog barking", " the barking dog"]
    expected_ids = clap_tower_export.reference_tokens(encoder, texts)
    assert np.array_equal(light.tokenize(texts), expected_ids)
    merged = tokenizer.convert_tokens_to_ids("Ġbarking")
    assert merged in expected_ids[-2, 0]  # merges happen: the vocabulary is really BPE
    got = light.encode_texts(texts)
    assert float(np.max(np.abs(got - encoder.encode_texts(texts)))) < 2e-6


# -- vectors ---------------------------------------------------------------------------------


def test_light_vectors_equal_the_full_models(exported: Path, tiny_clap: Any) -> None:
    light = light_of(exported)
    texts = CLAP_TEXTS + _random_texts(60, seed=31)
    expected = tiny_clap.encode_texts(texts)
    got = light.encode_texts(texts)
    assert got.dtype == np.float32 and got.shape == expected.shape == (len(texts), tiny_clap.dim)
    assert float(np.max(np.abs(got - expected))) < 2e-6
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    alone = np.stack([light_of(exported).forward(light.tokenize([t]))[0] for t in CLAP_TEXTS])
    assert float(np.max(np.abs(alone - expected[: len(CLAP_TEXTS)]))) < 2e-6  # padding: no say
    assert light.encode_texts([]).shape == (0, tiny_clap.dim)
    assert (light.model_id, light.space, light.device) == (MODEL, "clap", "cpu")


def test_tokenizers_alone_imports_neither_torch_nor_transformers() -> None:
    code = "import sys, tokenizers; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_export_verifies_before_writing(
    tmp_path: Path, tiny_clap: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NumPy tower that computes something else, or a tokenizer port that gives other ids,
    is caught by the export's own check and nothing is written."""
    with monkeypatch.context() as patch:
        patch.setattr(light_clap_text, "activation", lambda name, x: np.maximum(x, 0))
        with pytest.raises(ExportRefused, match="differs"):
            clap_tower_export.export(tiny_clap, tmp_path / "t")
    original = LightClapTextEncoder.tokenize

    def one_token_short(self: Any, texts: Any) -> np.ndarray:
        tokens = original(self, texts)
        return tokens[:, :, :-1] if len(texts) > 3 else tokens

    monkeypatch.setattr(LightClapTextEncoder, "tokenize", one_token_short)
    with pytest.raises(ExportRefused, match="token ids"):
        clap_tower_export.export(tiny_clap, tmp_path / "t")
    assert list(tmp_path.iterdir()) == []


def _silu_layers(model: Any) -> None:
    model.text_model.config.hidden_act = "silu"
    for layer in model.text_model.encoder.layer:
        layer.intermediate.intermediate_act_fn = torch.nn.SiLU()


@pytest.mark.parametrize(
    "alter, why",
    [
        (_silu_layers, "activation silu"),
        (
            lambda m: setattr(
                m.text_model.encoder.layer[0].intermediate, "intermediate_act_fn", torch.nn.Tanh()
            ),
            "the activation",
        ),
        (
            lambda m: setattr(m.text_model.config, "position_embedding_type", "relative_key"),
            "relative_key position",
        ),
        (lambda m: setattr(m.text_model, "pooler", None), "pooler"),
        (
            lambda m: setattr(m.text_projection, "activation", torch.nn.GELU()),
            "projection activation",
        ),
        (lambda m: m.text_model.embeddings.token_type_ids.fill_(1), "token type"),
        (lambda m: m.train(), "training"),
        (lambda m: m.text_model.embeddings.LayerNorm.__setattr__("eps", 1e-5), "normalisation"),
    ],
)
def test_unsupported_models_are_refused(tmp_path: Path, alter: Any, why: str) -> None:
    encoder = fresh_clap()
    alter(encoder.model)
    with pytest.raises(ExportRefused, match=why):
        clap_tower_export.export(encoder, tmp_path / "t")
    assert list(tmp_path.iterdir()) == []


def test_slow_tokenizer_is_refused(tmp_path: Path) -> None:
    encoder = fresh_clap()
    encoder.tokenizer = SimpleNamespace(is_fast=False, pad_token_id=1)
    with pytest.raises(ExportRefused, match="slow tokenizer"):
        clap_tower_export.export(encoder, tmp_path / "t")


# -- in a mixed index --------------------------------------------------------------------------


def test_index_run_writes_both_towers(mixed: tuple[Path, Path, IndexSummary]) -> None:
    idx, _, summary = mixed
    states = {s: (t.state, t.model) for s, t in summary.text_towers.items()}
    assert states == {"clip": ("written", "test-tiny"), "clap": ("written", MODEL)}
    assert text_towers.holds(text_towers.tower_path(idx, "clap"), "clap", MODEL)
    assert isinstance(text_towers.light_encoder(idx, "clap", MODEL), LightClapTextEncoder)


QUERIES = [
    Query(text="a dog barking", limit=20),
    Query(text="rain on a roof", limit=20, kinds=["audio"]),
    Query(text="tax return", negatives=["music"], limit=20),
    Query(text="&amp; 東京 🙂 " + "long " * 100, limit=20, all_moments=True),
]


def test_light_ranking_equals_plain_without_loading_either_model(
    mixed: tuple[Path, Path, IndexSummary], monkeypatch: pytest.MonkeyPatch
) -> None:
    idx, root, _ = mixed
    plain = [run_query(idx, q, device="cpu") for q in QUERIES]
    assert {"clip", "clap"} <= set(plain[0].models)  # both spaces were searched
    import mmfind.models

    def no_full_model(*args: Any) -> Any:
        raise AssertionError("the light path loaded a full model")

    monkeypatch.setattr(mmfind.models, "load_image_encoder", no_full_model)
    monkeypatch.setattr(mmfind.models, "load_audio_encoder", no_full_model)
    for query, expected in zip(QUERIES, plain, strict=True):
        got = run_query(idx, query, device="cpu", light_text=True)
        assert got.results
        assert_same_answer(rows(got), rows(expected))
    with pytest.raises(AssertionError, match="loaded a full model"):  # --audio: the full CLAP
        run_query(idx, Query(audios=[str(root / "tone.wav")], kinds=["audio"]), light_text=True)


def test_audio_example_query_uses_the_full_clap_model(
    mixed: tuple[Path, Path, IndexSummary], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --audio, the clap space's text is encoded by the model that encodes the example."""
    idx, root, _ = mixed
    query = Query(text="a tone", audios=[str(root / "high.wav")], limit=10)
    expected = run_query(idx, query, device="cpu")
    asked: list[str] = []
    original = text_towers.light_encoder

    def spy(index_dir: Path, space: str, model: str) -> Any:
        asked.append(space)
        return original(index_dir, space, model)

    monkeypatch.setattr(text_towers, "light_encoder", spy)
    got = run_query(idx, query, device="cpu", light_text=True)
    assert_same_answer(rows(got), rows(expected))
    assert asked == ["clip"]  # the text half of the clip space may use its tower
    asked.clear()
    run_query(idx, Query(text="a tone", limit=10), device="cpu", light_text=True)
    assert sorted(asked) == ["clap", "clip"]  # the check can fail


def test_cold_cli_text_query_imports_neither_torch_nor_transformers(
    mixed: tuple[Path, Path, IndexSummary],
) -> None:
    idx = mixed[0]
    watched = ["torch", "transformers", "open_clip", "tokenizers"]
    light, light_run = cold_query(idx, "a dog barking", watched)
    assert light_run == {"code": 0, "imported": ["tokenizers"]}  # the CLAP tower's tokenizer
    assert {"clip", "clap"} <= set(light["models"])
    kinds = {r["kind"] for r in light["results"]}
    assert "audio" in kinds and kinds - {"audio"}  # the answer mixes both spaces
    plain, plain_run = cold_query(idx, "a dog barking", watched, {"MMFIND_TEXT_TOWER": "off"})
    assert plain_run["code"] == 0
    assert {"torch", "transformers"} <= set(plain_run["imported"])  # the check can fail
    assert_same_answer(light["results"], plain["results"])


def _entry(path: Path, name: str) -> dict[str, Any]:
    return next(e for e in tower_file.read_header(path)["arrays"] if e["name"] == name)


@pytest.mark.parametrize("damage", ["layer", "embedding row", "tokenizer", "truncated"])
def test_damaged_clap_tower_falls_back_to_the_full_model(
    mixed: tuple[Path, Path, IndexSummary], tmp_path: Path, damage: str
) -> None:
    import shutil

    idx = tmp_path / "idx"
    shutil.copytree(mixed[0], idx)
    path = text_towers.tower_path(idx, "clap")
    query = Query(text="a dog barking", limit=20)
    expected = run_query(idx, query, device="cpu")
    if damage == "layer":  # a weight matrix: not hashed when opened, caught by the probes
        entry = _entry(path, "layers.0.ffn_in.weight.T")
        with open(path, "r+b") as fh:
            fh.seek(entry["offset"] + 256)
            fh.write(np.full(64, 3.0, dtype=np.float32).tobytes())
    elif damage == "embedding row":  # the row of a token of this very query
        token = int(light_of(path).tokenize([query.text or ""])[0, 0, 2])
        entry = _entry(path, "word_embeddings")
        width = entry["shape"][1]
        with open(path, "r+b") as fh:
            fh.seek(entry["offset"] + token * width * 4)
            fh.write(np.zeros(4, dtype=np.float32).tobytes())
    elif damage == "tokenizer":  # hashed when opened
        entry = _entry(path, "tokenizer.json")
        with open(path, "r+b") as fh:
            fh.seek(entry["offset"] + 100)
            fh.write(b"#")
    else:
        os.truncate(path, path.stat().st_size - 1024)
    if damage in ("layer", "embedding row"):
        with pytest.raises(TowerError):
            light_of(path).encode_texts([query.text or ""])
    else:
        assert text_towers.light_encoder(idx, "clap", MODEL) is None
    got = run_query(idx, query, device="cpu", light_text=True)
    assert_same_answer(rows(got), rows(expected))
    light_of(path).encode_texts(["the query that loaded CLAP wrote a sound tower in its place"])


def test_refused_clap_model_leaves_no_tower_and_queries_work(
    tmp_path: Path, tiny_encoder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clap = fresh_clap()
    _silu_layers(clap.model)  # the full model runs it; the NumPy tower does not know SiLU
    root = tmp_path / "media"
    make_tone(root / "a.wav", seconds=2)
    make_noise(root / "b.flac", seconds=2)
    make_photo(root / "p.jpg", size=(64, 64), seed=5)
    idx = tmp_path / "idx"
    options = IndexOptions(paths=[str(root)], model="test-tiny", workers=0)
    summary = run_index(idx, options, encoders={"clip": tiny_encoder, "clap": clap})
    assert summary.text_towers["clap"].state == "refused"
    assert "silu" in (summary.text_towers["clap"].reason or "")
    assert summary.text_towers["clip"].state == "written"
    assert not text_towers.tower_path(idx, "clap").exists()
    assert text_towers.describe(idx, {"clap": MODEL})["clap"]["state"] == "refused"
    import mmfind.models

    monkeypatch.setattr(mmfind.models, "load_audio_encoder", lambda *args, **kw: clap)

    def tried(*args: Any) -> None:
        raise AssertionError("a refused model was tried again")

    monkeypatch.setattr(clap_tower_export, "export", tried)
    query = Query(text="noise", limit=5, kinds=["audio"])
    light = run_query(idx, query, device="cpu", light_text=True)  # finds no tower: full model
    plain = run_query(idx, query, device="cpu")
    assert len(light.results) == 2
    assert rows(light) == rows(plain)  # the very same model answered both
    assert not text_towers.tower_path(idx, "clap").exists()
    assert text_towers.ensure(idx, clap).state == "refused"  # remembered, not tried again


def test_info_shows_both_towers(mixed: tuple[Path, Path, IndexSummary]) -> None:
    from robustness.helpers import cli

    idx = mixed[0]
    result = cli("info", "--index", idx, "--json")
    assert result.exit_code == 0, result.output
    towers = json.loads(result.stdout)["text_towers"]
    assert set(towers) == {"clip", "clap"}
    for space in ("clip", "clap"):
        size = text_towers.tower_path(idx, space).stat().st_size
        assert towers[space] == {"state": "present", "bytes": size, "reason": None}
    table = cli("info", "--index", idx, env={"NO_COLOR": "1"})
    assert "clap text tower" in table.stdout and "clip text tower" in table.stdout


@pytest.mark.slow
def test_default_clap_architecture_text_tower(tmp_path: Path) -> None:
    """laion/clap-htsat-unfused's architecture (ClapConfig's defaults, random weights: no
    download) exports and agrees; prints the tower's size for the README."""
    from transformers import ClapConfig, ClapModel

    base = fresh_clap()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ClapModel(ClapConfig())
    tokenizer = _roberta_tokenizer()
    model.text_model.resize_token_embeddings(50265)  # RoBERTa's vocabulary size
    encoder = ClapEncoder(model, tokenizer, base.feature_extractor, "arch-test", "cpu")
    clap_tower_export.export(encoder, tmp_path / "t")
    light = LightClapTextEncoder.open(tmp_path / "t", "clap", "arch-test")
    assert (light.width, light.layers, light.heads, light.dim) == (768, 12, 12, 512)
    assert (light.activation, light.projection_activation) == ("gelu", "relu")
    texts = CLAP_TEXTS[:12]
    assert float(np.max(np.abs(light.encode_texts(texts) - encoder.encode_texts(texts)))) < 1e-5
    import time

    started = time.perf_counter()
    cold = LightClapTextEncoder.open(tmp_path / "t", "clap", "arch-test")
    cold.encode_texts(["a dog barking in the distance"])  # with the probes, as a cold query
    took = time.perf_counter() - started
    size = (tmp_path / "t").stat().st_size
    print(f"\ndefault CLAP text tower: {size} bytes; open + first encode {took:.3f} s")
