-- The format each content was decoded as (by its bytes, not its name: a JPEG named
-- .heic is a JPEG), and how many files of each skipped kind (videos, sidecars) the
-- last full rescan saw: counted for `status`, never failed.
ALTER TABLE contents ADD COLUMN format TEXT;
CREATE TABLE skipped_files (
    kind        TEXT PRIMARY KEY,        -- 'video', 'sidecar'
    files       INTEGER NOT NULL,
    counted_at  REAL NOT NULL
);
