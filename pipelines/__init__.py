"""DALI graphs only (no torch): read, shard, decode, augment; uint8 out."""
