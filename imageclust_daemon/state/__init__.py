"""The state database: the store that alone reads and writes its tables, and the
migrations that make them (and the `published_*` views everything else reads)."""
