"""Hugging Face ``ASTModel`` (Audio Spectrogram Transformer) into an audio-only ``MultimodalModel``.

The result holds the audio encoder and an identity projection (``embed_dim`` = the
encoder width), so ``encode("audio", frames)`` is ``ASTModel(frames).pooler_output``
normalised: the mean of the CLS and distillation tokens after the final LayerNorm.

Two key layouts are read: the one on the Hugging Face Hub (``encoder.layer.N.attention.
attention.{query,key,value}``, ``attention.output.dense``, ``intermediate.dense``,
``output.dense``) and the one transformers 5 uses in memory (``layers.N.attention.
{q,k,v,o}_proj``, ``mlp.fc1``, ``mlp.fc2``); both with ``layernorm_before`` /
``layernorm_after``, ``embeddings.{cls_token, distillation_token, position_embeddings,
patch_embeddings.projection}`` and ``layernorm``. The ``audio_spectrogram_transformer.``
prefix of ``ASTForAudioClassification`` is accepted; its AudioSet classifier head is
not part of an encoder and is dropped with a warning.

Patches: 16x16 at stride (frequency_stride, time_stride) over the (mel bins, frames)
plane, flattened frequency-major, which is our order. Our encoder has one stride for
both axes, so checkpoints with different strides are refused.
"""
from __future__ import annotations

import warnings

import torch

from multimodal.data.preprocess.preprocess_config import AudioPreprocessConfig
from multimodal.encoders import AudioConfig, TransformerConfig
from multimodal.checkpoint import load_state_checked
from multimodal.interop.key_mapping import StateReader, mlp_ratio_for
from multimodal.interop.hf_clip import ACTIVATIONS_FROM_HF
from multimodal.model import ModelConfig, MultimodalModel

WHAT = "a Hugging Face ASTModel checkpoint"
MODEL_TYPE = "audio-spectrogram-transformer"
CLASSIFIER_PREFIX = "classifier."
MODEL_PREFIX = "audio_spectrogram_transformer."
# ASTConfig / ASTFeatureExtractor defaults, for configuration files that leave them out.
_CONFIG_DEFAULTS = {
    "hidden_act": "gelu", "layer_norm_eps": 1e-12, "patch_size": 16, "frequency_stride": 10, "time_stride": 10,
    "max_length": 1024, "num_mel_bins": 128, "qkv_bias": True,
}
_DEFAULT_HEADS = 12
_FEATURE_DEFAULTS = {"sampling_rate": 16000, "mean": -4.2677393, "std": 4.5689974}

# Hub layout -> ours, and transformers-5 layout -> ours, per layer.
_HUB_LAYER = {
    "layernorm_before": "norm1", "attention.output.dense": "attn.proj", "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
}
_HUB_QKV = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
_V5_LAYER = {
    "layernorm_before": "norm1", "attention.o_proj": "attn.proj", "layernorm_after": "norm2", "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_V5_QKV = ("attention.q_proj", "attention.k_proj", "attention.v_proj")
_LAYOUT = (
    r"embeddings\.(cls_token|distillation_token|position_embeddings|patch_embeddings\.projection\.(weight|bias))",
    r"encoder\.layer\.\d+\.(layernorm_(before|after)|attention\.attention\.(query|key|value)|attention\.output\.dense"
    r"|intermediate\.dense|output\.dense)\.(weight|bias)",
    r"layers\.\d+\.(layernorm_(before|after)|attention\.[qkvo]_proj|mlp\.fc[12])\.(weight|bias)",
    r"layernorm\.(weight|bias)",
)


def _strip_classifier(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ASTForAudioClassification's keys as ASTModel's, without the classification head."""
    if not any(key.startswith(MODEL_PREFIX) for key in state):
        return state
    head = sorted(key for key in state if key.startswith(CLASSIFIER_PREFIX))
    if head:
        warnings.warn(
            f"dropping the audio classification head ({', '.join(head)}): it is not part of an encoder", stacklevel=3
        )
    return {
        key.removeprefix(MODEL_PREFIX): value for key, value in state.items() if not key.startswith(CLASSIFIER_PREFIX)
    }


def hf_ast_model_config(
    state: dict[str, torch.Tensor],
    config: dict | None = None,
    preprocessor_config: dict | None = None,
    *,
    source: str = "the state dict",
) -> ModelConfig:
    """Our audio-only ``ModelConfig`` for an ``ASTModel`` state dict, config.json and preprocessor_config.json.

    Either JSON may be None: ASTConfig's and ASTFeatureExtractor's defaults are used.
    """
    # Without a config.json heads are width / 64 (12 for AST's 768); with one, a key left out holds ASTConfig's 12.
    default_heads = None if config is None else _DEFAULT_HEADS
    config = {**_CONFIG_DEFAULTS, **(config or {})}
    features = {**_FEATURE_DEFAULTS, **(preprocessor_config or {})}
    model_type = config.get("model_type", MODEL_TYPE)
    if model_type != MODEL_TYPE:
        raise ValueError(f"{source}: config.json has model_type={model_type!r}; this converter reads {MODEL_TYPE!r}")
    state = _strip_classifier(state)
    reader = StateReader(state, source, WHAT, layout=_LAYOUT)
    if config["frequency_stride"] != config["time_stride"]:
        raise ValueError(
            f"{source}: frequency_stride={config['frequency_stride']} differs from "
            f"time_stride={config['time_stride']}; our audio encoder patches both axes with one stride"
        )
    if config["hidden_act"] not in ACTIVATIONS_FROM_HF:
        raise ValueError(
            f"{source}: hidden_act={config['hidden_act']!r} has no equivalent; supported: {sorted(ACTIVATIONS_FROM_HF)}"
        )
    patch_weight = reader.peek("embeddings.patch_embeddings.projection.weight")  # (D, 1, p, p)
    width, _, patch_size, _ = patch_weight.shape
    hub_layout = reader.has("encoder.layer.0.intermediate.dense.weight")
    prefix = "encoder.layer." if hub_layout else "layers."
    hidden = reader.peek(f"{prefix}0.{'intermediate.dense' if hub_layout else 'mlp.fc1'}.weight").shape[0]
    heads = int(config.get("num_attention_heads", default_heads or width // 64))
    if width % heads != 0 or config.get("head_dim", width // heads) != width // heads:
        raise ValueError(
            f"{source}: width {width} does not split into {heads} heads of head_dim {config.get('head_dim')}"
        )
    audio = AudioConfig(
        num_mel_bins=int(config["num_mel_bins"]), max_frames=int(config["max_length"]), patch_size=patch_size,
        stride=int(config["time_stride"]),
        transformer=TransformerConfig(
            width=width, depth=reader.num_blocks(prefix), num_heads=heads, mlp_ratio=mlp_ratio_for(width, hidden),
            activation=ACTIVATIONS_FROM_HF[config["hidden_act"]], norm_eps=float(config["layer_norm_eps"]),
            qkv_bias=bool(config["qkv_bias"]),
        ),
        num_prefix_tokens=2, pooling="prefix_mean",
    )
    R, K = audio.grid_size
    num_positions = reader.peek("embeddings.position_embeddings").shape[1]
    if num_positions != 2 + R * K:
        raise ValueError(
            f"{source}: the position table has {num_positions} rows but num_mel_bins={audio.num_mel_bins}, "
            f"max_length={audio.max_frames} and stride {audio.stride} give 2 + {R}x{K}; "
            "pass the checkpoint's config.json"
        )
    if "max_length" in features and int(features["max_length"]) != audio.max_frames:
        warnings.warn(
            f"{source}: the feature extractor's max_length={features['max_length']} differs from the model's "
            f"max_length={audio.max_frames}; clips are prepared for the model's", stacklevel=2,
        )
    if not features.get("do_normalize", True):
        warnings.warn(
            "the feature extractor has do_normalize=false; our audio preprocessing always normalises", stacklevel=2
        )
    preprocess = AudioPreprocessConfig(
        sample_rate=int(features["sampling_rate"]), num_mel_bins=audio.num_mel_bins, max_frames=audio.max_frames,
        norm_mean=float(features["mean"]), norm_std=float(features["std"]), min_frames=audio.patch_size,
    )
    return ModelConfig(embed_dim=width, audio=audio, audio_preprocess=preprocess, projection_bias=False)


def hf_ast_to_model(
    state: dict[str, torch.Tensor],
    config: dict | None = None,
    preprocessor_config: dict | None = None,
    *,
    source: str = "the state dict",
) -> MultimodalModel:
    """An audio-only ``MultimodalModel`` holding an ``ASTModel``'s weights and an identity projection, in eval mode.

    ``encode("audio", frames)`` equals ``ASTModel(frames).pooler_output`` normalised, for
    log-mel frames (B, max_length, num_mel_bins). Raises ValueError naming the keys that
    did not map and those missing.
    """
    state = _strip_classifier(state)
    model_config = hf_ast_model_config(state, config, preprocessor_config, source=source)
    audio = model_config.audio
    reader = StateReader(state, source, WHAT, layout=_LAYOUT)
    R, K = audio.grid_size
    D = audio.transformer.width
    reader.take("encoders.audio.prefix_tokens", "embeddings.cls_token", "embeddings.distillation_token",
                fn=lambda cls, distillation: torch.cat([cls, distillation], dim=1))  # (1, 2, D)
    # position_embeddings: (1, 2 + R*K, D), prefix first, then the grid frequency-major like ours.
    reader.take("encoders.audio.positions.prefix", "embeddings.position_embeddings", fn=lambda t: t[0, :2])
    reader.take(
        "encoders.audio.positions.grid", "embeddings.position_embeddings", fn=lambda t: t[0, 2:].reshape(R, K, D)
    )
    reader.take("encoders.audio.patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight")
    reader.take("encoders.audio.patch_embed.proj.bias", "embeddings.patch_embeddings.projection.bias")
    reader.take("encoders.audio.trunk.norm.weight", "layernorm.weight")
    reader.take("encoders.audio.trunk.norm.bias", "layernorm.bias")
    hub_layout = reader.has("encoder.layer.0.intermediate.dense.weight")
    prefix, names, qkv = ("encoder.layer.", _HUB_LAYER, _HUB_QKV) if hub_layout else ("layers.", _V5_LAYER, _V5_QKV)
    kinds = ("weight", "bias") if audio.transformer.qkv_bias else ("weight",)
    for i in range(audio.transformer.depth):
        src, dst = f"{prefix}{i}.", f"encoders.audio.trunk.transformer.blocks.{i}."
        for theirs, ours in names.items():
            reader.take(f"{dst}{ours}.weight", f"{src}{theirs}.weight")
            reader.take(f"{dst}{ours}.bias", f"{src}{theirs}.bias")
        for kind in kinds:
            reader.take(f"{dst}attn.qkv.{kind}", *(f"{src}{name}.{kind}" for name in qkv),
                        fn=lambda *parts: torch.cat(parts, dim=0))  # (3D, ...) = cat(q, k, v)
    reader.take("projections.audio.weight", fn=lambda: torch.eye(D))  # encode() returns the pooled output itself
    ours = reader.finish(hint="only ASTModel / ASTForAudioClassification are supported")
    model = MultimodalModel(model_config)
    load_state_checked(model, ours, source)
    return model.eval()
