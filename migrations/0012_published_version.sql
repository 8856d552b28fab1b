-- What the catalog is built from, as one number: every write to a column the published_*
-- views read moves it, by these triggers, whatever code made the write. The catalog
-- records the number it was built from (catalog_info "inputs"); a publish whose inputs
-- did not change since leaves the catalog as it is (no rebuild, no swap): a second
-- `index` of an unchanged library, a daemon start, a `recluster` that moved nothing.
-- An UPDATE that writes a column its own value again does not move it.

CREATE TABLE published_inputs (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  INTEGER NOT NULL
);
INSERT INTO published_inputs (id, version) VALUES (1, 1);

CREATE VIEW published_version AS SELECT version FROM published_inputs WHERE id = 1;

CREATE TRIGGER published_files_insert AFTER INSERT ON files
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER published_files_delete AFTER DELETE ON files
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER published_files_update AFTER UPDATE ON files
WHEN OLD.path IS NOT NEW.path OR OLD.content_hash IS NOT NEW.content_hash
  OR OLD.size IS NOT NEW.size OR OLD.state IS NOT NEW.state OR OLD.error IS NOT NEW.error
  OR OLD.offline_since IS NOT NEW.offline_since
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER published_contents_insert AFTER INSERT ON contents
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER published_contents_delete AFTER DELETE ON contents
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER published_contents_update AFTER UPDATE ON contents
WHEN OLD.width IS NOT NEW.width OR OLD.height IS NOT NEW.height
  OR OLD.taken_at IS NOT NEW.taken_at OR OLD.taken_at_source IS NOT NEW.taken_at_source
  OR OLD.lat IS NOT NEW.lat OR OLD.lon IS NOT NEW.lon OR OLD.format IS NOT NEW.format
  OR OLD.error IS NOT NEW.error
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER published_embeddings_insert AFTER INSERT ON embeddings
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER published_embeddings_delete AFTER DELETE ON embeddings
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER published_embeddings_update AFTER UPDATE ON embeddings
WHEN OLD.vector IS NOT NEW.vector OR OLD.model_id IS NOT NEW.model_id
  OR OLD.content_hash IS NOT NEW.content_hash
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER published_clusters_insert AFTER INSERT ON clusters
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER published_clusters_delete AFTER DELETE ON clusters
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER published_clusters_update AFTER UPDATE ON clusters
WHEN OLD.state IS NOT NEW.state OR OLD.title IS NOT NEW.title
  OR OLD.catchy_phrase IS NOT NEW.catchy_phrase OR OLD.size IS NOT NEW.size
  OR OLD.label_source IS NOT NEW.label_source OR OLD.labeled_at IS NOT NEW.labeled_at
  OR OLD.changed_run IS NOT NEW.changed_run
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER published_cluster_runs_update AFTER UPDATE ON cluster_runs
WHEN OLD.started_at IS NOT NEW.started_at
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER published_cluster_members_insert AFTER INSERT ON cluster_members
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER published_cluster_members_delete AFTER DELETE ON cluster_members
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER published_cluster_members_update AFTER UPDATE ON cluster_members
WHEN OLD.cluster_id IS NOT NEW.cluster_id OR OLD.content_hash IS NOT NEW.content_hash
  OR OLD.rank IS NOT NEW.rank
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER published_events_insert AFTER INSERT ON events
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER published_events_delete AFTER DELETE ON events
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER published_events_update AFTER UPDATE ON events
WHEN OLD.state IS NOT NEW.state OR OLD.title IS NOT NEW.title OR OLD.kind IS NOT NEW.kind
  OR OLD.started_at IS NOT NEW.started_at OR OLD.ended_at IS NOT NEW.ended_at
  OR OLD.place IS NOT NEW.place OR OLD.lat IS NOT NEW.lat OR OLD.lon IS NOT NEW.lon
  OR OLD.size IS NOT NEW.size
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;

CREATE TRIGGER published_event_members_insert AFTER INSERT ON event_members
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER published_event_members_delete AFTER DELETE ON event_members
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER published_event_members_update AFTER UPDATE ON event_members
WHEN OLD.event_id IS NOT NEW.event_id OR OLD.content_hash IS NOT NEW.content_hash
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;
