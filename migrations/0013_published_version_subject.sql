-- Two gaps of migration 12's published version:
-- - an album's subject (what its photos show, in one word) feeds its distinct title in
--   the catalog, and can change while its members do not (a text model added later);
-- - the version alone is unique only within one database: a state database deleted and
--   indexed anew, or restored from a backup, can reach the very number a catalog
--   recorded with other content. A random id of this database goes with it.

DROP TRIGGER published_clusters_update;
CREATE TRIGGER published_clusters_update AFTER UPDATE ON clusters
WHEN OLD.state IS NOT NEW.state OR OLD.title IS NOT NEW.title
  OR OLD.catchy_phrase IS NOT NEW.catchy_phrase OR OLD.size IS NOT NEW.size
  OR OLD.label_source IS NOT NEW.label_source OR OLD.labeled_at IS NOT NEW.labeled_at
  OR OLD.changed_run IS NOT NEW.changed_run OR OLD.subject IS NOT NEW.subject
BEGIN UPDATE published_inputs SET version = version + 1 WHERE id = 1; END;

ALTER TABLE published_inputs ADD COLUMN database_id TEXT;
UPDATE published_inputs SET database_id = lower(hex(randomblob(16)));

DROP VIEW published_version;
CREATE VIEW published_version AS
SELECT database_id || ':' || version AS version FROM published_inputs WHERE id = 1;
