-- Which record a photo's capture time came from: "exif" (DateTimeOriginal), "xmp",
-- "iptc", "exif-modified" (EXIF's DateTime: when the file was last changed) or "raw"
-- (what LibRaw read); NULL without a capture time, and for contents read before this.
ALTER TABLE contents ADD COLUMN taken_at_source TEXT;

DROP VIEW published_files;
CREATE VIEW published_files AS
SELECT f.path, f.content_hash, f.size, c.width, c.height, c.taken_at, c.taken_at_source,
       c.lat, c.lon, c.format,
       coalesce(f.error, c.error) AS error,
       f.error IS NOT NULL AS unreadable,                        -- its bytes could not be read
       f.error IS NULL AND c.error IS NOT NULL AS undecodable,   -- read, but not an image it can decode
       f.offline_since IS NOT NULL AS offline
FROM files f LEFT JOIN contents c ON c.hash = f.content_hash
WHERE f.state = 'live';
