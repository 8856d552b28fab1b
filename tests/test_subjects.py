"""Offline words for what an album shows: the text tower against a fixed vocabulary."""

from __future__ import annotations

import numpy as np

from imageclust_daemon.grouping import label, subjects


def _unit(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)
    return out


VOCAB = ("dog", "beach", "cake")
WORDS = _unit(np.eye(3, 8, dtype=np.float32))


def _photos(word_counts: dict[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = [
        WORDS[w] + rng.normal(scale=0.05, size=8) for w, n in word_counts.items() for _ in range(n)
    ]
    return _unit(np.array(rows))


def test_a_subject_is_the_word_of_more_than_half_of_the_photos() -> None:
    assert subjects.subject_of(_photos({0: 9, 1: 8}), WORDS, VOCAB) == "dog"
    assert subjects.subject_of(_photos({0: 8, 1: 8}), WORDS, VOCAB) is None, "half is not most"
    assert subjects.subject_of(_photos({0: 6, 1: 5, 2: 5}), WORDS, VOCAB) is None
    assert subjects.subject_of(np.zeros((0, 8), np.float32), WORDS, VOCAB) is None


def test_the_vocabulary_is_embedded_once_then_read_back() -> None:
    kept: list[np.ndarray] = []
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return _unit(np.random.default_rng(0).normal(size=(len(texts), 8)))

    def cached() -> np.ndarray | None:
        return kept[-1] if kept else None

    first = subjects.word_vectors(cached, embed, kept.append)
    again = subjects.word_vectors(cached, embed, kept.append)
    assert len(calls) == 1 and calls[0][0] == "a photo of baby."
    assert first.shape == (len(subjects.SUBJECTS), 8) and np.array_equal(first, again)


def test_the_vocabulary_has_no_word_twice() -> None:
    assert len(set(subjects.SUBJECTS)) == len(subjects.SUBJECTS) >= 250


def test_an_offline_title_says_what_the_photos_show_where_it_fits() -> None:
    facts = label.GroupFacts(10, taken_at=("2021-06-12T10:00:00",) * 10, subject="dog")
    assert label.fallback_label(facts, "Paris", 3).title == "Dog, Paris"
    assert label.fallback_label(facts, None, 3).title == "Dog, June 2021"
    long_place = label.fallback_label(facts, "Santa Cruz de Tenerife", 3)
    assert long_place.title == "Dog, June 2021", "a place cut short is not said"
    party = label.GroupFacts(10, subject="birthday party")
    assert label.fallback_label(party, None, 3).title == "Birthday party"
