"""Search by words and by example: the snapshot beside the catalog, ranking, the commands.

Everything runs through the real code path: a library of generated photos indexed
by the `imageclust` command with the tiny vision model, a tiny text tower with the
CLIP text export's contract and CLIP's real tokenizer (rebuilt from open_clip's BPE
file), and the published catalog and snapshot read back as any reader would.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imageclust_daemon.errors import DatabaseError
from imageclust_daemon.published import catalog, search
from imageclust_daemon.published.reader import open_catalog
from imageclust_daemon.state.store import Store
from tests.conftest import library_config, run_cli
from tests.library import scene_library, write_variant
from tests.photos import photo_like, save_jpeg


def _build(
    base: Path, tiny_model: Path, text_files: dict[str, Path]
) -> tuple[Path, Path, dict[str, int]]:
    """Three scenes of six photos, a copy of one photo, and a file that is no image,
    indexed and published by the command in `base`. Returns (config, root, {path: scene})."""
    root = base / "Photos"
    truth = scene_library(root, 3, 6)
    first = sorted(truth)[0]
    shutil.copy(first, root / "copy of first.jpg")
    truth[str(root / "copy of first.jpg")] = truth[first]
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    config = _config(base, root, tiny_model, text_files)
    result = run_cli("--config", str(config), "index", "--no-progress")
    assert result.returncode == 0, result.stderr
    return config, root, truth


def _config(folder: Path, root: Path, tiny_model: Path, text_files: dict[str, Path]) -> Path:
    return library_config(folder, root, tiny_model, text_files)


@pytest.fixture(scope="module")
def indexed(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, text_files: dict[str, Path]
) -> tuple[Path, Path, dict[str, int]]:
    """The library, indexed once for the module (its photos are only read)."""
    return _build(tmp_path_factory.mktemp("search"), tiny_model, text_files)


@pytest.fixture
def library(
    indexed: tuple[Path, Path, dict[str, int]],
    tmp_path: Path,
    tiny_model: Path,
    text_files: dict[str, Path],
) -> tuple[Path, Path, dict[str, int]]:
    """The module's indexed library with a data folder of this test's own (its state,
    catalog and snapshot copied: a test may damage or republish them); the photos are
    the module's, never written. Returns (config, root, {path: scene})."""
    config, root, truth = indexed
    shutil.copytree(config.parent / "data", tmp_path / "data")
    return _config(tmp_path, root, tiny_model, text_files), root, dict(truth)


@pytest.fixture
def own_library(
    tmp_path: Path, tiny_model: Path, text_files: dict[str, Path]
) -> tuple[Path, Path, dict[str, int]]:
    """The library indexed for this test alone (it adds photos)."""
    return _build(tmp_path, tiny_model, text_files)


def _json(config: Path, *args: str) -> Any:
    result = run_cli("--config", str(config), *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _data(config: Path) -> Path:
    return config.parent / "data"


def test_similar_ranks_a_photos_own_scene_first_and_leaves_the_photo_out(
    library: tuple[Path, Path, dict[str, int]],
) -> None:
    config, _, truth = library
    for example in sorted(truth)[1::4]:
        found = _json(config, "similar", example, "--limit", "5")
        scenes = [truth[p] for hit in found for p in hit["paths"][:1]]
        assert scenes == [truth[example]] * 5, (example, found)
        assert all(example not in hit["paths"] for hit in found), "the example is left out"
        scores = [hit["score"] for hit in found]
        assert scores == sorted(scores, reverse=True)
        assert {hit["cluster_id"] for hit in found} != {None}


def test_an_image_from_outside_the_library_is_embedded_on_the_fly(
    library: tuple[Path, Path, dict[str, int]], tmp_path: Path
) -> None:
    config, _, truth = library
    written = write_variant(2, 99_999, tmp_path / "elsewhere")  # scene 2, never indexed
    found = _json(config, "similar", str(written), "--limit", "3")
    assert [truth[hit["paths"][0]] for hit in found] == [2, 2, 2]


def test_duplicates_count_once_and_failed_photos_never_appear(
    library: tuple[Path, Path, dict[str, int]],
) -> None:
    config, root, truth = library
    found = _json(config, "similar", str(root / "event 1" / "IMG_000.jpg"), "--limit", "100")
    paths = [p for hit in found for p in hit["paths"]]
    assert len(paths) == len(set(paths))
    assert not any(p.endswith("broken.jpg") for p in paths), "failed photos never appear"
    copies = [hit for hit in found if len(hit["paths"]) == 2]
    assert len(copies) == 1 and any(p.endswith("copy of first.jpg") for p in copies[0]["paths"])
    assert len(found) == len(truth) - 2, "every other distinct photo, once"
    assert set(found[0]) == {"score", "paths", "cluster_id", "title", "offline"}


def test_words_rank_as_the_text_embedding_against_every_photo(
    library: tuple[Path, Path, dict[str, int]], text_files: dict[str, Path]
) -> None:
    """The answer is the exact top of cosine similarity between the text's embedding (the
    real tokenizer and text tower) and the stored embeddings of the indexed photos."""
    from imageclust_daemon import config as config_module
    from imageclust_daemon.model import models

    config, _, _ = library
    cfg = config_module.load(config)
    words = models.open_text_model(models.locate(cfg), vision_dim=32)
    query = words.embed(["a dog running on the beach at sunset"])[0]
    with Store.open_readonly(cfg.state_db_path) as store:
        rows = store.conn.execute("SELECT DISTINCT model_id FROM embeddings").fetchall()
        assert len(rows) == 1
        hashes, x = store.live_embeddings(rows[0][0])
    expected = sorted(zip((x @ query).tolist(), hashes, strict=True), reverse=True)[:7]
    found = search.by_words(cfg, "a dog running on the beach at sunset", 7)
    assert [h.content_hash for h in found] == [h for _, h in expected]
    assert [round(h.score, 5) for h in found] == [round(s, 5) for s, _ in expected]
    cli = _json(config, "search", "a dog running on the beach at sunset", "--limit", "7")
    assert [hit["score"] for hit in cli] == [round(h.score, 4) for h in found]


@pytest.mark.parametrize(
    "text", ["x" * 10_000, "caf\u00e9 \x01\x02\x1b[31m", "🐶" * 300, "&amp;lt;3", "<|endoftext|>"]
)
def test_odd_text_gets_an_answer(library: tuple[Path, Path, dict[str, int]], text: str) -> None:
    config, _, _ = library
    assert len(_json(config, "search", text, "--limit", "3")) == 3


def test_invalid_utf8_on_the_command_line_gets_an_answer(
    library: tuple[Path, Path, dict[str, int]],
) -> None:
    config, _, _ = library
    result = run_cli("--config", str(config), "search", os.fsdecode(b"caf\xe9"), "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 18  # every distinct indexed photo (limit 20)


def test_empty_text_is_a_usage_error(library: tuple[Path, Path, dict[str, int]]) -> None:
    config, _, _ = library
    result = run_cli("--config", str(config), "search", "  ")
    assert result.returncode == 2 and "nothing to search for" in result.stderr
    assert "Traceback" not in result.stderr


def test_csv_and_text_output(library: tuple[Path, Path, dict[str, int]]) -> None:
    config, root, _ = library
    example = str(root / "event 0" / "IMG_001.jpeg")
    found = _json(config, "similar", example, "--limit", "2")
    csv_out = run_cli("--config", str(config), "similar", example, "--limit", "2", "--csv")
    lines = csv_out.stdout.splitlines()
    assert lines[0] == "score,cluster_id,title,offline,paths" and len(lines) >= 3
    assert lines[1].startswith(f"{found[0]['score']:.4f},{found[0]['cluster_id']},")
    text = run_cli("--config", str(config), "similar", example, "--limit", "2").stdout
    assert found[0]["paths"][0] in text and f"album {found[0]['cluster_id']}" in text


def test_without_a_text_model_the_message_says_how_to_fetch_it(
    library: tuple[Path, Path, dict[str, int]], tmp_path: Path, text_files: dict[str, Path]
) -> None:
    config, _, _ = library
    body = config.read_text().replace(str(text_files["text"]), str(tmp_path / "absent.onnx"))
    config.write_text(body)
    result = run_cli("--config", str(config), "search", "a dog")
    assert result.returncode == 1 and "imageclust models download" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_text_tower_of_another_dimension_is_refused(
    library: tuple[Path, Path, dict[str, int]], text_files: dict[str, Path]
) -> None:
    config, _, _ = library
    body = config.read_text().replace(str(text_files["text"]), str(text_files["other_dim"]))
    config.write_text(body)
    result = run_cli("--config", str(config), "search", "a dog")
    assert result.returncode == 1
    assert "24 dimensions and the vision tower into 32: not a pair" in result.stderr


@pytest.mark.parametrize("damage", ["missing", "truncated", "stale"])
def test_a_missing_damaged_or_stale_snapshot_is_a_message_and_the_next_publish_repairs_it(
    library: tuple[Path, Path, dict[str, int]], damage: str
) -> None:
    config, root, _ = library
    data = _data(config)
    snapshot = search.open_for(data / "catalog.sqlite").path
    snapshot.chmod(0o644)
    if damage == "missing":
        snapshot.unlink()
    elif damage == "truncated":
        with open(snapshot, "r+b") as f:
            f.truncate(snapshot.stat().st_size - 7)
    else:  # a snapshot of other contents under the name the catalog gives
        body = bytearray(snapshot.read_bytes())
        header_end = 12 + int.from_bytes(body[8:12], "little")
        header = body[12:header_end].replace(b'"token": "', b'"token": "0')[:-1] + b"}"
        snapshot.write_bytes(bytes(body[:12] + header + body[header_end:]))
    example = str(root / "event 0" / "IMG_001.jpeg")
    result = run_cli("--config", str(config), "similar", example)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "snapshot" in result.stderr and search.REPAIR in result.stderr
    assert run_cli("--config", str(config), "index", "--no-progress").returncode == 0
    assert len(_json(config, "similar", example, "--limit", "3")) == 3


def test_publishes_keep_one_snapshot_per_catalog_and_rewrite_only_on_change(
    own_library: tuple[Path, Path, dict[str, int]],
) -> None:
    config, root, _ = own_library
    data = _data(config)
    first = search.open_for(data / "catalog.sqlite").path
    inode = first.stat().st_ino
    assert run_cli("--config", str(config), "index", "--no-progress").returncode == 0
    again = search.open_for(data / "catalog.sqlite").path
    assert again == first and again.stat().st_ino == inode, "nothing changed: kept as it is"
    save_jpeg(photo_like(7), root / "event 0" / "new.jpg")
    assert run_cli("--config", str(config), "index", "--no-progress").returncode == 0
    assert run_cli("--config", str(config), "index", "--no-progress").returncode == 0
    snapshots = sorted(p.name for p in data.iterdir() if ".search-" in p.name)
    named = search.open_for(data / "catalog.sqlite").path.name
    assert named in snapshots and len(snapshots) <= 2, snapshots


def test_a_reader_held_across_two_publishes_reads_again(
    own_library: tuple[Path, Path, dict[str, int]],
) -> None:
    """Before: a reader that held the catalog across two publishes found the snapshot it
    names deleted, and was told the snapshot was missing. Now it is told the catalog was
    published again (`Republished`), and `retrying` reads the new one."""
    config, root, _ = own_library
    path = _data(config) / "catalog.sqlite"
    held = open_catalog(path)
    try:
        first = search.open_for(path, conn=held).path
        for i in range(2):  # two publishes, each with a new snapshot
            save_jpeg(photo_like(70 + i), root / "event 0" / f"new{i}.jpg")
            assert run_cli("--config", str(config), "index", "--no-progress").returncode == 0
        assert not first.exists()
        with pytest.raises(search.Republished, match="published again"):
            search.open_for(path, conn=held)
    finally:
        held.close()
    now = search.retrying(lambda: search.open_for(path))
    assert now.path.exists() and now.path != first


def _indexed_library(tmp_path: Path, tiny_model: Path) -> tuple[Path, str, list[bytes]]:
    """Two scenes of three photos in a state database, as the daemon indexes them.
    Returns (the state database, the model id, the paths)."""
    from imageclust_daemon.index import pipeline
    from imageclust_daemon.model import models as models_module
    from imageclust_daemon.model.manifest import load_manifest

    root = tmp_path / "Photos"
    scene_library(root, 2, 3)
    state = tmp_path / "state.sqlite"
    with Store.open(state) as store:
        loaded = models_module.load_model(load_manifest()["clip-vit-b32"], tiny_model, store)
        pipeline.index([os.fsencode(root)], store=store, model=loaded)
    paths = sorted(os.fsencode(p) for p in root.rglob("*") if p.is_file())
    return state, loaded.id, paths


def test_offline_photos_are_marked(tmp_path: Path, tiny_model: Path) -> None:
    """Built through the store and the publish, as the daemon does."""
    state, model, _ = _indexed_library(tmp_path, tiny_model)
    away = [os.fsencode(p) for p in sorted((tmp_path / "Photos" / "event 1").iterdir())]
    with Store.open(state) as store:
        store.set_offline(away, True)
    dest = tmp_path / "out" / "catalog.sqlite"
    catalog.publish(state, dest, model_id=model, daemon_version="test")
    snapshot = search.open_for(dest)
    assert len(snapshot) == 6 and int(snapshot.offline.sum()) == 3
    query = np.asarray(snapshot.matrix[0])
    found = search.hits(dest, snapshot, search.rank(snapshot, query, 10))
    marked = {p for h in found if h.offline for p in h.paths}
    assert marked == {os.fsdecode(p) for p in away}


def test_the_snapshot_is_the_catalogs_even_if_the_state_changes_while_it_is_written(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot is written from a read of its own, beside the catalog's build. A
    change committed between the two reads (photos gone offline) gives the thread other
    rows than the catalog's: the catalog still names a snapshot of its own rows."""
    state, model, paths = _indexed_library(tmp_path, tiny_model)
    write_snapshot = catalog._write_snapshot

    def after_a_change(*args: Any) -> search.Plan:
        with Store.open(state) as store:
            store.set_offline(paths[:3], True)
        return write_snapshot(*args)

    monkeypatch.setattr(catalog, "_write_snapshot", after_a_change)
    dest = tmp_path / "out" / "catalog.sqlite"
    catalog.publish(state, dest, model_id=model, daemon_version="test")
    conn = sqlite3.connect(f"file:{dest}?mode=ro", uri=True)
    offline = conn.execute("SELECT sum(offline) FROM photos").fetchone()[0]
    token = conn.execute("SELECT value FROM catalog_info WHERE key = 'search_token'").fetchone()
    conn.close()
    snapshot = search.open_for(dest)
    assert offline == 0 and int(snapshot.offline.sum()) == 0, "as the catalog read the state"
    assert snapshot.token == token[0] and len(snapshot) == 6
    assert [p.name for p in dest.parent.iterdir() if ".search" in p.name] == [snapshot.path.name]
    monkeypatch.undo()
    catalog.publish(state, dest, model_id=model, daemon_version="test")
    assert int(search.open_for(dest).offline.sum()) == 3, "the next publish has the change"


def test_a_publish_that_fails_leaves_no_temporary_file_and_the_catalog_it_had(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, model, paths = _indexed_library(tmp_path, tiny_model)
    dest = tmp_path / "out" / "catalog.sqlite"
    catalog.publish(state, dest, model_id=model, daemon_version="test")
    before = search.open_for(dest).path
    with Store.open(state) as store:
        store.set_offline(paths[:2], True)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(catalog, "_finish", fail)
    with pytest.raises(DatabaseError, match="disk I/O error"):
        catalog.publish(state, dest, model_id=model, daemon_version="test")
    assert not [p for p in dest.parent.iterdir() if p.name.endswith(".tmp")]
    assert search.open_for(dest).path == before and int(search.open_for(dest).offline.sum()) == 0
    monkeypatch.undo()
    catalog.publish(state, dest, model_id=model, daemon_version="test")
    assert int(search.open_for(dest).offline.sum()) == 2
    kept = {p.name for p in dest.parent.iterdir() if ".search" in p.name}
    assert kept == {search.open_for(dest).path.name, before.name}, "this one and the one before"


def test_rank_is_the_top_of_a_full_sort_best_first() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    snapshot = search.Snapshot(
        Path("x"), "m", "t", np.zeros((1000, 32), np.uint8), np.zeros(1000, bool), x
    )
    q = x[10]
    ranked = search.rank(snapshot, q, 25, exclude=10)
    full = np.argsort(-(x @ q), kind="stable")
    assert [r for r, _ in ranked] == [int(r) for r in full if r != 10][:25]
    assert len(search.rank(snapshot, q, 5000)) == 1000
    assert search.rank(snapshot, q, 0) == []
    with pytest.raises(search.SearchError, match="another model"):
        search.rank(snapshot, np.zeros(8, np.float32), 3)


def test_the_snapshot_format_is_readable_without_imageclust(
    library: tuple[Path, Path, dict[str, int]],
) -> None:
    """As the module docstring documents it: magic, header, hashes, flags, matrix."""
    config, _, _ = library
    data = _data(config)
    conn = sqlite3.connect(f"file:{data / 'catalog.sqlite'}?mode=ro", uri=True)
    name = conn.execute("SELECT value FROM catalog_info WHERE key = 'search_snapshot'").fetchone()
    hashes = {
        h for (h,) in conn.execute("SELECT content_hash FROM photos WHERE status = 'indexed'")
    }
    conn.close()
    raw = (data / name[0]).read_bytes()
    assert raw[:8] == b"ICSEARCH"
    header = json.loads(raw[12 : 12 + int.from_bytes(raw[8:12], "little")])
    n, d = header["count"], header["dim"]
    rows = [
        raw[header["hashes_offset"] + 32 * i : header["hashes_offset"] + 32 * (i + 1)].hex()
        for i in range(n)
    ]
    assert set(rows) == hashes and rows == sorted(rows)
    m = np.frombuffer(raw, "<f4", count=n * d, offset=header["matrix_offset"]).reshape(n, d)
    assert np.allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-4)


def test_albums_get_the_word_most_of_their_photos_are_closest_to(
    library: tuple[Path, Path, dict[str, int]],
) -> None:
    """The vocabulary went through the real tokenizer and text tower once, is kept in the
    state database, and each album's subject is what `subjects.subject_of` says of its
    photos' embeddings against it."""
    from imageclust_daemon.grouping import subjects

    config, _, _ = library
    state = config.parent / "data" / "state.sqlite"
    conn = sqlite3.connect(state)
    (model_id,) = conn.execute("SELECT model_id FROM cluster_runs LIMIT 1").fetchone()
    albums = conn.execute("SELECT id, subject FROM clusters WHERE state = 'active'").fetchall()
    rows = conn.execute("SELECT model_id, words, dim FROM subject_vectors").fetchall()
    conn.close()
    assert rows == [(model_id, len(subjects.SUBJECTS), 32)]
    with Store.open_readonly(state) as store:
        vectors = store.subject_vectors(model_id, subjects.VOCABULARY_VERSION)
        assert vectors is not None
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
        for album, subject in albums:
            found = store.conn.execute(
                "SELECT content_hash FROM cluster_members WHERE cluster_id = ?", (album,)
            )
            members = [h for (h,) in found]
            x = np.array([store.embedding(h, model_id) for h in members])
            assert subject == subjects.subject_of(x, vectors, subjects.SUBJECTS)


def _snapshot_rows(path: Path) -> tuple[bytes, bytes, bytes]:
    snap = search.read(path)
    return snap.hashes.tobytes(), snap.offline.tobytes(), np.asarray(snap.matrix).tobytes()


@pytest.mark.parametrize("added", [40, 400])
def test_a_snapshot_after_a_few_changes_is_written_from_the_one_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, added: int
) -> None:
    """Rows of unchanged contents are copied from the snapshot before, and only the new
    ones read from the state, where at most KEEP_SHARE of the rows are new (40 of 1,040);
    past that (400 of 1,400) it is read whole from the state. Either way the file is the
    one a publish from scratch writes."""
    from tests.bench.bench_catalog import MODEL, fill

    state = tmp_path / "state.sqlite"
    with Store.open(state) as store:
        fill(store, 1000)
    dest = tmp_path / "catalog.sqlite"
    catalog.publish(state, dest, model_id=MODEL, daemon_version="test")
    with Store.open(state) as store:  # `added` more photos, the first 1,000 as they were
        fill(store, 1000 + added)
    whole, merged = search._vectors, search._merged
    incremental = added <= search.KEEP_SHARE * (1000 + added)
    monkeypatch.setattr(search, "_vectors" if incremental else "_merged", None)  # unused
    catalog.publish(state, dest, model_id=MODEL, daemon_version="test")
    monkeypatch.setattr(search, "_vectors", whole)
    monkeypatch.setattr(search, "_merged", merged)
    fresh = tmp_path / "fresh" / "catalog.sqlite"
    catalog.publish(state, fresh, model_id=MODEL, daemon_version="test")
    assert search.open_for(dest).token == search.open_for(fresh).token
    assert _snapshot_rows(search.open_for(dest).path) == _snapshot_rows(search.open_for(fresh).path)
    assert len(search.open_for(dest)) == 1000 + added
