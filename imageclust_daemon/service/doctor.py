"""`imageclust doctor`: is everything the daemon needs in place, and if not, how to fix it.

Each check looks at one thing and returns a `Check`: what it found (`detail`),
whether that is fine (`ok`), whether the daemon can work without it
(`essential`), and the one thing to do about it (`fix`). A failed essential
check means indexing cannot work (no model, a corrupt database, an unwritable
data dir); a failed non-essential one is a warning (Ollama down: groups get
fallback titles; few inotify watches: the daemon polls instead).

The checks only look: nothing is downloaded, created or repaired. The state
database is opened read-only, the data dir is tested with a temporary file
that is removed at once.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from imageclust_daemon.config import Config
from imageclust_daemon.errors import (
    ConfigError,
    ImageclustError,
    ModelError,
    OllamaError,
    OllamaUnavailable,
)
from imageclust_daemon.grouping.ollama import OllamaClient, RetryPolicy, resolve_host
from imageclust_daemon.model import manifest, models
from imageclust_daemon.model.embed import (
    available_providers,
    choose_providers,
    file_sha256,
    model_io,
    open_session,
    provider_of,
    short_provider,
)
from imageclust_daemon.records import TEXT, TOKENIZER, VISION, WORDS_ROLES, ModelSpec
from imageclust_daemon.state import migrate

# Below this the state database and a catalog snapshot may not fit: each
# publish writes a full new catalog file next to the old one before the rename.
MIN_FREE_BYTES = 1_000_000_000
# Counting the folders of a network share can take minutes; a count that stops
# after 2 s still tells whether the watch limit is in danger.
WALK_SECONDS = 2.0
# Ollama is local: an answer to /api/tags within 3 s or it counts as down.
OLLAMA_TIMEOUT = 3.0
INOTIFY_DIR = Path("/proc/sys/fs/inotify")


@dataclass(frozen=True, slots=True)
class Check:
    """One finding of `imageclust doctor`."""

    name: str
    ok: bool
    essential: bool  # a failure stops indexing (exit 1); otherwise it is a warning
    detail: str
    fix: str = ""

    @property
    def status(self) -> str:
        """ "ok", "FAIL" (essential and not ok) or "warn" (not ok, not essential)."""
        if self.ok:
            return "ok"
        return "FAIL" if self.essential else "warn"


def run_checks(
    cfg: Config,
    environ: Mapping[str, str],
    *,
    platform: str | None = None,
    inotify_dir: Path = INOTIFY_DIR,
    min_free_bytes: int = MIN_FREE_BYTES,
    walk_seconds: float = WALK_SECONDS,
    ollama_timeout: float = OLLAMA_TIMEOUT,
) -> list[Check]:
    """Every check, in the order a user would fix things."""
    checks = [check_config(cfg), check_data_dir(cfg.data_dir)]
    checks.append(check_free_disk(cfg.data_dir, min_free_bytes))
    checks.append(check_database(cfg.state_db_path))
    checks.extend(check_outputs(cfg.catalog_path, cfg.organize.dir))
    checks.extend(check_model(cfg))
    checks.append(check_ollama(cfg, environ, timeout=ollama_timeout))
    checks.extend(check_roots(cfg.roots))
    if (platform or sys.platform).startswith("linux"):
        checks.append(check_inotify(cfg.roots, inotify_dir, walk_seconds))
    return checks


def failed_essential(checks: Iterable[Check]) -> bool:
    return any(not c.ok and c.essential for c in checks)


# --- config and storage --------------------------------------------------------------------


def check_config(cfg: Config) -> Check:
    """The config has already loaded and validated by the time doctor runs; say which file."""
    where = str(cfg.source) if cfg.source else "no config file: the built-in defaults"
    return Check("config", True, True, where)


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_data_dir(data_dir: Path) -> Check:
    name, fix = "data dir", f"make {data_dir} writable, or set storage.data_dir to a folder you own"
    if data_dir.is_dir():
        try:
            with tempfile.TemporaryFile(dir=data_dir, prefix=".doctor-"):
                pass
        except OSError as exc:
            return Check(name, False, True, f"{data_dir}: cannot write: {exc.strerror}", fix)
        return Check(name, True, True, f"{data_dir} (writable)")
    if data_dir.exists():
        return Check(name, False, True, f"{data_dir} is not a folder", fix)
    parent = _existing_ancestor(data_dir)
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return Check(name, True, True, f"{data_dir} does not exist yet; the first run creates it")
    return Check(name, False, True, f"{data_dir} does not exist and {parent} is not writable", fix)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def check_free_disk(data_dir: Path, min_free_bytes: int = MIN_FREE_BYTES) -> Check:
    where = _existing_ancestor(data_dir)
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        return Check("free disk", False, False, f"cannot tell for {where}: {exc.strerror}")
    detail = f"{_human(free)} free for the data dir ({where})"
    if free >= min_free_bytes:
        return Check("free disk", True, False, detail)
    return Check(
        "free disk",
        False,
        False,
        f"only {detail}; publishing the catalog needs room for a second copy of it",
        f"free space on that disk, or set storage.data_dir to one with at least "
        f"{_human(min_free_bytes)} free",
    )


def check_database(path: Path) -> Check:
    """`PRAGMA quick_check` and the schema version, over a read-only connection."""
    name = "state database"
    if not path.exists():
        return Check(name, True, True, f"{path}: not created yet (the first index or run does)")
    rebuild = (
        f"stop the daemon; restore {path.name} from a backup, or move it aside and run "
        "`imageclust index` to rebuild it (every photo is embedded again)"
    )
    try:
        # mode=ro: a check must not write; quick_check skips only the slow index
        # cross-checks of integrity_check, and runs while the daemon writes (WAL).
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
            version = migrate.current_version(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return Check(name, False, True, f"{path}: cannot read it: {exc}", rebuild)
    if problems != ["ok"]:
        shown = "; ".join(problems[:3]) + (
            f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        )
        return Check(name, False, True, f"{path}: damaged: {shown}", rebuild)
    try:
        shipped = migrate.load_migrations()
    except (OSError, ImageclustError) as exc:
        return Check(name, False, True, f"cannot read the shipped migrations: {exc}", "reinstall")
    newest = shipped[-1].version if shipped else 0
    if version > newest:
        return Check(
            name,
            False,
            True,
            f"{path}: schema version {version} is newer than this imageclust knows ({newest})",
            "upgrade imageclust (the database was not touched)",
        )
    later = f", migrated to {newest} at the next start" if version < newest else ""
    return Check(name, True, True, f"{path}: intact, schema version {version}{later}")


# --- model -----------------------------------------------------------------------------------


def check_model(cfg: Config) -> list[Check]:
    """Each of the model's files (the vision tower essential, the text tower and tokenizer
    for search by words), ONNX Runtime, the vision tower's contract and where it runs."""
    try:
        located = models.locate(cfg)
    except ConfigError as exc:
        known = ", ".join(sorted(manifest.load_manifest()))
        return [Check("model", False, True, f"{exc.key}: {exc.problem}", f"use one of: {known}")]
    except ModelError as exc:
        return [Check("model", False, True, str(exc), "reinstall imageclust")]
    spec, path = located.spec, located.vision_path
    own = VISION in located.own
    checks = [check_model_file(spec, path, own=own)]
    runtime = check_onnxruntime()
    checks.append(runtime)
    if checks[0].ok and runtime.ok:
        checks.extend(
            check_model_contract(spec, path, own=own, providers=tuple(cfg.model.providers))
        )
    checks.extend(check_words(located))
    return checks


def check_model_file(spec: ModelSpec, path: Path, *, own: bool) -> Check:
    """Present, and (for the manifest's file) the size and sha256 the manifest records."""
    name = "model file"
    download = f"imageclust models download {spec.name}"
    if not path.is_file():
        fix = (
            f"point model.path at an ONNX file that exists, or remove it and run: {download}"
            if own
            else download
        )
        what = "not a file (a folder?)" if path.exists() else "no such file"
        return Check(name, False, True, f"{path}: {what}", fix)
    try:
        size = path.stat().st_size
        digest = file_sha256(path)
    except OSError as exc:
        return Check(name, False, True, f"{path}: cannot read it: {exc.strerror}", download)
    vision = spec.vision
    known = vision.sha256 is not None
    matches = digest == vision.sha256 and vision.size_bytes in (None, size)
    if own:
        # model.path names the user's own file on purpose: a different checksum is
        # expected, and harmless (embeddings are kept per model id, which has the sha256).
        whose = f"the manifest's {spec.name} file" if matches else "your own file (model.path)"
        return Check(name, True, True, f"{path}: {whose}, sha256 {digest[:16]}…")
    if not known:
        return Check(
            name, True, True, f"{path}: sha256 {digest[:16]}… (the manifest records no checksum)"
        )
    if matches:
        return Check(name, True, True, f"{path}: sha256 matches the manifest")
    if vision.size_bytes is not None and size != vision.size_bytes:
        problem = f"it is {size} bytes, the manifest expects {vision.size_bytes}"
    else:
        problem = f"sha256 {digest} is not the manifest's {vision.sha256}"
    return Check(
        name,
        False,
        True,
        f"{path}: {problem}",
        f"{download} (replaces it once the new one verifies)",
    )


def check_onnxruntime() -> Check:
    name = "onnxruntime"
    reinstall = f"{sys.executable} -m pip install --force-reinstall onnxruntime"
    try:
        import onnxruntime as ort  # ~0.3 s: only here and when embedding
    except ImportError as exc:
        return Check(name, False, True, f"cannot import it: {exc}", reinstall)
    providers = list(ort.get_available_providers())
    detail = f"{ort.__version__}; providers: {', '.join(providers) or 'none'}"
    if "CPUExecutionProvider" not in providers:  # the one every session falls back to
        return Check(name, False, True, detail + "; no CPUExecutionProvider", reinstall)
    return Check(name, True, True, detail)


def check_model_contract(
    spec: ModelSpec,
    path: Path,
    *,
    own: bool,
    providers: Sequence[str] = ("auto",),
    available: Sequence[str] | None = None,
) -> list[Check]:
    """Loads in ONNX Runtime on the configured providers with one image input and the
    manifest's embedding output; then which provider it runs on."""
    name = "model contract"
    crop = spec.preprocessing.crop
    output = spec.vision.output_name
    offered = list(available) if available is not None else available_providers()
    try:
        session = open_session(path, threads=1, providers=providers, available=offered)
        io = model_io(session, path=str(path), image_size=crop, output_name=output)
    except ModelError as exc:
        fix = (
            f"model.path must be a CLIP vision export: one float input [N,3,{crop},{crop}] "
            f"and an output {output!r} [N,D]"
            if own
            else f"imageclust models download {spec.name}"
        )
        return [Check(name, False, True, str(exc), fix)]
    checks = [_contract_check(spec, io.input_name, io.output_name, io.dim, crop, own=own)]
    checks.append(check_provider(provider_of(session), providers, offered))
    return checks


def _contract_check(
    spec: ModelSpec, input_name: str, output_name: str, dim: int, crop: int, *, own: bool
) -> Check:
    name = "model contract"
    detail = f"input {input_name} [N,3,{crop},{crop}] -> {output_name} [N,{dim}]"
    if dim == spec.dim and input_name == spec.vision.input_name:
        return Check(name, True, True, detail)
    if own:
        return Check(name, True, True, f"{detail} (not {spec.name}'s {spec.dim}: your own model)")
    return Check(
        name,
        False,
        True,
        f"{detail}; the manifest's {spec.name} has {spec.vision.input_name} -> [N,{spec.dim}]",
        f"imageclust models download {spec.name}",
    )


def check_provider(running: str, requested: Sequence[str], available: Sequence[str]) -> Check:
    """Which execution provider the model runs on; a warning when one asked for is not it."""
    name = "execution provider"
    choice = choose_providers(list(requested), available)
    detail = (
        f"the model runs on {short_provider(running)} "
        f"(model.providers = {list(requested)}; offered: "
        f"{', '.join(short_provider(p) for p in available) or 'none'})"
    )
    if choice.unavailable:
        fixes = {
            "cuda": f"{sys.executable} -m pip uninstall -y onnxruntime && "
            f"{sys.executable} -m pip install onnxruntime-gpu",
            "coreml": "CoreML is in ONNX Runtime's macOS builds only",
        }
        fix = "; ".join(fixes[p] for p in choice.unavailable if p in fixes)
        return Check(
            name,
            False,
            False,
            f"{detail}; {', '.join(choice.unavailable)} is not offered by this ONNX Runtime",
            f"{fix}; or remove it from model.providers",
        )
    if running != choice.providers[0]:
        return Check(
            name,
            False,
            False,
            f"{detail}; {short_provider(choice.providers[0])} did not start (see the log)",
            "check the GPU driver and CUDA libraries that onnxruntime-gpu needs",
        )
    return Check(name, True, False, detail)


def check_words(located: models.Located) -> list[Check]:
    """The text tower and tokenizer: search by words needs them, indexing does not (warn)."""
    spec = located.spec
    reports = {r.role: r for r in models.verify(located, roles=WORDS_ROLES)}
    if not reports:
        return [
            Check(
                "text tower",
                True,
                False,
                f"{spec.name} has none in the manifest: search by words is not offered; "
                "model.text_path and model.tokenizer_path can name files you have",
            )
        ]
    checks = []
    for role, label in ((TEXT, "text tower"), (TOKENIZER, "tokenizer")):
        report = reports.get(role)
        if report is None:
            continue
        own_key = manifest.OWN_FILE_KEYS[role]
        # Without a name, `models download` keeps the config's own files (model.path, ...).
        download = "imageclust models download"
        if report.path is None or (report.own and not report.present):
            fix = f"point {own_key} at a file that exists"
            problem = report.problems[0] if report.path is None else "no such file"
            detail = f"{report.path or own_key}: {problem}; {manifest.PURPOSE[role]}"
            checks.append(Check(label, False, False, detail, fix))
        elif not report.present:
            what = "missing" if not report.path.exists() else report.problems[0]
            detail = f"{report.path}: {what}; {manifest.PURPOSE[role]}"
            checks.append(Check(label, False, False, detail, download))
        elif report.problems:
            detail = f"{report.path}: " + "; ".join(report.problems)
            fix = f"fix {own_key}" if report.own else download
            checks.append(Check(label, False, False, detail, fix))
        else:
            whose = f"your own file ({own_key})" if report.own else "matches the manifest"
            checks.append(Check(label, True, False, f"{report.path}: {whose}"))
    return checks


# --- Ollama ----------------------------------------------------------------------------------


def check_ollama(
    cfg: Config, environ: Mapping[str, str], *, timeout: float = OLLAMA_TIMEOUT
) -> Check:
    """Reachable and has the model; never essential: without it groups get fallback titles."""
    name = "ollama"
    host = resolve_host(cfg.ollama.host, environ)
    model: str = cfg.ollama.model
    # A service does not see the shell's environment: say where the host came from.
    source = (
        " (from $OLLAMA_HOST: set ollama.host for the service)"
        if (not cfg.ollama.host and environ.get("OLLAMA_HOST", "").strip())
        else ""
    )
    fallback = "until then groups get fallback titles (place and date)"
    client = OllamaClient(
        host,
        model,
        timeout=timeout,
        connect_timeout=min(timeout, cfg.ollama.connect_timeout),
        retry=RetryPolicy(attempts=1),
    )
    try:
        with client:
            present = client.has_model()
    except OllamaUnavailable as exc:
        return Check(
            name,
            False,
            False,
            f"{host}{source}: not reachable: {exc.reason}",
            f"start Ollama (`ollama serve` or the app) or set ollama.host; {fallback}",
        )
    except OllamaError as exc:
        return Check(
            name,
            False,
            False,
            f"{host}{source}: {exc.reason}",
            f"check that ollama.host is an Ollama server; {fallback}",
        )
    if not present:
        return Check(
            name,
            False,
            False,
            f"{host}{source} answers but has no model {model}",
            f"ollama pull {model}",
        )
    return Check(name, True, False, f"{host}{source} has {model}")


def check_outputs(catalog_path: Path, organize_dir: Path | None) -> list[Check]:
    """Where the catalog (and the organized view) will be published: free to be replaced."""
    checks = []
    name, fix = "catalog path", "set catalog.path to a file name in a folder you can write"
    folder = catalog_path.parent
    if catalog_path.exists() and not catalog_path.is_file():
        checks.append(Check(name, False, True, f"{catalog_path} exists and is not a file", fix))
    elif folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        checks.append(Check(name, False, True, f"{folder} is not writable", fix))
    else:
        checks.append(Check(name, True, True, f"{catalog_path}"))
    if organize_dir is not None:
        name = "organized view"
        if organize_dir.exists() and not organize_dir.is_symlink():
            detail = f"{organize_dir} is a real folder; imageclust only replaces its own view"
            fix = "set organize.dir to a path that does not exist yet"
            checks.append(Check(name, False, True, detail, fix))
        else:
            checks.append(Check(name, True, True, f"{organize_dir}"))
    return checks


# --- the library -----------------------------------------------------------------------------


def check_roots(roots: list[Path]) -> list[Check]:
    """Each root readable; a missing one is a warning (an unmounted drive), none usable fails."""
    if not roots:
        return [
            Check(
                "roots",
                False,
                True,
                "library.roots is empty: nothing to index",
                "set library.roots in the config file",
            )
        ]
    checks: list[Check] = []
    for root in roots:
        name = f"root {root}"
        if not root.exists():
            checks.append(
                Check(
                    name,
                    False,
                    False,
                    "missing (an unmounted drive? its photos are kept, marked offline)",
                    "mount it, or correct library.roots",
                )
            )
            continue
        if not root.is_dir():
            checks.append(Check(name, False, True, "not a folder", "correct library.roots"))
            continue
        try:
            with os.scandir(root) as entries:
                next(entries, None)
        except OSError as exc:
            checks.append(
                Check(
                    name,
                    False,
                    True,
                    f"cannot list it: {exc.strerror}",
                    f"give your user read access to {root}",
                )
            )
            continue
        checks.append(Check(name, True, True, "readable"))
    if not any(c.ok for c in checks):
        checks.append(
            Check(
                "roots",
                False,
                True,
                "none of the folders in library.roots can be read now",
                "mount or create them, or correct library.roots",
            )
        )
    return checks


def count_folders(
    roots: Iterable[Path], seconds: float, clock: Callable[[], float] = time.monotonic
) -> tuple[int, bool]:
    """Folders under `roots` (each once, symlinks followed); False when the time ran out."""
    deadline = clock() + seconds
    seen: set[tuple[int, int]] = set()
    count = 0
    for root in roots:
        for dirpath, dirnames, _ in os.walk(root, followlinks=True):
            try:
                st = os.stat(dirpath)
            except OSError:
                dirnames.clear()
                continue
            if (st.st_dev, st.st_ino) in seen:  # a symlink loop or a folder linked twice
                dirnames.clear()
                continue
            seen.add((st.st_dev, st.st_ino))
            count += 1
            if clock() > deadline:
                return count, False
    return count, True


def check_inotify(roots: list[Path], inotify_dir: Path, seconds: float = WALK_SECONDS) -> Check:
    """Linux: one inotify watch per folder; are there enough for the roots and everyone else?"""
    name = "inotify watches"
    try:
        limit = int((inotify_dir / "max_user_watches").read_text().strip())
    except (OSError, ValueError) as exc:
        return Check(name, False, False, f"cannot read the limit: {exc}")
    folders, complete = count_folders([r for r in roots if r.is_dir()], seconds)
    counted = (
        f"{folders}" if complete else f"at least {folders} (counting stopped after {seconds:g} s)"
    )
    plural = "" if folders == 1 else "s"
    detail = f"{counted} folder{plural} under the roots; fs.inotify.max_user_watches = {limit}"
    # The limit is per user and shared with every other program that watches
    # files (editors, sync clients, IDEs): past half of it, one of them runs out.
    if folders <= limit // 2:
        return Check(name, True, False, detail)
    wanted = max(524_288, 1 << (4 * folders - 1).bit_length())  # next power of two >= 4x
    return Check(
        name,
        False,
        False,
        detail + "; roots that run out of watches are polled instead (slower to notice changes)",
        f"echo fs.inotify.max_user_watches={wanted} | sudo tee /etc/sysctl.d/60-imageclust.conf"
        " && sudo sysctl --system",
    )
