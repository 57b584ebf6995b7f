"""Caption tokenizers: the project's byte-level BPE and the original CLIP tokenizer."""
