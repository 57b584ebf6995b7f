"""The multimodal model, its losses and checkpoints, and the public API."""
from multimodal.checkpoint import load_model, save_checkpoint
from multimodal.model import ModelConfig, MultimodalModel
from multimodal.presets import PRESETS, preset

__all__ = ["ModelConfig", "MultimodalModel", "PRESETS", "load_model", "preset", "save_checkpoint"]
