-- Albums that stay put: a regroup is incremental (cluster.regroup) and needs from the
-- last run more than its albums: each album's size and fit when it was last cut (its
-- members' variance about their centre: the baseline its growth and drift are measured
-- against), and the photos the last run saw and left in no album (they wait for photos
-- like them; a live photo in no album and not waiting is new to the next run). A run
-- records what it did.
ALTER TABLE clusters ADD COLUMN cut_size INTEGER;
ALTER TABLE clusters ADD COLUMN fit REAL;
ALTER TABLE cluster_runs ADD COLUMN full_reason TEXT NOT NULL DEFAULT '';  -- '' = incremental
ALTER TABLE cluster_runs ADD COLUMN joined INTEGER NOT NULL DEFAULT 0;   -- new photos placed in albums
ALTER TABLE cluster_runs ADD COLUMN moved INTEGER NOT NULL DEFAULT 0;    -- photos that left some of their album
ALTER TABLE cluster_runs ADD COLUMN dissolved INTEGER NOT NULL DEFAULT 0;  -- albums fallen below min_size
ALTER TABLE cluster_runs ADD COLUMN recut TEXT NOT NULL DEFAULT '{}';  -- JSON {album id: why it was cut again}

CREATE TABLE cluster_waiting (
    content_hash    TEXT PRIMARY KEY REFERENCES contents(hash)
) WITHOUT ROWID;

-- Photos the last run (before this migration) saw and left in no album wait: those
-- embedded before it started (a photo embedded since is new to the next run).
INSERT INTO cluster_waiting (content_hash)
SELECT DISTINCT e.content_hash FROM embeddings e
WHERE e.created_at <= (SELECT max(started_at) FROM cluster_runs)
  AND EXISTS (SELECT 1 FROM files f WHERE f.content_hash = e.content_hash AND f.state = 'live')
  AND NOT EXISTS (
    SELECT 1 FROM cluster_members m JOIN clusters c ON c.id = m.cluster_id
    WHERE m.content_hash = e.content_hash AND c.state = 'active');
