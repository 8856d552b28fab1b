-- What the state database shows the rest of imageclust: the published catalog, the search
-- snapshot, the RAW+JPEG pairing and `status` read these views, never the tables, so
-- that only the store and these migrations know how the state is laid out (a migration
-- may change a table and keep its view).

-- Every live file with what its bytes are (NULLs until read) and its one status under a
-- model: the model is a query's parameter, so the status is a per-query join
-- (`published_embeddings`); `error` is why the file cannot be read, or else why its
-- content cannot be decoded.
CREATE VIEW published_files AS
SELECT f.path, f.content_hash, f.size, c.width, c.height, c.taken_at, c.lat, c.lon, c.format,
       coalesce(f.error, c.error) AS error,
       f.error IS NOT NULL AS unreadable,                        -- its bytes could not be read
       f.error IS NULL AND c.error IS NOT NULL AS undecodable,   -- read, but not an image it can decode
       f.offline_since IS NOT NULL AS offline
FROM files f LEFT JOIN contents c ON c.hash = f.content_hash
WHERE f.state = 'live';

-- The embeddings, by content and model.
CREATE VIEW published_embeddings AS
SELECT content_hash, model_id, vector FROM embeddings;

-- The positions the live photos were taken at (the contents first: a scan of contents,
-- 0.06 s at 1M photos with none, where a scan of the files joined to them takes 1.5 s).
CREATE VIEW published_positions AS
SELECT DISTINCT c.lat, c.lon FROM contents c
WHERE c.lat IS NOT NULL AND c.lon IS NOT NULL
  AND EXISTS (SELECT 1 FROM files f WHERE f.content_hash = c.hash AND f.state = 'live');

-- The albums now, with when each last changed (membership or title), ISO 8601 UTC.
CREATE VIEW published_albums AS
SELECT c.id, c.title, c.catchy_phrase, c.size, c.label_source,
       strftime('%Y-%m-%dT%H:%M:%S+00:00', max(coalesce(c.labeled_at, 0), r.started_at),
                'unixepoch') AS updated_at
FROM clusters c JOIN cluster_runs r ON r.id = c.changed_run
WHERE c.state = 'active';

CREATE VIEW published_album_members AS
SELECT m.cluster_id, m.content_hash, m.rank
FROM cluster_members m JOIN clusters c ON c.id = m.cluster_id
WHERE c.state = 'active';

CREATE VIEW published_events AS
SELECT id, title, started_at, ended_at, place, lat, lon, size, kind
FROM events WHERE state = 'active';

CREATE VIEW published_event_members AS
SELECT content_hash, event_id FROM event_members;
