"""Storage: the SQLite catalog (the truth) and the hnswlib ANN cache."""
