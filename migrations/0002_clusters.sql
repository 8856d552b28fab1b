-- Groups of photos by meaning. Cluster ids are stable across runs (a new group
-- inherits the id of the old group it overlaps most) and never reused: a group
-- that disappears is retired, not deleted.

CREATE TABLE cluster_runs (
    id              INTEGER PRIMARY KEY,
    started_at      REAL NOT NULL,
    seconds         REAL NOT NULL,
    model_id        TEXT NOT NULL,
    min_size        INTEGER NOT NULL,
    max_size        INTEGER NOT NULL,
    method          TEXT NOT NULL,         -- "exact" or "two-stage"
    n_points        INTEGER NOT NULL,      -- distinct contents clustered
    n_clusters      INTEGER NOT NULL,
    unclustered     INTEGER NOT NULL,      -- points in no group
    new_clusters    INTEGER NOT NULL,
    changed_clusters INTEGER NOT NULL,
    retired_clusters INTEGER NOT NULL,
    input_digest    TEXT NOT NULL          -- model, limits and member hashes: same digest = nothing to do
);

CREATE TABLE clusters (
    id              INTEGER PRIMARY KEY,
    state           TEXT NOT NULL CHECK (state IN ('active', 'retired')),
    size            INTEGER NOT NULL,
    centroid        BLOB NOT NULL,         -- float32 little-endian, L2-normalized
    members_digest  TEXT NOT NULL,         -- BLAKE3 of the sorted member hashes
    created_run     INTEGER NOT NULL REFERENCES cluster_runs(id),
    changed_run     INTEGER NOT NULL REFERENCES cluster_runs(id),  -- membership last changed
    retired_run     INTEGER REFERENCES cluster_runs(id),
    needs_label     INTEGER NOT NULL DEFAULT 1  -- new or changed since it was last labeled
);

CREATE INDEX clusters_by_state ON clusters(state);

CREATE TABLE cluster_members (
    cluster_id      INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    content_hash    TEXT NOT NULL REFERENCES contents(hash),
    rank            INTEGER NOT NULL,      -- 0 = closest to the centroid; 0..2 are the representatives
    similarity      REAL NOT NULL,         -- cosine to the centroid
    PRIMARY KEY (cluster_id, content_hash)
) WITHOUT ROWID;

CREATE INDEX cluster_members_by_content ON cluster_members(content_hash);
