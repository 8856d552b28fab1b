"""`ClipTokenizer` against open_clip's own tokenizer, rebuilt from its BPE file.

The corpus is generated (seeded): plain captions, accents and combining marks,
scripts from Latin to CJK, emoji with skin tones and joiners, HTML entities
(named, numeric, double-escaped), mojibake (UTF-8 read as cp1252 or Latin-1),
odd whitespace and control characters, digits and punctuation runs, the control
tokens' names as text, and texts far longer than the context. Every id up to and
including the end token must be open_clip's.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from imageclust_daemon.errors import ModelError
from imageclust_daemon.model.tokenizer import CONTEXT_LENGTH, ClipTokenizer, clean
from tests.clip_vocab import ReferenceTokenizer, write_tokenizer_json

WORDS = [
    "a",
    "photo",
    "of",
    "dog",
    "cat",
    "beach",
    "sunset",
    "mountain",
    "snow",
    "birthday",
    "cake",
    "wedding",
    "city",
    "night",
    "street",
    "market",
    "forest",
    "river",
    "boat",
    "kids",
    "playing",
    "grandma",
    "garden",
    "flowers",
    "car",
    "train",
    "airport",
    "museum",
    "painting",
    "concert",
    "crowd",
    "fireworks",
    "christmas",
    "tree",
]
ACCENTED = "café naïve résumé Zürich São Paulo Kraków Ærø smörgåsbord piñata façade Øresund"
SCRIPTS = [
    "Привет мир фото собаки",
    "東京の夜景と桜",
    "서울 한강 공원",
    "مرحبا بالعالم صورة",
    "שלום עולם",
    "नमस्ते दुनिया तस्वीर",
    "Γειά σου κόσμε",
    "สวัสดีชาวโลก",
    " İstanbul'da ıslak sokaklar",
    "straße STRASSE Maße",
]
EMOJI = ["🐶", "🏖️", "👨‍👩‍👧‍👦", "👍🏽", "🇫🇷", "🎂🎉", "❤️", "🧑🏻‍🚀", "☀", "😀😃😄"]
ENTITIES = [
    "&amp;",
    "&lt;b&gt;",
    "&quot;x&quot;",
    "&#39;",
    "&#x1F600;",
    "&amp;amp;",
    "&nbsp;",
    "&eacute;",
]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\x0b", "\x1c"]
CONTROLS = ["\x00", "\x07", "\x7f", "\u200b", "\ufeff", "\u202e", "\x1b[31m"]
PUNCT = [
    "!",
    "?!",
    "...",
    "—",
    "'s",
    "'ll",
    "'D",
    "O'Neil",
    "#tbt",
    "@home",
    "1,000",
    "3.14",
    "½",
    "²",
]


def _mojibake(text: str, rng: random.Random) -> str:
    raw = text.encode("utf-8")
    return raw.decode("cp1252" if rng.random() < 0.5 else "latin-1", errors="replace")


def _piece(rng: random.Random) -> str:
    kind = rng.randrange(9)
    if kind == 0:
        return rng.choice(ACCENTED.split())
    if kind == 1:
        return rng.choice(SCRIPTS)
    if kind == 2:
        return rng.choice(EMOJI)
    if kind == 3:
        return rng.choice(ENTITIES)
    if kind == 4:
        return rng.choice(PUNCT)
    if kind == 5:
        return rng.choice(CONTROLS)
    if kind == 6:
        return str(rng.randrange(10 ** rng.randrange(1, 9)))
    word = rng.choice(WORDS)
    return word.upper() if rng.random() < 0.2 else word.capitalize() if rng.random() < 0.3 else word


def corpus(n: int = 1200, seed: int = 20261130) -> list[str]:
    rng = random.Random(seed)
    texts = [
        "",
        " ",
        "a photo of a cat",
        "<|startoftext|>a dog<|endoftext|>",
        "<|ENDOFTEXT|>",
        "Ã©tÃ© Ã  la plage",  # "été à la plage" read as cp1252
        "&amp;lt;3",
        "x" * 10_000,
        " ".join(WORDS * 10),
        "🐶" * 200,
    ]
    while len(texts) < n:
        size = rng.choice([1, 2, 3, 5, 8, 13, 40, 120])
        text = "".join(_piece(rng) + rng.choice(SPACES) for _ in range(size))
        if rng.random() < 0.15:
            text = _mojibake(text, rng)
        texts.append(text)
    return texts


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ClipTokenizer:
    return ClipTokenizer.from_file(write_tokenizer_json(tmp_path_factory.mktemp("tok") / "t.json"))


def test_every_id_up_to_the_end_token_is_open_clips(tokenizer: ClipTokenizer) -> None:
    reference = ReferenceTokenizer()
    texts = corpus()
    assert len(texts) >= 1000
    batch = tokenizer.encode_batch(texts)
    assert batch.dtype == np.int64 and batch.shape == (len(texts), CONTEXT_LENGTH)
    differ = []
    for row, text in zip(batch, texts, strict=True):
        expected = reference.tokenize(text)
        got = row[: len(expected)].tolist()
        if got != expected or row[len(expected) :].any():
            differ.append((text[:60], got[:12], expected[:12]))
    assert differ == [], f"{len(differ)} of {len(texts)} differ, e.g. {differ[:3]}"
    truncated = sum(1 for t in texts if len(reference.encode(t)) > CONTEXT_LENGTH - 2)
    assert truncated >= 50, "the corpus has long texts, cut to 77 with the end token last"


def test_start_end_truncation_and_padding(tokenizer: ClipTokenizer) -> None:
    assert tokenizer.encode("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer.encode("") == [49406, 49407]
    long = tokenizer.encode("dog " * 500)
    assert len(long) == CONTEXT_LENGTH and long[0] == 49406 and long[-1] == 49407
    row = tokenizer.encode_batch(["a cat"])[0]
    assert row[:4].tolist() == [49406, 320, 2368, 49407] and not row[4:].any()


def test_it_loads_from_a_path_and_is_called_like_open_clips(tmp_path: Path) -> None:
    path = write_tokenizer_json(tmp_path / "tokenizer.json")
    tok = ClipTokenizer(str(path))
    assert tok("a cat").shape == (1, CONTEXT_LENGTH)
    assert tok(["a cat", "a dog"])[1, :4].tolist() == [49406, 320, 1929, 49407]


def test_cleaning_is_open_clips() -> None:
    assert clean("  Caf\u00c3\u00a9  &amp;amp;\tBAR\n") == "café & bar"
    assert clean("\u00a0\u3000") == ""


def test_a_file_that_is_not_a_tokenizer_names_itself(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelError, match=r"tokenizer\.json: not a usable tokenizer\.json"):
        ClipTokenizer.from_file(bad)


def test_a_path_given_as_a_string_is_read_too(tmp_path: Path, tokenizer: ClipTokenizer) -> None:
    """Before: from_file("tokenizer.json") failed with "'str' object has no attribute
    'read_text'", where tokenizers and open_clip take a str."""
    path = write_tokenizer_json(tmp_path / "tokenizer.json")
    assert ClipTokenizer.from_file(str(path)).encode("a photo of a cat") == tokenizer.encode(
        "a photo of a cat"
    )
