"""Text files: bytes → text → overlapping chunks that fit the image-text model's context.

Runs inside decode worker processes, so it stays light: the standard library only. Every failure
caused by the input becomes a `MediaError` with a short reason for the user.

- Encodings: UTF-8 (a byte-order mark is dropped), UTF-16 and UTF-32 with a byte-order mark.
  Anything else (latin-1, UTF-16 without BOM, ...) is "not UTF-8 or UTF-16 text"; NUL bytes or
  many control bytes make it "binary file, not text".
- Size: only the first `MAX_TEXT_BYTES` (8 MiB) of a file are read and indexed; a character cut
  in two by that limit is dropped.
- Lines are counted as editors count them: "\\n", "\\r\\n" and a lone "\\r" each end a line.
- Chunks: `words` consecutive words, neighbours sharing `overlap` words, whitespace inside a chunk
  collapsed to single spaces, markdown left as it is. CLIP reads 77 tokens (75 after its start
  and end tokens); 40 ordinary words are about 60. Words that cost many tokens (digits count one
  token each, non-Latin scripts one or more per character) end a chunk early, once its estimated
  cost would pass `max_tokens`, and a single "word" too long for one chunk (a URL, a line of
  Chinese) is cut into pieces that fit; so chunks are never cut short by the tokenizer's context.
  (Measured with open_clip's tokenizer on English, markdown, code, German, French, Russian,
  Greek, CJK, numbers and URLs: no chunk over 75 tokens.) For a model with another context
  length, pass `max_tokens` = context length − 5 (59 for SigLIP's 64).
"""

from __future__ import annotations

import codecs
import os
import stat
from dataclasses import dataclass

from mmfind.errors import MediaError

DEFAULT_CHUNK_WORDS = 40  # ~60 CLIP tokens: fits a 77-token context
DEFAULT_OVERLAP_WORDS = 10
DEFAULT_CHUNK_TOKENS = 72  # estimated-token budget of a chunk: CLIP's 77 less start/end + slack
MAX_TEXT_BYTES = 8 * 1024 * 1024  # larger files: only the first 8 MiB are indexed

_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Control bytes that never appear in text (everything below 0x20 but \t \n \v \f \r and ESC).
_BINARY_BYTES = frozenset(set(range(0x20)) - {0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1B})
_SNIFF_BYTES = 8192
_MAX_CONTROL_RATIO = 0.01  # more control bytes than this in the first 8 KiB: binary


@dataclass(frozen=True)
class TextChunk:
    """Consecutive words of a text file, as one item of the index."""

    text: str
    line_start: int  # 1-based, inclusive
    line_end: int


def decode_text_file(
    path: str | os.PathLike[str],
    *,
    words: int = DEFAULT_CHUNK_WORDS,
    overlap: int = DEFAULT_OVERLAP_WORDS,
    max_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> list[TextChunk]:
    """Read (the first `MAX_TEXT_BYTES` of) a text file and chunk it; never an empty list."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode) and not os.path.isdir(path):
            raise MediaError("not a regular file")  # a FIFO would block the worker forever
        with open(path, "rb") as f:
            data = f.read(MAX_TEXT_BYTES + 1)
    except OSError as exc:
        raise MediaError(f"cannot read file: {exc.strerror or exc}") from exc
    if not data:
        raise MediaError("empty file")
    truncated = len(data) > MAX_TEXT_BYTES
    text = decode_text(data[:MAX_TEXT_BYTES], truncated=truncated)
    return chunk_text(text, words=words, overlap=overlap, max_tokens=max_tokens)


def decode_text(data: bytes, *, truncated: bool = False) -> str:
    """Bytes → str: UTF-8 (BOM stripped) or UTF-16/32 with a BOM; else a `MediaError`.

    `truncated=True` says `data` is the start of a longer file: a character cut at the end is
    dropped rather than reported as undecodable.
    """
    encoding = None
    for bom, name in _BOMS:
        if data.startswith(bom):
            data, encoding = data[len(bom) :], name
            break
    if encoding is None and _looks_binary(data):
        raise MediaError("binary file, not text")
    try:
        text = codecs.getincrementaldecoder(encoding or "utf-8")(errors="strict").decode(
            data, final=not truncated
        )
    except UnicodeDecodeError as exc:
        raise MediaError("not UTF-8 or UTF-16 text") from exc
    if encoding is not None and _looks_binary_text(text):
        raise MediaError("binary file, not text")
    if not text.strip():
        raise MediaError("empty text")
    return text


def chunk_text(
    text: str,
    *,
    words: int = DEFAULT_CHUNK_WORDS,
    overlap: int = DEFAULT_OVERLAP_WORDS,
    max_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> list[TextChunk]:
    """Cut text into chunks of up to `words` words, neighbours sharing `overlap` words.

    Deterministic. Every word is in at least one chunk; a chunk holds `words` words unless it is
    the last one, or its estimated token cost would pass `max_tokens` (see the module notes); a
    chunk cut short that way shares proportionally fewer words with the next one. Whitespace-only
    text gives no chunks.
    """
    if words < 1:
        raise ValueError(f"words must be at least 1, got {words}")
    if not 0 <= overlap < words:
        raise ValueError(f"overlap must be in [0, words), got {overlap} with words={words}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    # parallel lists (not tuples): an 8 MiB file holds a million words or more
    found: list[str] = []  # the words, long ones cut into pieces
    line_of: list[int] = []  # 1-based line number of each
    cost_of: list[int] = []  # estimated tokens of each
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for number, line in enumerate(lines, start=1):
        for word in line.split():
            for piece in _split_long_word(word, max_tokens):
                found.append(piece)
                line_of.append(number)
                cost_of.append(token_cost(piece))

    chunks: list[TextChunk] = []
    start, n = 0, len(found)
    while start < n:
        end, cost = start, 0
        while (
            end < n and end - start < words and (end == start or cost + cost_of[end] <= max_tokens)
        ):
            cost += cost_of[end]
            end += 1
        chunks.append(TextChunk(" ".join(found[start:end]), line_of[start], line_of[end - 1]))
        if end == n:
            break
        shared = overlap * (end - start) // words  # = overlap for a full chunk
        start = max(start + 1, end - shared)
    return chunks


def token_cost(word: str) -> int:
    """A cheap, deliberately pessimistic estimate of the CLIP BPE tokens a word (no spaces) takes.

    Measured against open_clip's tokenizer: a run of ASCII letters is one token up to 5 letters,
    two up to 8, then one per 3 letters (twice that next to accented letters, which break BPE
    merges); digits are one token each, ASCII punctuation at most one per character, and any other
    character at most one per UTF-8 byte (byte-level BPE never does worse).
    """
    if word.isascii() and word.isalpha():  # the common case, fast
        return _letters_cost(word, wide=False)
    wide = not word.isascii()
    cost = 0
    start = -1  # start of the current run of ASCII letters
    for i, ch in enumerate(word):
        if ch.isascii() and ch.isalpha():
            if start < 0:
                start = i
            continue
        if start >= 0:
            cost += _letters_cost(word[start:i], wide)
            start = -1
        cost += 1 if ch.isascii() else len(ch.encode("utf-8", "surrogatepass"))
    if start >= 0:
        cost += _letters_cost(word[start:], wide)
    return max(cost, 1)


def _letters_cost(run: str, wide: bool) -> int:
    """Tokens of a run of ASCII letters; `wide`: next to non-ASCII letters."""
    n = len(run)
    if wide or (n > 1 and run.isupper()):  # broken merges, acronyms: about 2 letters a token
        return (n + 1) // 2
    return 1 if n <= 5 else 2 if n <= 8 else (n + 2) // 3


def _split_long_word(word: str, max_tokens: int) -> list[str]:
    """The word, or consecutive pieces of it each costing at most `max_tokens` // 2 tokens.

    Pieces are measured by a strict upper bound (one token per byte), so they always fit.
    """
    budget = max(1, max_tokens // 2)
    if len(word) <= budget // 4 or token_cost(word) <= budget:
        return [word]
    pieces: list[str] = []
    start, cost = 0, 0
    for i, ch in enumerate(word):
        add = 1 if ch.isascii() else len(ch.encode("utf-8", "surrogatepass"))
        if i > start and cost + add > budget:
            pieces.append(word[start:i])
            start, cost = i, 0
        cost += add
    pieces.append(word[start:])
    return pieces


def _looks_binary(data: bytes) -> bool:
    """NUL bytes anywhere, or more than 1% of other control bytes in the first 8 KiB."""
    if b"\x00" in data:
        return True
    sample = data[:_SNIFF_BYTES]
    controls = sum(1 for b in sample if b in _BINARY_BYTES)
    return controls > _MAX_CONTROL_RATIO * max(len(sample), 1)


def _looks_binary_text(text: str) -> bool:
    """`_looks_binary` for text decoded after a byte-order mark (UTF-16 bytes hold NULs)."""
    if "\x00" in text:
        return True
    sample = text[:_SNIFF_BYTES]
    controls = sum(1 for ch in sample if ord(ch) in _BINARY_BYTES)
    return controls > _MAX_CONTROL_RATIO * max(len(sample), 1)
