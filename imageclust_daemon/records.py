"""Frozen records passed between the stages of the pipeline.

Paths are `bytes` (``os.fsencode``) everywhere below the CLI: a filename that is
not valid UTF-8 is legal on Linux and must round-trip exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def display_path(path: bytes) -> str:
    """A printable form of a raw path (undecodable bytes shown as \\xNN escapes)."""
    return path.decode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True)
class FileStat:
    """One image-like file found under a root, as `stat` saw it (a FIFO or device with a
    photo's name too: it gets a row, failed, and is never opened)."""

    path: bytes
    size: int
    mtime_ns: int
    inode: int
    device: int
    kind: str = ""  # "" for a regular file; else what it is ("a FIFO"): never opened

    @property
    def signature(self) -> tuple[int, int, int, int]:
        """(size, mtime_ns, inode, device): unchanged signature => content not read again."""
        return (self.size, self.mtime_ns, self.inode, self.device)


@dataclass(frozen=True, slots=True)
class PhotoMeta:
    """What later stages need from a photo, read while it is open for embedding."""

    width: int  # as displayed, after EXIF orientation
    height: int
    taken_at: str | None = None  # ISO 8601 local time, with "+HH:MM" offset when EXIF has one
    lat: float | None = None
    lon: float | None = None
    format: str | None = None  # as its bytes say (Pillow's name: "JPEG", "HEIF", "PNG", ...)
    taken_at_source: str | None = None  # which record gave taken_at (exif.Facts.source)


@dataclass(frozen=True, slots=True)
class Preprocessing:
    """A model's own input preprocessing, as its manifest entry gives it."""

    resize_shortest: int = 224
    crop: int = 224
    resample: str = "bicubic"  # a PIL resampling filter name
    rescale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


VISION, TEXT, TOKENIZER, VOCAB, MERGES = "vision", "text", "tokenizer", "vocab", "merges"
ROLES = (VISION, TEXT, VOCAB, MERGES, TOKENIZER)
"""A model's files, in the order a download fetches them: the vision tower first (indexing
needs only it), the tokenizer last (its check compares it with the vocab and merges)."""
WORDS_ROLES = (TEXT, TOKENIZER)
"""The files search by words needs besides the vision tower."""


@dataclass(frozen=True, slots=True)
class ModelFile:
    """One file of a model: where it comes from, what it must be, and its name on disk."""

    role: str  # one of ROLES
    filename: str  # under <data_dir>/models/
    repo_path: str | None = None  # its path in the model's hub repository, at the pinned revision
    url: str | None = None  # or an absolute URL (a file not on a hub); neither: not downloadable
    sha256: str | None = None  # None where no published checksum could be confirmed
    size_bytes: int | None = None
    input_name: str | None = None  # ONNX towers: the input fed
    output_name: str | None = None  # ONNX towers: the embedding output
    probe_text: str | None = None  # tokenizer: a text whose token ids are known...
    probe_ids: tuple[int, ...] = ()  # ...and those ids, start and end tokens included

    @property
    def downloadable(self) -> bool:
        return self.repo_path is not None or self.url is not None


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One entry of models/manifest.toml: the model's files and how to feed it."""

    name: str
    title: str
    dim: int
    files: tuple[ModelFile, ...]  # in ROLES order; the vision tower always among them
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    repo: str | None = None  # hub repository ("owner/name") of the files with a repo_path
    revision: str | None = None  # the commit those files are pinned to
    context_length: int = 77  # token ids per text the text tower takes
    notes: str = ""

    def file(self, role: str) -> ModelFile | None:
        return next((f for f in self.files if f.role == role), None)

    @property
    def vision(self) -> ModelFile:
        found = self.file(VISION)
        if found is None:  # the manifest loader refuses such an entry
            raise AssertionError(f"model {self.name!r} has no vision file")
        return found

    @property
    def downloadable(self) -> bool:
        return self.vision.downloadable


@dataclass(frozen=True, slots=True)
class IndexReport:
    """What one `index` run did, for the summary line and for tests."""

    scanned: int = 0  # image-like files seen under the roots
    unchanged: int = 0  # signature unchanged: not opened at all
    moved: int = 0  # a known (device, inode, size, mtime) at a new path: hash reused, not read
    returned: int = 0  # back at a path where it was seen leave, unchanged: not read
    hashed: int = 0  # files whose bytes were read and hashed
    bytes_read: int = 0
    embedded: int = 0  # new embeddings computed
    reused: int = 0  # hashed files whose content already had an embedding (or a recorded failure)
    failed: int = 0  # files or contents that failed this run
    gone: int = 0  # files that disappeared since the last scan
    offline: int = 0  # files under a folder that is missing, empty or unlistable: kept
    went_offline: int = 0  # of those, the ones that were not offline before this run
    came_online: int = 0  # offline files seen again
    needs_rescan: bool = False  # a watcher walk saw too many vanish: a full rescan decides
    heif_unread: int = 0  # .heic/.heif files seen that this install cannot read (no plugin)
    skipped: dict[str, int] = field(default_factory=dict)  # videos, sidecars: by kind
    left: int = 0  # files a Dask cluster did not finish: the next (local) index reads them
    stopped: bool = False  # asked to stop during the walk: nothing was looked at or changed
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        """Whether anything the catalog shows may have changed."""
        return bool(
            self.scanned != self.unchanged
            or self.gone
            or self.went_offline
            or self.came_online
            or self.embedded
        )


@dataclass(frozen=True, slots=True)
class ContentRow:
    """A content seen this run. `decoded` False: only its hash and size are known yet."""

    hash: str
    size: int
    decoded: bool = False
    meta: PhotoMeta | None = None
    error: str | None = None  # why it cannot be decoded (only when decoded is True)
    format: str | None = None  # what its bytes say it is, where it could not be decoded


@dataclass(frozen=True, slots=True)
class FileRow:
    """A file's state after this run read (or tried to read) it."""

    stat: FileStat
    content_hash: str | None
    error: str | None = None  # why its bytes could not be read


@dataclass(frozen=True, slots=True)
class KnownFile:
    """What the state database remembers of one path."""

    signature: tuple[int, int, int, int]
    content_hash: str | None
    live: bool
    error: str | None
    offline: bool = False


@dataclass(frozen=True, slots=True)
class GroupRow:
    """One group of a clustering run, ready to store."""

    id: int
    members: tuple[tuple[str, int, float], ...]  # (content hash, rank, cosine to centroid)
    centroid: np.ndarray  # float32, L2-normalized
    members_digest: str
    is_new: bool
    changed: bool  # new, or membership differs from the group it inherits its id from
    cut_size: int  # members when the group was last cut (its growth is measured from it)
    fit: float  # the members' variance about their centre when the group was last cut
    subject: str | None = None  # what most of its photos show (subjects.subject_of)


@dataclass(frozen=True, slots=True)
class EventRow:
    """One event, ready to store."""

    id: int
    kind: str  # moment, day or trip
    title: str
    started_at: str  # capture times of its first and last photos, as EXIF has them
    ended_at: str
    place: str | None  # "Seville, Spain"
    city: str | None  # "Seville"
    lat: float | None
    lon: float | None
    members: tuple[str, ...]  # content hashes


@dataclass(frozen=True, slots=True)
class EventReport:
    """What one update of the events did."""

    dated: int = 0  # distinct photos with a plausible capture time
    events: int = 0
    new: int = 0
    changed: int = 0  # members or title changed (new ones not included)
    retired: int = 0
    seconds: float = 0.0

    @property
    def touched(self) -> bool:
        return bool(self.new or self.changed or self.retired)


@dataclass(frozen=True, slots=True)
class ClusterRun:
    """What one `recluster` did."""

    model_id: str
    min_size: int
    max_size: int
    input_digest: str
    started_at: float = 0.0
    seconds: float = 0.0
    method: str = ""
    n_points: int = 0
    n_clusters: int = 0
    unclustered: int = 0
    new_clusters: int = 0
    changed_clusters: int = 0
    retired_clusters: int = 0
    skipped: bool = False  # nothing was done (see `note`)
    run_id: int | None = None
    note: str = ""
    full_reason: str = ""  # why the whole library was cut again; "" = incremental
    joined: int = 0  # photos new to the last run that joined an album that existed
    moved: int = 0  # photos in an album before that left some of its photos
    dissolved: int = 0  # albums fallen below min_size, their photos placed again
    recut: dict[int, str] = field(default_factory=dict)  # album id -> why it was cut again
    events: EventReport | None = None  # what the events update beside it did (not stored)


@dataclass(frozen=True, slots=True)
class LabelJob:
    """A group that needs a title (new, changed, still on a fallback title, or --all)."""

    cluster_id: int
    members_digest: str
    size: int
    representatives: tuple[bytes, ...]  # a live path for each of the (up to 3) representatives
    label_source: str | None  # what it has now, if anything
    title: str | None = None
    catchy_phrase: str | None = None
    needs_label: bool = True  # new, changed or untitled; False: only an Ollama retry is due


@dataclass(frozen=True)
class Baseline:
    """An album as it was when it was last cut: what its growth and drift are measured
    against."""

    size: int
    fit: float


@dataclass(frozen=True, slots=True)
class Label:
    title: str
    catchy_phrase: str
    source: str  # "ollama" or "fallback"


@dataclass(frozen=True, slots=True)
class GroupFacts:
    """What is known about a group without looking at its pixels."""

    size: int
    taken_at: tuple[str, ...] = ()  # ISO 8601 capture times of members that have one
    positions: tuple[tuple[float, float], ...] = ()  # (lat, lon) of members that have one
    folders: tuple[str, ...] = ()  # parent folder name of each member file
    subject: str | None = None  # what most of its photos show, when one word clearly wins
