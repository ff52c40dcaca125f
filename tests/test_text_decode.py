"""Text files → chunks: encodings, failures, line ranges, overlap and coverage properties."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pytest
from audio_factory import (
    WORDS,
    make_numbered_lines,
    make_png_named,
    make_text_file,
    random_text,
)

import mmfind.media.text as text_mod
from mmfind.errors import MediaError
from mmfind.media.text import (
    DEFAULT_CHUNK_TOKENS,
    DEFAULT_CHUNK_WORDS,
    DEFAULT_OVERLAP_WORDS,
    MAX_TEXT_BYTES,
    TextChunk,
    chunk_text,
    decode_text,
    decode_text_file,
    token_cost,
)

SAMPLE = "Tax return 2023 — café notes\nsecond line 東京\n"
NO_BUDGET = 1_000_000  # max_tokens that never binds: pure word windows


def _reason(excinfo: pytest.ExceptionInfo[MediaError]) -> str:
    return excinfo.value.reason


# --- encodings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "bom"),
    [("utf-8", False), ("utf-8", True), ("utf-16-le", True), ("utf-16-be", True)],
)
def test_encodings_decode_to_the_same_text(tmp_path: Path, encoding: str, bom: bool) -> None:
    path = make_text_file(tmp_path / "notes.txt", SAMPLE, encoding=encoding, bom=bom)
    assert decode_text(path.read_bytes()) == SAMPLE  # BOM stripped, nothing else changed
    chunks = decode_text_file(path)
    assert chunks == [TextChunk("Tax return 2023 — café notes second line 東京", 1, 2)]


def test_utf32_with_bom_decodes() -> None:
    assert decode_text("hello wörld".encode("utf-32"))  # the codec writes a BOM == "hello wörld"


def test_latin1_bytes_are_not_text(tmp_path: Path) -> None:
    path = make_text_file(tmp_path / "old.txt", "café crème brûlée\n", encoding="latin-1")
    with pytest.raises(MediaError) as excinfo:
        decode_text_file(path)
    assert _reason(excinfo) == "not UTF-8 or UTF-16 text"


def test_png_named_txt_is_binary(tmp_path: Path) -> None:
    with pytest.raises(MediaError) as excinfo:
        decode_text_file(make_png_named(tmp_path / "notes.txt"))
    assert _reason(excinfo) == "binary file, not text"


@pytest.mark.parametrize(
    "data",
    [
        b"hello\x00world",  # a NUL byte
        b"abc" * 5000 + b"\x00",  # a NUL byte past the sniffed start
        bytes(range(1, 9)) * 40 + b"some text" * 10,  # control bytes
        b"\xff\xfeh\x00i\x00\x00\x00\x01\x00",  # UTF-16 whose characters hold NUL
    ],
)
def test_binary_content_is_refused(data: bytes) -> None:
    with pytest.raises(MediaError) as excinfo:
        decode_text(data)
    assert _reason(excinfo) == "binary file, not text"


def test_escape_sequences_and_form_feeds_are_text() -> None:
    data = b"\x1b[1mbold\x1b[0m plain\x0cnext page\ttab\n"
    assert decode_text(data) == data.decode()


@pytest.mark.parametrize("data", [b"", b"   \n\t\r\n  ", b"\xef\xbb\xbf", b"\xef\xbb\xbf \n"])
def test_empty_text(data: bytes) -> None:
    with pytest.raises(MediaError) as excinfo:
        decode_text(data)
    assert _reason(excinfo) == "empty text"


def test_empty_and_blank_files(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.md").write_bytes(b"\n\n   \n")
    with pytest.raises(MediaError) as excinfo:
        decode_text_file(tmp_path / "empty.txt")
    assert _reason(excinfo) == "empty file"
    with pytest.raises(MediaError) as excinfo:
        decode_text_file(tmp_path / "blank.md")
    assert _reason(excinfo) == "empty text"


def test_missing_file_is_a_media_error(tmp_path: Path) -> None:
    with pytest.raises(MediaError) as excinfo:
        decode_text_file(tmp_path / "gone.txt")
    assert _reason(excinfo).startswith("cannot read file")


# --- line ranges ---------------------------------------------------------------------------------


def test_line_ranges_on_a_hand_made_file(tmp_path: Path) -> None:
    # 10 lines of 3 words "l{line}w{n}"; windows of 6 words starting every 4 words
    path = make_numbered_lines(tmp_path / "ten.txt", lines=10, words_per_line=3)
    chunks = decode_text_file(path, words=6, overlap=2)
    assert [(c.line_start, c.line_end) for c in chunks] == [
        (1, 2), (2, 4), (3, 5), (5, 6), (6, 8), (7, 9), (9, 10),
    ]  # fmt: skip
    assert chunks[0].text == "l1w1 l1w2 l1w3 l2w1 l2w2 l2w3"
    assert chunks[1].text == "l2w2 l2w3 l3w1 l3w2 l3w3 l4w1"
    assert chunks[-1].text == "l9w1 l9w2 l9w3 l10w1 l10w2 l10w3"
    for chunk in chunks:  # every word names its line
        lines = [int(w[1 : w.index("w")]) for w in chunk.text.split()]
        assert (chunk.line_start, chunk.line_end) == (lines[0], lines[-1])


def test_blank_lines_and_indentation_count_as_lines() -> None:
    chunks = chunk_text("\n\n  # Title\n\n\t  body   text  \n\n")
    assert chunks == [TextChunk("# Title body text", 3, 5)]


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_crlf_and_cr_line_endings(tmp_path: Path, newline: str) -> None:
    text = "".join(f"line{i} alpha beta\n" for i in range(1, 21))
    lf = decode_text_file(make_text_file(tmp_path / "lf.txt", text), words=7, overlap=3)
    other = make_text_file(tmp_path / "crlf.txt", text, newline=newline)
    assert decode_text_file(other, words=7, overlap=3) == lf
    assert all("\r" not in c.text for c in lf)
    assert lf[-1].line_end == 20


def test_a_long_single_line() -> None:
    words = [f"w{i}" for i in range(1000)]
    chunks = chunk_text(" ".join(words), words=40, overlap=10, max_tokens=NO_BUDGET)
    assert all((c.line_start, c.line_end) == (1, 1) for c in chunks)
    assert len(chunks) == 33  # starts 0, 30, ..., 960; the one at 960 reaches the end
    assert chunks[-1].text.split()[-1] == "w999"


def test_one_word_gives_one_chunk() -> None:
    assert chunk_text("\n  hello \n") == [TextChunk("hello", 2, 2)]


def test_whitespace_normalised_markdown_kept() -> None:
    (chunk,) = chunk_text("## Heading\n\n- [link](http://x.y)  **bold**\t`code`\n")
    assert chunk.text == "## Heading - [link](http://x.y) **bold** `code`"


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        chunk_text("a b", words=0)
    with pytest.raises(ValueError):
        chunk_text("a b", words=4, overlap=4)
    with pytest.raises(ValueError):
        chunk_text("a b", words=4, overlap=-1)


def test_defaults() -> None:
    assert (DEFAULT_CHUNK_WORDS, DEFAULT_OVERLAP_WORDS) == (40, 10)
    assert MAX_TEXT_BYTES == 8 * 1024 * 1024
    assert chunk_text("") == []


# --- properties on random texts ------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_word_windows_overlap_and_cover_everything(seed: int) -> None:
    rng = random.Random(seed)
    text = random_text(rng.randint(1, 400), seed=seed)
    words = rng.randint(1, 50)
    overlap = rng.randint(0, words - 1)
    chunks = chunk_text(text, words=words, overlap=overlap, max_tokens=NO_BUDGET)
    assert chunks == chunk_text(text, words=words, overlap=overlap, max_tokens=NO_BUDGET)
    parts = [c.text.split() for c in chunks]
    assert all(len(p) == words for p in parts[:-1])
    assert 1 <= len(parts[-1]) <= words
    rebuilt = list(parts[0])
    for prev, part in itertools.pairwise(parts):
        assert part[:overlap] == prev[-overlap:] if overlap else True  # shared with the one before
        rebuilt += part[overlap:]
    assert rebuilt == text.split()  # every word, in order, nothing invented
    lines = text.replace("\r\n", "\n").split("\n")
    for chunk, part in zip(chunks, parts, strict=True):  # line ranges hold the chunk's ends
        assert chunk.line_start <= chunk.line_end
        assert part[0] in lines[chunk.line_start - 1].split()
        assert part[-1] in lines[chunk.line_end - 1].split()
        assert " ".join(part) == chunk.text  # single spaces


@pytest.mark.parametrize("seed", range(25))
def test_token_budget_keeps_coverage_and_order(seed: int) -> None:
    """Unique words of very different costs: chunks are consecutive, overlapping, in order,
    cover every word, stay within the budget, and only a budget cuts them short."""
    rng = random.Random(seed)
    latin = "abcdefghijklmnopqrstuvwxyz"
    cjk = "東京都庁日本首都天気公園散步看到很多狗在叫"

    def long_word(alphabet: str, length: int) -> str:  # random: its pieces never repeat
        return "".join(rng.choice(alphabet) for _ in range(length))

    pool = [*WORDS, "1234567890", "https://example.com/a/b?c=d"]
    words_in = [
        f"{i}{rng.choice(pool)}"
        if rng.random() < 0.9
        else f"{i}{long_word(rng.choice((latin, cjk)), rng.randint(20, 300))}"
        for i in range(rng.randint(1, 300))
    ]
    text = "\n".join(" ".join(words_in[i : i + 7]) for i in range(0, len(words_in), 7))
    words = rng.randint(5, 40)
    overlap = rng.randint(0, words - 1)
    max_tokens = rng.choice([20, 40, DEFAULT_CHUNK_TOKENS])
    chunks = chunk_text(text, words=words, overlap=overlap, max_tokens=max_tokens)
    pieces = [p for w in words_in for p in text_mod._split_long_word(w, max_tokens)]
    assert "".join(pieces) == "".join(words_in)
    prev_start, prev_end = -1, 0
    for chunk in chunks:
        part = chunk.text.split()
        # consecutive pieces, moving forward, overlapping or touching the chunk before
        starts = [
            s for s in range(prev_start + 1, prev_end + 1) if pieces[s : s + len(part)] == part
        ]
        assert starts, f"chunk {part!r} is not a run of pieces after {prev_start}"
        idx = list(range(starts[-1], starts[-1] + len(part)))
        assert len(part) <= words
        cost = sum(token_cost(p) for p in part)
        assert len(part) == 1 or cost <= max_tokens
        if len(part) < words and idx[-1] != len(pieces) - 1:
            assert cost + token_cost(pieces[idx[-1] + 1]) > max_tokens  # cut by the budget only
        prev_start, prev_end = idx[0], idx[-1] + 1
    assert prev_end == len(pieces)


def test_long_words_are_cut_into_pieces_that_fit() -> None:
    chunks = chunk_text("x" * 5000 + "\n" + "東京は日本の首都です" * 50)
    assert "".join(c.text.replace(" ", "") for c in chunks).startswith("x" * 100)
    for chunk in chunks:
        assert sum(token_cost(p) for p in chunk.text.split()) <= DEFAULT_CHUNK_TOKENS
    assert chunks[-1].line_end == 2


def test_token_cost_estimates() -> None:
    assert token_cost("the") == 1
    assert token_cost("2023") == 4  # CLIP tokenizes digits one by one
    assert token_cost("東京") == 6  # at most one token per UTF-8 byte
    assert token_cost("internationalization") > 2
    assert token_cost("JPEG,") >= 3


# --- size cap ------------------------------------------------------------------------------------


def test_only_the_first_max_text_bytes_are_indexed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(text_mod, "MAX_TEXT_BYTES", 1000)
    words = [f"w{i}" for i in range(2000)]
    path = make_text_file(tmp_path / "big.txt", " ".join(words) + "\n")
    chunks = decode_text_file(path, words=20, overlap=5)
    kept = " ".join(words).encode()[:1000].decode().split()
    assert chunks[-1].text.split()[-1] == kept[-1]
    assert chunks[0].text.split()[0] == "w0"


@pytest.mark.parametrize(("encoding", "bom"), [("utf-8", False), ("utf-16-le", True)])
def test_a_character_cut_by_the_cap_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoding: str, bom: bool
) -> None:
    monkeypatch.setattr(text_mod, "MAX_TEXT_BYTES", 1001)  # mid-character in both encodings
    path = make_text_file(tmp_path / "accents.txt", "éé " * 700, encoding=encoding, bom=bom)
    chunks = decode_text_file(path, overlap=0)
    assert set("".join(c.text for c in chunks)) == {"é", " "}
    words = [w for c in chunks for w in c.text.split()]
    assert 160 <= len(words) <= 200  # the cap keeps 1001 of the file's 3500 (+ BOM) bytes


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.txt")
    with pytest.raises(MediaError) as excinfo:
        decode_text_file(tmp_path / "pipe.txt")
    assert _reason(excinfo) == "not a regular file"
    with pytest.raises(MediaError) as excinfo:
        decode_text_file(tmp_path)
    assert _reason(excinfo).startswith("cannot read file")
