"""Tests of multimodal/'s model core (model, losses, checkpoints, config parsing, pretrained starts)."""
