-- The embedding cache: files by path, contents by hash, embeddings by (hash, model).
-- Paths are BLOBs holding the exact bytes of the path (os.fsencode): a filename
-- that is not valid UTF-8 is legal on Linux and must round-trip.

CREATE TABLE contents (
    hash        TEXT PRIMARY KEY,          -- BLAKE3-256 of the file's bytes, lowercase hex
    size        INTEGER NOT NULL,
    width       INTEGER,                   -- as displayed (EXIF orientation applied)
    height      INTEGER,
    taken_at    TEXT,                      -- EXIF DateTimeOriginal, ISO 8601, offset when known
    lat         REAL,
    lon         REAL,
    error       TEXT,                      -- why it cannot be decoded; NULL when it can
    created_at  REAL NOT NULL
);

CREATE TABLE files (
    path          BLOB PRIMARY KEY,
    size          INTEGER NOT NULL,
    mtime_ns      INTEGER NOT NULL,
    inode         INTEGER NOT NULL,
    device        INTEGER NOT NULL,
    content_hash  TEXT REFERENCES contents(hash),  -- NULL until read, or when it cannot be read
    state         TEXT NOT NULL CHECK (state IN ('live', 'gone')),
    error         TEXT,                    -- why the bytes could not be read
    first_seen    REAL NOT NULL,
    updated_at    REAL NOT NULL,           -- when this row was last written (unchanged files are not)
    gone_at       REAL
) WITHOUT ROWID;

CREATE INDEX files_by_content ON files(content_hash);
CREATE INDEX files_by_inode ON files(device, inode);

CREATE TABLE embeddings (
    content_hash  TEXT NOT NULL REFERENCES contents(hash) ON DELETE CASCADE,
    model_id      TEXT NOT NULL,           -- "<name>@sha256:<digest of the ONNX file>"
    dim           INTEGER NOT NULL,
    vector        BLOB NOT NULL,           -- float32 little-endian, L2-normalized
    created_at    REAL NOT NULL,
    PRIMARY KEY (content_hash, model_id)
) WITHOUT ROWID;

CREATE INDEX embeddings_by_model ON embeddings(model_id);

-- sha256 of a model file is costly (350 MB for ViT-B/32): cached under its stat.
CREATE TABLE model_files (
    path      BLOB PRIMARY KEY,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    sha256    TEXT NOT NULL
) WITHOUT ROWID;
