-- Group titles. A label is cached under the group's membership (members_digest),
-- the LLM that wrote it and the prompt version: an unchanged group, a restart or
-- a no-op recluster never asks again.

CREATE TABLE labels (
    members_digest  TEXT NOT NULL,
    llm_model       TEXT NOT NULL,         -- e.g. "gemma3:4b"
    prompt_version  INTEGER NOT NULL,
    title           TEXT NOT NULL,         -- at most 25 characters
    catchy_phrase   TEXT NOT NULL,         -- at most 100 characters
    created_at      REAL NOT NULL,
    PRIMARY KEY (members_digest, llm_model, prompt_version)
) WITHOUT ROWID;

ALTER TABLE clusters ADD COLUMN title TEXT;
ALTER TABLE clusters ADD COLUMN catchy_phrase TEXT;
ALTER TABLE clusters ADD COLUMN label_source TEXT CHECK (label_source IN ('ollama', 'fallback'));
ALTER TABLE clusters ADD COLUMN labeled_at REAL;
