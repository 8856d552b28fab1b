"""CLIP's text tokenizer: reading and checking a model's `tokenizer.json`, and turning
text into the text tower's token ids exactly as open_clip does (`ClipTokenizer`).

A `tokenizer.json` (Hugging Face's `tokenizers` format) holds the whole
pipeline: normalization, the pre-tokenizer's split pattern, the byte-level BPE
vocabulary and merges, and the start and end tokens. The `tokenizers` library
(Rust, Apache-2.0, Hugging Face's own) reads and runs it; writing BPE by hand
would be slower and one more thing to get subtly wrong.

A tokenizer file that parses is not yet the right one: a file for another
vocabulary encodes every text to other ids, and the text tower then embeds
nonsense without any error. So a file is checked by content: it must encode a
probe text to the ids the manifest records, and (when the vocabulary's
original `vocab.json` and `merges.txt` are at hand, checked by their sha256) hold
exactly that vocabulary and those merges.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imageclust_daemon.errors import ModelError

START, END = "<|startoftext|>", "<|endoftext|>"
CONTEXT_LENGTH = 77  # every CLIP text tower's input_ids length
_WHITESPACE = re.compile(r"\s+")


def clean(text: str) -> str:
    """open_clip's default cleaning ("lower"): `ftfy.fix_text`, HTML entities unescaped
    twice, whitespace runs to one space, stripped, lower-cased."""
    import ftfy  # imported here: only search needs it

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


class ClipTokenizer:
    """Text -> CLIP token ids: open_clip's cleaning, then the model's own BPE
    (`tokenizer.json`), start and end tokens around it, truncated to the context length
    with the end token kept last, padded with 0."""

    def __init__(
        self, tokenizer: Any | str | os.PathLike[str], context_length: int = CONTEXT_LENGTH
    ) -> None:
        """`tokenizer`: a `tokenizer.json`'s path (see `from_file`), or a loaded
        `tokenizers.Tokenizer`."""
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = _load_as_text(Path(tokenizer))
        start, end = tokenizer.token_to_id(START), tokenizer.token_to_id(END)
        if start is None or end is None:
            raise ModelError(f"the tokenizer has no {START} or {END} token: not CLIP's")
        self._tok, self.start_id, self.end_id = tokenizer, int(start), int(end)
        self.context_length = context_length

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ClipTokenizer:
        """The tokenizer in `path` (a str or a Path, as `tokenizers.Tokenizer.from_file`
        and open_clip take it), with what a person types read as text: its control
        tokens are not matched inside the text (open_clip matches only its own names for
        them, <start_of_text> and <end_of_text>, which no published tokenizer.json uses)."""
        return cls(_load_as_text(Path(path)))

    def encode(self, text: str) -> list[int]:
        """One text's ids, start and end tokens included, at most `context_length`."""
        return self._ids(self._tok.encode(clean(text), add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """int64 [len(texts), context_length], as the text tower's `input_ids` takes them."""
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        cleaned = [clean(t) for t in texts]
        for row, enc in enumerate(self._tok.encode_batch(cleaned, add_special_tokens=False)):
            ids = self._ids(enc.ids)
            out[row, : len(ids)] = ids
        return out

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """As open_clip's tokenizer is called: one text or many -> int64 [N, context_length]."""
        return self.encode_batch([texts] if isinstance(texts, str) else texts)

    def _ids(self, body: Sequence[int]) -> list[int]:
        return [self.start_id, *body[: self.context_length - 2], self.end_id]


def load(path: Path) -> Any:
    """A `tokenizers.Tokenizer` read from `path`; ModelError naming the file if it cannot be."""
    from tokenizers import Tokenizer  # imported here: only search and model checks need it

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a plain Exception with its parse error
        raise ModelError(f"{path}: not a usable tokenizer.json: {_first_line(exc)}") from None


def _load_as_text(path: Path) -> Any:
    """`load`, with the added tokens dropped, so they are not matched inside a text."""
    from tokenizers import Tokenizer

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        doc["added_tokens"] = []
        return Tokenizer.from_str(json.dumps(doc))
    except Exception as exc:  # OSError, bad JSON, the Rust side's parse error
        raise ModelError(f"{path}: not a usable tokenizer.json: {_first_line(exc)}") from None


def problems(
    path: Path,
    *,
    probe_text: str | None,
    probe_ids: tuple[int, ...] = (),
    vocab: Path | None = None,
    merges: Path | None = None,
) -> list[str]:
    """What keeps `path` from being the tokenizer described (empty: nothing).

    Checks that it parses; that it encodes `probe_text` to exactly `probe_ids`
    (start and end tokens included); and, given `vocab` (vocab.json) and/or
    `merges` (merges.txt), that its BPE vocabulary and merges equal theirs.
    """
    try:
        tok = load(path)
    except ModelError as exc:
        return [str(exc)]
    found: list[str] = []
    if probe_text is not None:
        ids = tuple(tok.encode(probe_text).ids)
        if ids != probe_ids:
            found.append(
                f"it encodes {probe_text!r} as {list(ids)}, expected {list(probe_ids)}: "
                "a tokenizer for another vocabulary"
            )
    if vocab is None and merges is None:
        return found
    try:
        model = json.loads(path.read_text(encoding="utf-8")).get("model", {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        return [*found, f"cannot read its vocabulary: {_first_line(exc)}"]
    if vocab is not None:
        try:
            expected = json.loads(vocab.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return [*found, f"cannot read {vocab.name} to compare: {_first_line(exc)}"]
        if model.get("vocab") != expected:
            found.append(f"its vocabulary is not the one in {vocab.name}")
    if merges is not None:
        try:
            lines = merges.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            return [*found, f"cannot read {merges.name} to compare: {_first_line(exc)}"]
        wanted = [line for line in lines if line and not line.startswith("#version")]
        if _merge_lines(model.get("merges")) != wanted:
            found.append(f"its merges are not the ones in {merges.name}")
    return found


def _merge_lines(merges: object) -> list[str] | None:
    """Merges as "a b" lines: tokenizers writes them as such strings or as [a, b] pairs."""
    if not isinstance(merges, list):
        return None
    lines = []
    for merge in merges:
        if isinstance(merge, str):
            lines.append(merge)
        elif isinstance(merge, list) and len(merge) == 2:
            lines.append(f"{merge[0]} {merge[1]}")
        else:
            return None
    return lines


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
