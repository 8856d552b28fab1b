-- Whether a content's metadata was read for its capture time by the readers of migration
-- 10 on (EXIF DateTimeOriginal, then XMP, then IPTC, then EXIF's DateTime). Contents read
-- before are read again once, for their metadata alone (`pipeline.refresh_dates`): an
-- XMP or IPTC date is no longer missed in a library indexed before, nor an original
-- taken over by EXIF's DateTime, and each capture time gets its source.
ALTER TABLE contents ADD COLUMN dates_read INTEGER NOT NULL DEFAULT 0;
UPDATE contents SET dates_read = 1 WHERE error IS NOT NULL;
-- (what is still to read, found without a scan of every content: empty once all are read)
CREATE INDEX contents_dates_unread ON contents(hash) WHERE dates_read = 0;
