"""`imageclust doctor`: the real command over real files, and each check on its own."""

from __future__ import annotations

import shutil
import socket
import sqlite3
from pathlib import Path
from typing import Any

from imageclust_daemon import config
from imageclust_daemon.model import manifest
from imageclust_daemon.service import doctor
from imageclust_daemon.state.store import Store
from tests.clip_vocab import write_tokenizer_json
from tests.conftest import run_cli
from tests.onnx_models import build_tiny_clip_text


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there now: connections are refused


def _lines(out: str) -> dict[str, str]:
    """{check name: its status word} from doctor's output."""
    found = {}
    for line in out.splitlines():
        status, _, rest = line.partition(" ")
        if status in ("ok", "FAIL", "warn"):
            found[rest.strip().split(":")[0]] = status
    return found


def test_doctor_passes_with_a_model_a_root_and_ollama(
    make_config: Any, fake_ollama: Any, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    (photos / "2024").mkdir(parents=True)
    cfg = make_config(
        roots=[photos], ollama={"host": fake_ollama.url, "model": "llava", "timeout": 10}
    )
    Store.open(tmp_path / "data" / "state.sqlite").close()  # an existing, migrated database
    done = run_cli("--config", str(cfg), "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    status = _lines(done.stdout)
    for name in ("config", "data dir", "state database", "model file", "onnxruntime"):
        assert status[name] == "ok", done.stdout
    assert status["model contract"] == "ok", done.stdout
    assert status["ollama"] == "ok", done.stdout
    assert status[f"root {photos}"] == "ok", done.stdout
    assert "FAIL" not in status.values()
    assert "has llava" in done.stdout
    assert fake_ollama.requests("/api/tags")


def test_doctor_fails_without_the_model_and_says_how_to_get_it(
    make_config: Any, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    # model.path empty: the manifest's file under the data dir, which was never downloaded.
    cfg = make_config(
        roots=[photos],
        model={"path": ""},
        ollama={"host": f"http://127.0.0.1:{_closed_port()}"},
    )
    done = run_cli("--config", str(cfg), "doctor")
    assert done.returncode == 1, done.stdout + done.stderr
    assert _lines(done.stdout)["model file"] == "FAIL"
    fix = done.stdout.split("FAIL model file:")[1].splitlines()[1]
    assert fix.strip() == "fix: imageclust models download clip-vit-b32"


def test_unreachable_ollama_is_a_warning_not_a_failure(make_config: Any, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    cfg = make_config(roots=[photos], ollama={"host": f"http://127.0.0.1:{_closed_port()}"})
    done = run_cli("--config", str(cfg), "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _lines(done.stdout)["ollama"] == "warn"
    assert "fallback titles" in done.stdout


def test_ollama_without_the_model_says_which_to_pull(fake_ollama: Any) -> None:
    cfg = config.from_mapping({"ollama": {"host": fake_ollama.url, "model": "gemma3:4b"}})
    check = doctor.check_ollama(cfg, {})
    assert (check.ok, check.essential) == (False, False)
    assert check.fix == "ollama pull gemma3:4b"


def test_ollama_host_from_the_environment_is_flagged_for_the_service(fake_ollama: Any) -> None:
    cfg = config.from_mapping({"ollama": {"model": "llava"}})
    check = doctor.check_ollama(cfg, {"OLLAMA_HOST": fake_ollama.url})
    assert check.ok
    assert "set ollama.host for the service" in check.detail


def test_database_checks(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    assert doctor.check_database(path).ok  # not created yet

    Store.open(path).close()
    good = doctor.check_database(path)
    assert good.ok and "intact" in good.detail

    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_migrations VALUES (9999, 'x', 'x', 0)")
    conn.commit()
    conn.close()
    newer = doctor.check_database(path)
    assert (newer.ok, newer.essential) == (False, True)
    assert "upgrade imageclust" in newer.fix

    path.write_bytes(b"this is not a database" * 100)
    broken = doctor.check_database(path)
    assert (broken.ok, broken.essential) == (False, True)
    assert "imageclust index" in broken.fix


def test_a_wrong_file_at_the_manifest_location_fails(tiny_model: Path, tmp_path: Path) -> None:
    cfg = config.from_mapping({"storage": {"data_dir": str(tmp_path)}})
    target = tmp_path / "models" / "clip-vit-b32-vision.onnx"
    target.parent.mkdir()
    shutil.copyfile(tiny_model, target)  # loads fine, but is not the manifest's file
    checks = {c.name: c for c in doctor.check_model(cfg)}
    assert (checks["model file"].ok, checks["model file"].essential) == (False, True)
    assert checks["model file"].fix.startswith("imageclust models download clip-vit-b32")
    assert "model contract" not in checks  # not worth loading a file already known wrong


def test_own_model_file_is_checked_by_its_contract(tiny_model: Path, tmp_path: Path) -> None:
    cfg = config.from_mapping({"model": {"path": str(tiny_model)}})
    checks = {c.name: c for c in doctor.check_model(cfg)}
    assert checks["model file"].ok and "your own file" in checks["model file"].detail
    assert checks["model contract"].ok
    assert "[N,32]" in checks["model contract"].detail

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    cfg = config.from_mapping({"model": {"path": str(junk)}})
    contract = {c.name: c for c in doctor.check_model(cfg)}["model contract"]
    assert (contract.ok, contract.essential) == (False, True)


def test_the_text_tower_and_tokenizer_are_warnings_that_say_what_they_are_for(
    tiny_model: Path, tmp_path: Path
) -> None:
    cfg = config.from_mapping(
        {"storage": {"data_dir": str(tmp_path)}, "model": {"path": str(tiny_model)}}
    )
    checks = {c.name: c for c in doctor.check_model(cfg)}
    for name in ("text tower", "tokenizer"):
        assert (checks[name].ok, checks[name].essential) == (False, False)
        assert "search by words needs it" in checks[name].detail
        assert checks[name].fix == "imageclust models download"  # keeps model.path as it is

    text = build_tiny_clip_text(tmp_path / "text.onnx", dim=32)
    tok = write_tokenizer_json(tmp_path / "tokenizer.json")
    cfg = config.from_mapping(
        {"model": {"path": str(tiny_model), "text_path": str(text), "tokenizer_path": str(tok)}}
    )
    checks = {c.name: c for c in doctor.check_model(cfg)}
    assert (
        checks["text tower"].ok and "your own file (model.text_path)" in checks["text tower"].detail
    )
    assert checks["tokenizer"].ok

    broken = tmp_path / "broken.json"
    broken.write_text("{}", encoding="utf-8")
    cfg = config.from_mapping({"model": {"path": str(tiny_model), "tokenizer_path": str(broken)}})
    check = {c.name: c for c in doctor.check_model(cfg)}["tokenizer"]
    assert not check.ok and "not a usable tokenizer.json" in check.detail


def test_a_model_without_a_text_tower_says_search_is_not_offered(tmp_path: Path) -> None:
    cfg = config.from_mapping(
        {"storage": {"data_dir": str(tmp_path)}, "model": {"name": "clip-vit-l14"}}
    )
    checks = {c.name: c for c in doctor.check_model(cfg)}
    assert (
        checks["text tower"].ok and "search by words is not offered" in checks["text tower"].detail
    )


def test_the_execution_provider_is_named_and_a_missing_one_is_a_warning(
    tiny_model: Path,
) -> None:
    cfg = config.from_mapping({"model": {"path": str(tiny_model)}})
    checks = {c.name: c for c in doctor.check_model(cfg)}
    assert checks["execution provider"].ok
    assert "the model runs on CPU" in checks["execution provider"].detail

    spec = manifest.load_manifest()["clip-vit-b32"]
    _, provider = doctor.check_model_contract(
        spec, tiny_model, own=True, providers=["cuda"], available=["CPUExecutionProvider"]
    )
    assert (provider.ok, provider.essential) == (False, False)
    assert "cuda is not offered" in provider.detail and "onnxruntime-gpu" in provider.fix
    _, coreml = doctor.check_model_contract(
        spec, tiny_model, own=True, providers=["coreml"], available=["CPUExecutionProvider"]
    )
    assert "macOS builds only" in coreml.fix and "onnxruntime-gpu" not in coreml.fix


def test_onnxruntime_has_the_cpu_provider() -> None:
    check = doctor.check_onnxruntime()
    assert check.ok and "CPUExecutionProvider" in check.detail


def test_little_free_disk_is_a_warning(tmp_path: Path) -> None:
    check = doctor.check_free_disk(tmp_path / "not-yet", min_free_bytes=10**18)
    assert (check.ok, check.essential) == (False, False)
    assert "storage.data_dir" in check.fix


def test_data_dir_that_is_a_file_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("x")
    assert doctor.check_data_dir(tmp_path).ok
    check = doctor.check_data_dir(blocker)
    assert (check.ok, check.essential) == (False, True)


def test_roots(tmp_path: Path) -> None:
    (empty,) = doctor.check_roots([])
    assert (empty.ok, empty.essential) == (False, True)

    here, gone = tmp_path / "here", tmp_path / "unmounted"
    here.mkdir()
    checks = doctor.check_roots([here, gone])
    assert [(c.ok, c.essential) for c in checks] == [(True, True), (False, False)]

    only_gone = doctor.check_roots([gone])
    assert not doctor.failed_essential(only_gone[:1])
    assert doctor.failed_essential(only_gone)  # nothing at all to index


def test_inotify_limit(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for i in range(5):
        (root / f"album{i}").mkdir(parents=True)
    (root / "album0" / "loop").symlink_to(root)  # counted once, not forever
    limits = tmp_path / "inotify"
    limits.mkdir()

    (limits / "max_user_watches").write_text("8192\n")
    ok = doctor.check_inotify([root], limits)
    assert ok.ok and "6 folders" in ok.detail

    (limits / "max_user_watches").write_text("8\n")
    low = doctor.check_inotify([root], limits)
    assert (low.ok, low.essential) == (False, False)
    assert "fs.inotify.max_user_watches=524288" in low.fix
    assert "sysctl" in low.fix


def test_folder_count_stops_at_its_deadline(tmp_path: Path) -> None:
    for i in range(10):
        (tmp_path / f"d{i}").mkdir()
    ticks = iter(range(100))
    count, complete = doctor.count_folders([tmp_path], 2.5, clock=lambda: float(next(ticks)))
    assert (count, complete) == (3, False)
    assert doctor.count_folders([tmp_path], 60.0) == (11, True)


def test_inotify_is_checked_only_on_linux(tmp_path: Path) -> None:
    cfg = config.from_mapping(
        {
            "library": {"roots": [str(tmp_path)]},
            "storage": {"data_dir": str(tmp_path / "data")},
            "ollama": {"host": f"http://127.0.0.1:{_closed_port()}"},
        }
    )
    names = [c.name for c in doctor.run_checks(cfg, {}, platform="darwin")]
    assert "inotify watches" not in names
    linux = doctor.run_checks(cfg, {}, platform="linux", inotify_dir=tmp_path / "no-proc")
    assert "inotify watches" in [c.name for c in linux]


def test_catalog_and_organized_view_paths(tmp_path: Path) -> None:
    fine = doctor.check_outputs(tmp_path / "catalog.sqlite", tmp_path / "Albums")
    assert [c.ok for c in fine] == [True, True]
    (tmp_path / "taken").mkdir()
    (tmp_path / "Photos").mkdir()
    taken = doctor.check_outputs(tmp_path / "taken", tmp_path / "Photos")
    assert [c.status for c in taken] == ["FAIL", "FAIL"]
    assert "is not a file" in taken[0].detail and "real folder" in taken[1].detail
    assert all(c.fix for c in taken)
    (tmp_path / "view").symlink_to(tmp_path / "Photos")  # a view imageclust made: replaceable
    assert doctor.check_outputs(tmp_path / "c.sqlite", tmp_path / "view")[1].ok
    assert len(doctor.check_outputs(tmp_path / "c.sqlite", None)) == 1
