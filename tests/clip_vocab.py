"""CLIP's real vocabulary, rebuilt at test time from open_clip's own BPE file.

The tokenizer files of a CLIP model cannot be downloaded here. open_clip ships
the vocabulary CLIP was trained with, `bpe_simple_vocab_16e6.txt.gz`, inside the
MIT-licensed `open_clip_torch` wheel (installed with `--no-deps`: its tokenizer
module imports torch, so it is never imported; only the file is read). From it
this module rebuilds, the way open_clip's `SimpleTokenizer` reads it:

- `vocab.json` and `merges.txt` in Hugging Face's format. Byte for byte they are
  the published files: their sha256 equals the manifest's (a test checks it).
- a `tokenizer.json` built with the `tokenizers` library in the layout of
  Hugging Face's `CLIPConverter` (transformers' convert_slow_tokenizer): NFC,
  whitespace runs to one space, lower case; CLIP's split pattern; byte-level BPE
  with `</w>` word ends; start and end tokens around every text.
"""

from __future__ import annotations

import gzip
import importlib.util
import itertools
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

START, END = "<|startoftext|>", "<|endoftext|>"
# open_clip's SimpleTokenizer keeps lines 1 .. 49152-256-2 of the file (line 0 is a header):
# 48,894 merges; with 256 bytes, 256 bytes + "</w>" and the 2 special tokens, 49,408 ids.
_MERGES = 49152 - 256 - 2


def bpe_file() -> Path:
    """open_clip's BPE file, found without importing open_clip (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "open_clip_torch is not installed: pip install --no-deps 'open_clip_torch==3.3.0' "
            "(the README's test command does)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, as open_clip defines it."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, chars, strict=True)}


@dataclass(frozen=True)
class ClipVocab:
    vocab: dict[str, int]
    merges: list[str]  # "a b" pairs, by rank

    def vocab_json(self) -> bytes:
        """vocab.json as Hugging Face publishes it: compact JSON, non-ASCII kept as UTF-8."""
        return json.dumps(self.vocab, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def merges_txt(self) -> bytes:
        return ("\n".join(["#version: 0.2", *self.merges]) + "\n").encode("utf-8")


@lru_cache(maxsize=1)
def clip_vocab() -> ClipVocab:
    lines = gzip.decompress(bpe_file().read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : _MERGES + 1]
    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m.split()) for m in merges)]
    tokens += [START, END]
    return ClipVocab({t: i for i, t in enumerate(tokens)}, merges)


def write_tokenizer_json(path: Path, vocab: ClipVocab | None = None) -> Path:
    """A CLIP tokenizer.json (see the module docstring) at `path`."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    v = vocab or clip_vocab()
    pairs = [tuple(m.split()) for m in v.merges]
    tok = Tokenizer(
        BPE(
            vocab=v.vocab,
            merges=pairs,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=END,
        )
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(
        (END, v.vocab[END]), (START, v.vocab[START]), trim_offsets=False, add_prefix_space=False
    )
    tok.add_special_tokens([START, END])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


class ReferenceTokenizer:
    """open_clip's `SimpleTokenizer` (open_clip/tokenizer.py, MIT), rewritten here line for
    line over the same BPE file, since importing open_clip imports torch. Its default
    cleaning ("lower"): ftfy.fix_text, html.unescape twice, strip, whitespace runs to one
    space, lower case. Its special tokens are named <start_of_text> and <end_of_text>
    (ids 49406 and 49407, the ids of CLIP's <|startoftext|> and <|endoftext|>)."""

    SPECIALS = ("<start_of_text>", "<end_of_text>")

    def __init__(self) -> None:
        import regex

        v = clip_vocab()
        self.byte_encoder = bytes_to_unicode()
        self.encoder = {t: i for t, i in v.vocab.items() if t not in (START, END)}
        self.encoder.update({self.SPECIALS[0]: v.vocab[START], self.SPECIALS[1]: v.vocab[END]})
        self.bpe_ranks = {tuple(m.split()): i for i, m in enumerate(v.merges)}
        self.cache = {t: t for t in self.SPECIALS}
        self.pat = regex.compile(
            "|".join(self.SPECIALS)
            + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.sot, self.eot = v.vocab[START], v.vocab[END]

    @staticmethod
    def clean(text: str) -> str:
        import html

        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return " ".join(text.split()).strip().lower()

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word: tuple[str, ...] = (*token[:-1], token[-1] + "</w>")
        pairs = set(itertools.pairwise(word))
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = set(itertools.pairwise(word))
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for token in self.pat.findall(self.clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids

    def tokenize(self, text: str, context_length: int = 77) -> list[int]:
        """open_clip's `__call__` for one text, before padding: start, ids, end, truncated
        with the end token kept last."""
        tokens = [self.sot, *self.encode(text), self.eot]
        if len(tokens) > context_length:
            tokens = tokens[:context_length]
            tokens[-1] = self.eot
        return tokens
