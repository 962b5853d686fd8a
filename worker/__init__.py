"""position-worker: the trade-execution back end (see README.md)."""
