"""Transformer encoders built from one attention block: text, vision (ViT) and audio (AST).

Pure ``torch.nn``: nothing here knows about files, tokenizers, devices or trainers.
"""
from multimodal.encoders.attention import Attention, choose_backend, scaled_dot_product
from multimodal.encoders.audio import AudioConfig, AudioEncoder
from multimodal.encoders.block import Block, Transformer, TransformerConfig
from multimodal.encoders.patch_dropout import PatchDropout
from multimodal.encoders.text import TextConfig, TextEncoder
from multimodal.encoders.vision import VisionConfig, VisionEncoder

__all__ = [
    "Attention", "AudioConfig", "AudioEncoder", "Block", "PatchDropout", "TextConfig", "TextEncoder",
    "Transformer", "TransformerConfig", "VisionConfig", "VisionEncoder", "choose_backend", "scaled_dot_product",
]
