-- A file under a root that is missing, empty or cannot be listed (an unmounted
-- drive, a flaky network share) is not gone: its row stays live, flagged offline,
-- and its photo stays in its group until the folder is back.
ALTER TABLE files ADD COLUMN offline_since REAL;
