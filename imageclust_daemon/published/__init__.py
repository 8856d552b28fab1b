"""What is published for readers: the read-only catalog, the search snapshot beside it,
the organized view, and the one publish that writes them."""
