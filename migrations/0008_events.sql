-- Events: moments, days out and trips, cut from the photos' capture times and positions
-- (events.py). Each distinct photo with a plausible capture time belongs to one event;
-- an event's id is stable: the days of new photos are cut again, every other event is
-- kept as it is. Titles are where and when, unique across events.
CREATE TABLE events (
    id            INTEGER PRIMARY KEY,     -- never reused
    state         TEXT NOT NULL CHECK (state IN ('active', 'retired')),
    kind          TEXT NOT NULL CHECK (kind IN ('moment', 'day', 'trip')),
    title         TEXT NOT NULL,
    started_at    TEXT NOT NULL,           -- the first photo's capture time, as EXIF has it
    ended_at      TEXT NOT NULL,           -- the last photo's
    place         TEXT,                    -- where most of its positioned photos were taken
    city          TEXT,                    -- the place's own name, as its title says it
    lat           REAL,
    lon           REAL,
    size          INTEGER NOT NULL,        -- distinct photos
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL            -- members or title last changed
);

CREATE TABLE event_members (
    content_hash  TEXT PRIMARY KEY REFERENCES contents(hash),
    event_id      INTEGER NOT NULL REFERENCES events(id)
) WITHOUT ROWID;

CREATE INDEX event_members_by_event ON event_members(event_id);

-- What most of an album's photos show, in one everyday word (the text tower against a
-- fixed vocabulary: label.SUBJECTS), when one word clearly wins; NULL otherwise, or
-- without a text model. Offline titles and titles that would read alike use it.
ALTER TABLE clusters ADD COLUMN subject TEXT;

-- The vocabulary's text vectors (subjects.SUBJECTS through the text tower), per model and
-- vocabulary version: embedded once, not at every regroup.
CREATE TABLE subject_vectors (
    model_id      TEXT NOT NULL,
    version       INTEGER NOT NULL,
    words         INTEGER NOT NULL,
    dim           INTEGER NOT NULL,
    vectors       BLOB NOT NULL,           -- float32 [words, dim], L2-normalized rows
    PRIMARY KEY (model_id, version)
) WITHOUT ROWID;
