"""The use cases: what the CLI and the daemon both do to a library (`library`)."""
