"""The state's albums, regroup runs, events and titles: the half of the store that the
grouping writes and reads (`Store` inherits it; nothing else knows these tables)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence

import numpy as np

from imageclust_daemon.records import (
    Baseline,
    ClusterRun,
    EventRow,
    GroupFacts,
    GroupRow,
    Label,
    LabelJob,
)
from imageclust_daemon.state.connection import Connection


def vector_to_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def blob_to_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


def _insert_run(conn: sqlite3.Connection, run: ClusterRun) -> int:
    """Record a regroup; its id."""
    run_id = conn.execute(
        "INSERT INTO cluster_runs (started_at, seconds, model_id, min_size, max_size, "
        "method, n_points, n_clusters, unclustered, new_clusters, changed_clusters, "
        "retired_clusters, input_digest, full_reason, joined, moved, dissolved, recut) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run.started_at,
            run.seconds,
            run.model_id,
            run.min_size,
            run.max_size,
            run.method,
            run.n_points,
            run.n_clusters,
            run.unclustered,
            run.new_clusters,
            run.changed_clusters,
            run.retired_clusters,
            run.input_digest,
            run.full_reason,
            run.joined,
            run.moved,
            run.dissolved,
            json.dumps({str(k): v for k, v in sorted(run.recut.items())}),
        ),
    ).lastrowid
    assert run_id is not None
    return int(run_id)


def _write_group(conn: sqlite3.Connection, g: GroupRow, run_id: int) -> None:
    """Store one group a regroup cut or changed, its members with it."""
    blob = vector_to_blob(g.centroid)
    if g.is_new:
        conn.execute(
            "INSERT INTO clusters (id, state, size, centroid, members_digest, "
            "created_run, changed_run, needs_label, cut_size, fit, subject) "
            "VALUES (?, 'active', ?, ?, ?, ?, ?, 1, ?, ?, ?)",
            (
                g.id,
                len(g.members),
                blob,
                g.members_digest,
                run_id,
                run_id,
                g.cut_size,
                g.fit,
                g.subject,
            ),
        )
    elif g.changed:
        conn.execute(
            "UPDATE clusters SET state = 'active', size = ?, centroid = ?, "
            "members_digest = ?, changed_run = ?, needs_label = 1, cut_size = ?, "
            "fit = ?, subject = ? WHERE id = ?",
            (
                len(g.members),
                blob,
                g.members_digest,
                run_id,
                g.cut_size,
                g.fit,
                g.subject,
                g.id,
            ),
        )
    else:  # same members: the label stays; the centroid may move with a new model
        conn.execute(
            "UPDATE clusters SET centroid = ?, cut_size = ?, fit = ?, "
            "subject = coalesce(?, subject) WHERE id = ?",
            (blob, g.cut_size, g.fit, g.subject, g.id),
        )
    conn.execute("DELETE FROM cluster_members WHERE cluster_id = ?", (g.id,))
    conn.executemany(
        "INSERT INTO cluster_members (cluster_id, content_hash, rank, similarity) "
        "VALUES (?, ?, ?, ?)",
        [(g.id, h, rank, sim) for h, rank, sim in g.members],
    )


class GroupTables(Connection):
    """Albums (clusters), their runs, events and labels."""

    # -- clusters ------------------------------------------------------------------------------

    def active_clusters(self) -> dict[int, set[str]]:
        groups: dict[int, set[str]] = {}
        for cluster_id, content_hash in self.conn.execute(
            "SELECT m.cluster_id, m.content_hash FROM cluster_members m "
            "JOIN clusters c ON c.id = m.cluster_id WHERE c.state = 'active'"
        ):
            groups.setdefault(cluster_id, set()).add(content_hash)
        return groups

    def album_baselines(self) -> dict[int, Baseline]:
        """Each active album's size and fit when it was last cut (albums cut before these
        were kept have none)."""
        return {
            cid: Baseline(size, fit)
            for cid, size, fit in self.conn.execute(
                "SELECT id, cut_size, fit FROM clusters WHERE state = 'active' "
                "AND cut_size IS NOT NULL AND fit IS NOT NULL"
            )
        }

    def waiting_contents(self) -> set[str]:
        """The contents the last regroup saw and left in no album."""
        return {h for (h,) in self.conn.execute("SELECT content_hash FROM cluster_waiting")}

    def next_cluster_id(self) -> int:
        """An id above every id ever given, retired groups included: ids are never reused."""
        row = self.conn.execute("SELECT coalesce(max(id), 0) + 1 FROM clusters").fetchone()
        return int(row[0])

    def last_cluster_run(self) -> ClusterRun | None:
        cursor = self.conn.execute(
            "SELECT id AS run_id, model_id, min_size, max_size, input_digest, started_at, "
            "seconds, method, n_points, n_clusters, unclustered, new_clusters, "
            "changed_clusters, retired_clusters, full_reason, "
            "joined, moved, dissolved, recut FROM cluster_runs ORDER BY id DESC LIMIT 1"
        )
        row = cursor.fetchone()
        if row is None:
            return None
        fields = {d[0]: v for d, v in zip(cursor.description, row, strict=True)}
        fields["recut"] = {int(k): str(v) for k, v in json.loads(fields["recut"]).items()}
        return ClusterRun(**fields)

    def save_clustering(
        self,
        run: ClusterRun,
        groups: list[GroupRow],
        retired: list[int],
        waiting: Iterable[str],
    ) -> int:
        """Record a run in one transaction: the groups it cut or changed (others are left as
        they are), the groups it retired, and the contents left waiting; returns its id."""
        with self.transaction() as conn:
            run_id = _insert_run(conn, run)
            for g in groups:
                _write_group(conn, g, run_id)
            for cid in retired:
                conn.execute(
                    "UPDATE clusters SET state = 'retired', retired_run = ? WHERE id = ?",
                    (run_id, cid),
                )
                conn.execute("DELETE FROM cluster_members WHERE cluster_id = ?", (cid,))
            conn.execute("DELETE FROM cluster_waiting")
            conn.executemany(
                "INSERT INTO cluster_waiting (content_hash) VALUES (?)", ((h,) for h in waiting)
            )
        return run_id

    def subject_vectors(self, model_id: str, version: int) -> np.ndarray | None:
        row = self.conn.execute(
            "SELECT words, dim, vectors FROM subject_vectors WHERE model_id = ? AND version = ?",
            (model_id, version),
        ).fetchone()
        if row is None or len(row[2]) != 4 * row[0] * row[1]:
            return None
        return blob_to_vector(row[2]).reshape(row[0], row[1])

    def keep_subject_vectors(self, model_id: str, version: int, vectors: np.ndarray) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO subject_vectors (model_id, version, words, dim, vectors) "
                "VALUES (?, ?, ?, ?, ?)",
                (model_id, version, vectors.shape[0], vectors.shape[1], vector_to_blob(vectors)),
            )

    # -- events --------------------------------------------------------------------------------

    def dated_contents(self) -> list[tuple[str, str, float | None, float | None]]:
        """(hash, capture time, lat, lon) of each distinct content of a live file that has a
        capture time and decodes, in hash order."""
        return self.conn.execute(
            "SELECT c.hash, c.taken_at, c.lat, c.lon FROM contents c "
            "WHERE c.taken_at IS NOT NULL AND c.error IS NULL AND EXISTS "
            "(SELECT 1 FROM files f WHERE f.content_hash = c.hash AND f.state = 'live') "
            "ORDER BY c.hash"
        ).fetchall()

    def active_events(self) -> dict[int, tuple[EventRow, set[str]]]:
        """Each active event as stored, and its members."""
        members: dict[int, set[str]] = {}
        for content_hash, event_id in self.conn.execute(
            "SELECT content_hash, event_id FROM event_members"
        ):
            members.setdefault(event_id, set()).add(content_hash)
        found = {}
        for eid, kind, title, started, ended, place, city, lat, lon in self.conn.execute(
            "SELECT id, kind, title, started_at, ended_at, place, city, lat, lon FROM events "
            "WHERE state = 'active'"
        ):
            event = EventRow(eid, kind, title, started, ended, place, city, lat, lon, members=())
            found[eid] = (event, members.get(eid, set()))
        return found

    def has_events(self) -> bool:
        return self.conn.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None

    def next_event_id(self) -> int:
        """An id above every id ever given: ids are never reused."""
        return int(self.conn.execute("SELECT coalesce(max(id), 0) + 1 FROM events").fetchone()[0])

    def save_events(self, changed: Sequence[EventRow], retired: Iterable[int]) -> None:
        """Write the events that are new or changed (members, kind, times or title) and
        retire those gone, in one transaction."""
        now = time.time()
        with self.transaction() as conn:
            for e in changed:
                conn.execute(
                    "INSERT INTO events (id, state, kind, title, started_at, ended_at, place, "
                    "city, lat, lon, size, created_at, updated_at) "
                    "VALUES (?, 'active', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET state = 'active', kind = excluded.kind, "
                    "title = excluded.title, started_at = excluded.started_at, "
                    "ended_at = excluded.ended_at, place = excluded.place, city = excluded.city, "
                    "lat = excluded.lat, lon = excluded.lon, size = excluded.size, "
                    "updated_at = excluded.updated_at",
                    (
                        e.id,
                        e.kind,
                        e.title,
                        e.started_at,
                        e.ended_at,
                        e.place,
                        e.city,
                        e.lat,
                        e.lon,
                        len(e.members),
                        now,
                        now,
                    ),
                )
                conn.execute("DELETE FROM event_members WHERE event_id = ?", (e.id,))
            for event_id in retired:
                conn.execute(
                    "UPDATE events SET state = 'retired', updated_at = ? WHERE id = ?",
                    (now, event_id),
                )
                conn.execute("DELETE FROM event_members WHERE event_id = ?", (event_id,))
            conn.executemany(
                "INSERT OR REPLACE INTO event_members (content_hash, event_id) VALUES (?, ?)",
                [(h, e.id) for e in changed for h in e.members],
            )

    # -- labels --------------------------------------------------------------------------------

    def label_jobs(self, *, everything: bool = False) -> list[LabelJob]:
        """Active groups needing a title: new or changed, or still on a fallback title."""
        jobs = []
        for cluster_id, digest, size, source, title, phrase, needs in self.conn.execute(
            "SELECT id, members_digest, size, label_source, title, catchy_phrase, "
            "needs_label OR title IS NULL "
            "FROM clusters WHERE state = 'active' "
            "AND (? OR needs_label = 1 OR label_source IS NOT 'ollama') ORDER BY id",
            (int(everything),),
        ).fetchall():
            reps = tuple(
                path
                for (path,) in self.conn.execute(
                    "SELECT (SELECT min(f.path) FROM files f WHERE f.content_hash = m.content_hash "
                    "AND f.state = 'live') FROM cluster_members m "
                    "WHERE m.cluster_id = ? AND m.rank < 3 ORDER BY m.rank",
                    (cluster_id,),
                )
                if path is not None
            )
            jobs.append(
                LabelJob(cluster_id, digest, size, reps, source, title, phrase, bool(needs))
            )
        return jobs

    def group_facts(self, cluster_id: int) -> GroupFacts:
        """Dates, positions and folders of a group's members, for the prompt and the fallback."""
        taken, positions = [], []
        size = 0
        for taken_at, lat, lon in self.conn.execute(
            "SELECT c.taken_at, c.lat, c.lon FROM cluster_members m JOIN contents c "
            "ON c.hash = m.content_hash WHERE m.cluster_id = ?",
            (cluster_id,),
        ):
            size += 1
            if taken_at:
                taken.append(taken_at)
            if lat is not None and lon is not None:
                positions.append((lat, lon))
        folders = [
            os.path.basename(os.path.dirname(path)).decode("utf-8", "replace")
            for (path,) in self.conn.execute(
                "SELECT min(f.path) FROM cluster_members m JOIN files f "
                "ON f.content_hash = m.content_hash AND f.state = 'live' "
                "WHERE m.cluster_id = ? GROUP BY m.content_hash",
                (cluster_id,),
            )
        ]
        (subject,) = self.conn.execute(
            "SELECT subject FROM clusters WHERE id = ?", (cluster_id,)
        ).fetchone() or (None,)
        return GroupFacts(size, tuple(sorted(taken)), tuple(positions), tuple(folders), subject)

    def cached_label(self, digest: str, llm_model: str, prompt_version: int) -> Label | None:
        row = self.conn.execute(
            "SELECT title, catchy_phrase FROM labels WHERE members_digest = ? AND llm_model = ? "
            "AND prompt_version = ?",
            (digest, llm_model, prompt_version),
        ).fetchone()
        return Label(row[0], row[1], "ollama") if row else None

    def save_label(self, job: LabelJob, label: Label, llm_model: str, prompt_version: int) -> None:
        """Give a group its title; an LLM title is also cached under the group's membership.

        A fallback title stays marked `label_source = 'fallback'`, so the LLM is asked
        again next cycle; `needs_label` is cleared either way (the title is current).
        """
        now = time.time()
        with self.transaction() as conn:
            if label.source == "ollama":
                conn.execute(
                    "INSERT OR REPLACE INTO labels (members_digest, llm_model, prompt_version, "
                    "title, catchy_phrase, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        job.members_digest,
                        llm_model,
                        prompt_version,
                        label.title,
                        label.catchy_phrase,
                        now,
                    ),
                )
            conn.execute(
                "UPDATE clusters SET title = ?, catchy_phrase = ?, label_source = ?, "
                "labeled_at = ?, needs_label = ? WHERE id = ? AND members_digest = ?",
                (
                    label.title,
                    label.catchy_phrase,
                    label.source,
                    now,
                    0,  # the title is current for this membership, whatever wrote it
                    job.cluster_id,
                    job.members_digest,
                ),
            )
