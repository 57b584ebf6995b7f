"""Hugging Face ``CLIPModel`` to and from a ``MultimodalModel`` (text + image).

Layout (``CLIPModel.state_dict()``): ``text_model.embeddings.{token_embedding,
position_embedding}``, ``text_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj,
layer_norm1, mlp.fc1, mlp.fc2, layer_norm2}``, ``text_model.final_layer_norm``,
``vision_model.embeddings.{class_embedding, patch_embedding, position_embedding}``,
``vision_model.pre_layrnorm`` (sic), ``vision_model.encoder.layers.N.*``,
``vision_model.post_layernorm``, ``text_projection``, ``visual_projection``, ``logit_scale``.

Widths, depths, sizes and the vocabulary come from the weights; heads, activation,
LayerNorm epsilon and the end-of-text id from ``config.json`` (Hugging Face's defaults
where it is silent). Text pooling: ``CLIPTextTransformer`` takes the first position of
``eos_token_id``, except when ``eos_token_id == 2``, an old configuration for which it
takes the position of the largest id; that largest id is then the end-of-text token
(49407 for CLIP's vocabulary), which is what we pool.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from multimodal.data.tokenization.clip_tokenizer import END_OF_TEXT_ID, START_OF_TEXT_ID
from multimodal.data.preprocess.preprocess_config import ImagePreprocessConfig
from multimodal.encoders import TextConfig, TransformerConfig, VisionConfig
from multimodal.checkpoint import load_state_checked, write_directory_atomically
from multimodal.interop.key_mapping import StateReader, mlp_ratio_for
from multimodal.model import ModelConfig, MultimodalModel

WHAT = "a Hugging Face CLIPModel checkpoint"
# Hugging Face's names for our activations (gelu_new is the tanh approximation, as gelu_pytorch_tanh).
ACTIVATIONS_FROM_HF = {
    "quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
}
ACTIVATIONS_TO_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
# CLIPTextConfig / CLIPVisionConfig defaults, for config.json files that leave them out.
_HF_DEFAULTS = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
_HF_TEXT_DEFAULT_EOS = 49407
_HF_DEFAULT_HEADS = {"text_model": 8, "vision_model": 12}
_HF_LEGACY_EOS = 2

_LAYER = r"encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|layer_norm[12]|mlp\.fc[12])\.(weight|bias)"
_LAYOUT = (
    r"text_model\.embeddings\.(token_embedding|position_embedding)\.weight",
    r"text_model\." + _LAYER,
    r"text_model\.final_layer_norm\.(weight|bias)",
    r"vision_model\.embeddings\.(class_embedding|patch_embedding\.weight|position_embedding\.weight)",
    r"vision_model\.(pre_layrnorm|post_layernorm)\.(weight|bias)",
    r"vision_model\." + _LAYER,
    r"(text_projection|visual_projection)\.weight|logit_scale",
)
_IGNORED = (r"(text_model|vision_model)\.embeddings\.position_ids",)  # a buffer in older checkpoints


def _activation(sub_config: dict, where: str) -> str:
    name = sub_config.get("hidden_act", _HF_DEFAULTS["hidden_act"])
    if name not in ACTIVATIONS_FROM_HF:
        raise ValueError(
            f"{where}.hidden_act={name!r} has no equivalent here; supported: {sorted(ACTIVATIONS_FROM_HF)}"
        )
    return ACTIVATIONS_FROM_HF[name]


def _transformer(reader: StateReader, tower: str, width: int, sub_config: dict | None) -> TransformerConfig:
    """A tower's block stack; ``sub_config`` None (no config.json at all) means heads of width 64."""
    prefix = f"{tower}.encoder.layers."
    depth = reader.num_blocks(prefix)
    hidden = reader.peek(f"{prefix}0.mlp.fc1.weight").shape[0]
    if sub_config is None:
        heads, sub_config = width // 64, {}
    else:  # a key left out of config.json holds Hugging Face's default
        heads = int(sub_config.get("num_attention_heads", _HF_DEFAULT_HEADS[tower]))
    if heads < 1 or width % heads != 0:
        raise ValueError(f"{tower}: width {width} is not divisible by num_attention_heads={heads}")
    return TransformerConfig(
        width=width, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio_for(width, hidden),
        activation=_activation(sub_config, tower.replace("_model", "_config")),
        norm_eps=float(sub_config.get("layer_norm_eps", _HF_DEFAULTS["layer_norm_eps"])),
    )


def hf_clip_model_config(
    state: dict[str, torch.Tensor], config: dict | None = None, *, source: str = "the state dict"
) -> ModelConfig:
    """Our ``ModelConfig`` for a Hugging Face ``CLIPModel`` state dict and its ``config.json``.

    Without a config.json, heads are width / 64 (as in every OpenAI CLIP), QuickGELU,
    LayerNorm epsilon 1e-5 and end-of-text 49407, Hugging Face's defaults.
    """
    model_type = (config or {}).get("model_type", "clip")
    if model_type != "clip":
        raise ValueError(
            f"{source}: config.json has model_type={model_type!r}; this converter reads 'clip' (CLIPModel)"
        )
    text_config = None if config is None else config.get("text_config") or {}
    vision_config = None if config is None else config.get("vision_config") or {}
    reader = StateReader(state, source, WHAT, layout=_LAYOUT, ignore=_IGNORED)

    patch_weight = reader.peek("vision_model.embeddings.patch_embedding.weight")  # (D, C, p, p)
    width, channels, patch_size, _ = patch_weight.shape
    num_positions = reader.peek("vision_model.embeddings.position_embedding.weight").shape[0]  # 1 + side^2
    side = round((num_positions - 1) ** 0.5)
    if side * side != num_positions - 1:
        raise ValueError(f"{source}: the vision position table has {num_positions} rows, not 1 + a square grid")
    image = VisionConfig(
        image_size=side * patch_size, patch_size=patch_size, in_channels=channels,
        transformer=_transformer(reader, "vision_model", width, vision_config),
        class_token=True, pooling="cls", patch_bias=False, pre_norm=True,
    )
    vocab_size, text_width = reader.peek("text_model.embeddings.token_embedding.weight").shape
    context_length = reader.peek("text_model.embeddings.position_embedding.weight").shape[0]
    eos = int((text_config or {}).get("eos_token_id", _HF_TEXT_DEFAULT_EOS))
    text = TextConfig(
        vocab_size=vocab_size, context_length=context_length,
        transformer=_transformer(reader, "text_model", text_width, text_config),
        causal=True, pooling="eot", eot_token_id=vocab_size - 1 if eos == _HF_LEGACY_EOS else eos,
    )
    embed_dim = reader.peek("visual_projection.weight").shape[0]  # (E, D)
    return ModelConfig(
        embed_dim=embed_dim, text=text, image=image,
        image_preprocess=ImagePreprocessConfig(image_size=image.image_size), projection_bias=False,
    )


# Per layer, Hugging Face's names -> ours (q/k/v are fused separately).
_LAYER_NAMES = {
    "layer_norm1": "norm1", "self_attn.out_proj": "attn.proj", "layer_norm2": "norm2", "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def _map_layers(tower_prefix: str, our_prefix: str, depth: int, reader: StateReader) -> None:
    for i in range(depth):
        src, dst = f"{tower_prefix}encoder.layers.{i}.", f"{our_prefix}trunk.transformer.blocks.{i}."
        for theirs, ours in _LAYER_NAMES.items():
            reader.take(f"{dst}{ours}.weight", f"{src}{theirs}.weight")
            reader.take(f"{dst}{ours}.bias", f"{src}{theirs}.bias")
        for kind in ("weight", "bias"):
            q, k, v = (f"{src}self_attn.{name}_proj.{kind}" for name in "qkv")
            reader.take(f"{dst}attn.qkv.{kind}", q, k, v, fn=lambda *qkv: torch.cat(qkv, dim=0))  # (3D, ...)


def hf_clip_to_model(
    state: dict[str, torch.Tensor], config: dict | None = None, *, source: str = "the state dict"
) -> MultimodalModel:
    """A ``MultimodalModel`` (text + image) holding a Hugging Face ``CLIPModel``'s weights, in eval mode.

    ``encode("image", pixels)`` equals ``get_image_features(pixels).pooler_output`` and
    ``encode("text", ids)`` equals ``get_text_features(ids).pooler_output``, both normalised.
    ``config`` is the content of ``config.json``. Raises ValueError naming the keys that
    did not map and those missing.
    """
    model_config = hf_clip_model_config(state, config, source=source)
    image, text = model_config.image, model_config.text
    reader = StateReader(state, source, WHAT, layout=_LAYOUT, ignore=_IGNORED)
    R, K = image.grid_size
    D = image.transformer.width
    reader.take("encoders.image.patch_embed.proj.weight", "vision_model.embeddings.patch_embedding.weight")
    reader.take(
        "encoders.image.class_token", "vision_model.embeddings.class_embedding", fn=lambda t: t.reshape(1, 1, D)
    )
    positions = "vision_model.embeddings.position_embedding.weight"  # (1 + R*K, D), class token first
    reader.take("encoders.image.positions.prefix", positions, fn=lambda t: t[:1])
    reader.take("encoders.image.positions.grid", positions, fn=lambda t: t[1:].reshape(R, K, D))
    reader.take("encoders.image.trunk.pre_norm.weight", "vision_model.pre_layrnorm.weight")
    reader.take("encoders.image.trunk.pre_norm.bias", "vision_model.pre_layrnorm.bias")
    reader.take("encoders.image.trunk.norm.weight", "vision_model.post_layernorm.weight")
    reader.take("encoders.image.trunk.norm.bias", "vision_model.post_layernorm.bias")
    reader.take("projections.image.weight", "visual_projection.weight")  # (E, D), as nn.Linear
    _map_layers("vision_model.", "encoders.image.", image.transformer.depth, reader)

    text_width = text.transformer.width
    reader.take("encoders.text.token_embedding.weight", "text_model.embeddings.token_embedding.weight")
    reader.take("encoders.text.positions.prefix", fn=lambda: torch.empty(0, text_width))
    reader.take("encoders.text.positions.grid", "text_model.embeddings.position_embedding.weight", fn=lambda t: t[None])
    reader.take("encoders.text.trunk.norm.weight", "text_model.final_layer_norm.weight")
    reader.take("encoders.text.trunk.norm.bias", "text_model.final_layer_norm.bias")
    reader.take("projections.text.weight", "text_projection.weight")
    _map_layers("text_model.", "encoders.text.", text.transformer.depth, reader)
    reader.take("logit_scales.text_image", "logit_scale", fn=lambda t: t.reshape(()))
    ours = reader.finish(hint="only CLIPModel (text and vision towers with projections) is supported")
    model = MultimodalModel(model_config)
    load_state_checked(model, ours, source)
    return model.eval()


# Export -------------------------------------------------------------------------------


def _export_problems(model: MultimodalModel) -> list[str]:
    """Why ``model`` has no exact ``CLIPModel`` equivalent (empty when it has one)."""
    c = model.config
    problems = []
    if set(c.modalities) != {"text", "image"}:
        problems.append(f"modalities are {c.modalities}; CLIPModel has exactly text and image")
    if c.share_trunk:
        problems.append("share_trunk=True (CLIPModel has separate towers)")
    if c.projection_bias:
        problems.append("projection_bias=True (CLIPModel projections have no bias)")
    if c.loss != "infonce":
        problems.append(f"loss={c.loss!r} learns a logit bias that CLIPModel does not hold")
    for name, tower in (("text", c.text), ("image", c.image)):
        if tower is None:
            continue
        t = tower.transformer
        if t.activation not in ACTIVATIONS_TO_HF:
            problems.append(f"{name}.transformer.activation={t.activation!r}")
        if not t.qkv_bias or t.qk_norm or t.layer_scale_init is not None:
            problems.append(f"{name}.transformer: CLIP needs qkv_bias=True, qk_norm=False and no LayerScale")
        if tower.position != "learned" or tower.pre_norm != (name == "image"):
            problems.append(f"{name}: CLIP needs learned positions and pre_norm={name == 'image'}")
    if c.text is not None:
        if not c.text.causal or c.text.pooling != "eot":
            problems.append("text: CLIP's text tower is causal with end-of-text pooling")
        if c.text.eot_token_id == _HF_LEGACY_EOS:
            problems.append(
                "text.eot_token_id=2: CLIPModel reads eos_token_id=2 as an old configuration and pools at the largest "
                "id instead of the end-of-text token"
            )
    if c.image is not None and (not c.image.class_token or c.image.pooling != "cls" or c.image.patch_bias):
        problems.append("image: CLIP's vision tower has a class token, CLS pooling and a patch embedding without bias")
    if c.image is not None and c.image.stem != "patch":
        problems.append(f"image: CLIP's vision tower embeds patches of pixels; this one has a {c.image.stem} stem")
    return problems


def _blocks_to_hf(state: dict, our_prefix: str, tower_prefix: str, depth: int, out: dict) -> None:
    for i in range(depth):
        src, dst = f"{our_prefix}trunk.transformer.blocks.{i}.", f"{tower_prefix}encoder.layers.{i}."
        for kind in ("weight", "bias"):
            qkv = state[f"{src}attn.qkv.{kind}"].chunk(3, dim=0)  # (3D, ...) -> q, k, v
            for name, part in zip("qkv", qkv):
                out[f"{dst}self_attn.{name}_proj.{kind}"] = part
            for theirs, ours in _LAYER_NAMES.items():
                out[f"{dst}{theirs}.{kind}"] = state[f"{src}{ours}.{kind}"]


def model_to_hf_clip(
    model: MultimodalModel, *, bos_token_id: int | None = None, pad_token_id: int | None = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of the Hugging Face ``CLIPModel`` equal to ``model``.

    ``CLIPModel(CLIPConfig(**config)).load_state_dict(state_dict)`` rebuilds it, and
    :func:`hf_clip_to_model` brings it back bit for bit. The start-of-text and padding
    ids only matter to Hugging Face's tokenizers; by default they are CLIP's (49406, 0)
    when the end-of-text id is CLIP's 49407, and unset (None) otherwise.
    Raises ValueError listing every reason when the model is not CLIP-shaped.
    """
    problems = _export_problems(model)
    if problems:
        raise ValueError("this model has no Hugging Face CLIPModel equivalent: " + "; ".join(problems))
    c = model.config
    text, image = c.text, c.image
    if text.eot_token_id == END_OF_TEXT_ID:
        bos_token_id = START_OF_TEXT_ID if bos_token_id is None else bos_token_id
        pad_token_id = 0 if pad_token_id is None else pad_token_id
    text_config = {
        "vocab_size": text.vocab_size, "hidden_size": text.transformer.width,
        "intermediate_size": int(text.transformer.width * text.transformer.mlp_ratio),
        "num_hidden_layers": text.transformer.depth, "num_attention_heads": text.transformer.num_heads,
        "max_position_embeddings": text.context_length, "hidden_act": ACTIVATIONS_TO_HF[text.transformer.activation],
        "layer_norm_eps": text.transformer.norm_eps, "projection_dim": c.embed_dim, "eos_token_id": text.eot_token_id,
    }
    text_config.update({"bos_token_id": bos_token_id, "pad_token_id": pad_token_id})
    vision_config = {
        "hidden_size": image.transformer.width,
        "intermediate_size": int(image.transformer.width * image.transformer.mlp_ratio),
        "num_hidden_layers": image.transformer.depth, "num_attention_heads": image.transformer.num_heads,
        "num_channels": image.in_channels, "image_size": image.image_size, "patch_size": image.patch_size,
        "hidden_act": ACTIVATIONS_TO_HF[image.transformer.activation], "layer_norm_eps": image.transformer.norm_eps,
        "projection_dim": c.embed_dim,
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    logit_scale = state["logit_scales.text_image"]
    config = {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": c.embed_dim,
        "logit_scale_init_value": float(logit_scale), "text_config": text_config, "vision_config": vision_config,
    }
    D = image.transformer.width
    out = {
        "text_model.embeddings.token_embedding.weight": state["encoders.text.token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["encoders.text.positions.grid"][0],  # (L, D)
        "text_model.final_layer_norm.weight": state["encoders.text.trunk.norm.weight"],
        "text_model.final_layer_norm.bias": state["encoders.text.trunk.norm.bias"],
        "vision_model.embeddings.class_embedding": state["encoders.image.class_token"].reshape(D),
        "vision_model.embeddings.patch_embedding.weight": state["encoders.image.patch_embed.proj.weight"],
        "vision_model.embeddings.position_embedding.weight": torch.cat(
            [state["encoders.image.positions.prefix"], state["encoders.image.positions.grid"].reshape(-1, D)]
        ),  # (1 + R*K, D)
        "vision_model.pre_layrnorm.weight": state["encoders.image.trunk.pre_norm.weight"],
        "vision_model.pre_layrnorm.bias": state["encoders.image.trunk.pre_norm.bias"],
        "vision_model.post_layernorm.weight": state["encoders.image.trunk.norm.weight"],
        "vision_model.post_layernorm.bias": state["encoders.image.trunk.norm.bias"],
        "text_projection.weight": state["projections.text.weight"],
        "visual_projection.weight": state["projections.image.weight"],
        "logit_scale": logit_scale,
    }
    _blocks_to_hf(state, "encoders.text.", "text_model.", text.transformer.depth, out)
    _blocks_to_hf(state, "encoders.image.", "vision_model.", image.transformer.depth, out)
    return config, {k: v.contiguous() for k, v in out.items()}


def save_hf_clip(model: MultimodalModel, directory: str | Path, **token_ids: int | None) -> Path:
    """Writes ``config.json`` and ``model.safetensors`` that ``CLIPModel.from_pretrained(directory)`` loads.

    ``token_ids``: ``bos_token_id`` / ``pad_token_id`` as in :func:`model_to_hf_clip`.
    """
    config, state = model_to_hf_clip(model, **token_ids)

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})

    return write_directory_atomically(directory, write)
