"""Writing shards: listing a folder or a manifest, pairing files into samples, keys, tar shards."""
