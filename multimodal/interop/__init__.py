"""Other projects' weights in our model, and back: OpenCLIP, Hugging Face CLIP, Hugging Face AST.

Each converter maps a state dict key by key, infers the architecture from the tensor
shapes (and the source's configuration where shapes cannot tell), and refuses any
layout it does not fully understand, naming the keys that did not map. None of them
imports open_clip or transformers: they read tensors and JSON only.
"""
from multimodal.interop.key_mapping import load_state_file
from multimodal.interop.converters import SOURCE_KINDS, convert_checkpoint
from multimodal.interop.hf_ast import hf_ast_model_config, hf_ast_to_model
from multimodal.interop.hf_clip import hf_clip_model_config, hf_clip_to_model, model_to_hf_clip, save_hf_clip
from multimodal.interop.open_clip import open_clip_model_config, open_clip_to_model

__all__ = [
    "SOURCE_KINDS", "convert_checkpoint", "hf_ast_model_config", "hf_ast_to_model", "hf_clip_model_config",
    "hf_clip_to_model", "load_state_file", "model_to_hf_clip", "open_clip_model_config", "open_clip_to_model",
    "save_hf_clip",
]
