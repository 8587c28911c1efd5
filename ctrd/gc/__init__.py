"""Garbage collection scheduling (the collection itself is ctrd.metadata.gc)."""
