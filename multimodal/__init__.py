"""The multimodal model, its losses and checkpoints, and the public API."""
from multimodal.checkpoint import load_model, save_checkpoint
from multimodal.model import ModelConfig, MultimodalModel
from multimodal.presets import PRESETS, preset

# The inference API loads image and audio decoders (torchvision, torchaudio): imported on first use.
_API_NAMES = ("EmbeddingModel", "ZeroShotClassifier", "load_embedding_model")


def __getattr__(name: str):
    if name in _API_NAMES:
        from multimodal.apps import api

        return getattr(api, name)
    raise AttributeError(f"module 'multimodal' has no attribute {name!r}")


__all__ = [
    "EmbeddingModel", "ModelConfig", "MultimodalModel", "PRESETS", "ZeroShotClassifier", "load_embedding_model",
    "load_model", "preset", "save_checkpoint",
]
