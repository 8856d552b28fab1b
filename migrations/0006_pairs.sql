-- RAW+JPEG pairs are found from the RAWs: their contents by format, then the files
-- beside them (pairs.find). Without this index that first step reads every content.
CREATE INDEX contents_by_format ON contents(format);
