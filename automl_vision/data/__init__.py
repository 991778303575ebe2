"""Data: JSONL reading and validation, splitting, storage."""
