"""The local web gallery: the Starlette app and its server, what it reads from the
catalog, its pages and thumbnails."""
