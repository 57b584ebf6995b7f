"""The read pipeline: shard specs and reads (local and remote), the per-source sample stream, batches mixed by weight, collation and the loader."""
