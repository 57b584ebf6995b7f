"""OpenCLIP ``CLIP`` models (ViT image tower + text transformer) into a ``MultimodalModel``.

The architecture is read from the state dict: widths from shapes, depths from the
number of ``resblocks``, the image size from the position table and the patch size,
heads as ``width // 64`` (open_clip's ``head_width`` and OpenAI's rule). What the
weights cannot say comes from arguments or from an open_clip model-config JSON
(``{"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"}``):

* the activation: open_clip's default is GELU; OpenAI's original weights and every
  ``*-quickgelu`` model need ``activation="quick_gelu"`` (a wrong choice still loads,
  but the embeddings are wrong);
* heads, when a tower's head width is not 64.

Layout: ``visual.{conv1, class_embedding, positional_embedding, ln_pre, transformer.
resblocks.N.*, ln_post, proj}``, ``token_embedding``, ``positional_embedding``,
``transformer.resblocks.N.*``, ``ln_final``, ``text_projection``, ``logit_scale``
(and ``logit_bias``, which makes a sigmoid-loss model). Block:
``ln_1, attn.in_proj_weight/bias (q, k, v stacked), attn.out_proj, ln_2, mlp.c_fc,
mlp.c_proj`` (+ ``ls_1.gamma, ls_2.gamma`` with LayerScale). Other towers (ResNet,
timm, Hugging Face text models, attentional pooling) are refused by their keys.
"""
from __future__ import annotations

import math

import torch

from multimodal.data.preprocess.preprocess_config import ImagePreprocessConfig
from multimodal.encoders import TextConfig, TransformerConfig, VisionConfig
from multimodal.checkpoint import load_state_checked
from multimodal.interop.key_mapping import StateReader, mlp_ratio_for
from multimodal.model import ModelConfig, MultimodalModel

WHAT = "an open_clip ViT CLIP checkpoint"
HEAD_WIDTH = 64
ACTIVATIONS = ("gelu", "quick_gelu")
# OpenAI's state dicts carry these scalars beside the weights; open_clip drops them too.
_IGNORED_KEYS = (r"input_resolution", r"context_length", r"vocab_size", r"attn_mask", r"visual\.attn_mask")

# Model-config fields beyond the shapes. Some change nothing at inference (dropout, what
# forward returns, tokenizer padding; a final LayerNorm after pooling equals one before
# it when pooling picks a token); the others must keep the values our encoders build.
_NO_EFFECT = {
    "patch_dropout", "output_tokens", "pad_id", "attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained",
    "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path", "hf_model_pretrained", "hf_proj_type",
    "hf_pooler_type", "tokenizer_kwargs", "final_ln_after_pool",
}
_SUPPORTED_VALUES = {
    "attentional_pool": (False,), "pos_embed_type": ("learnable",), "act_kwargs": (None,),
    "block_type": (None, "default"), "qk_norm": (False,), "scaled_cosine_attn": (False,), "scale_heads": (False,),
    "scale_attn_inner": (False,), "scale_attn": (False,), "scale_fc": (False,), "timm_model_name": (None,),
    "embed_cls": (False,), "proj_bias": (False,), "proj_type": ("linear",), "hf_model_name": (None,),
    "hf_tokenizer_name": (None,), "tokenizer_mode": (None,),
}
_VISION_FIELDS = {
    "layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "ls_init_value", "no_ln_pre",
    "norm_kwargs", "pool_type",
}
_TEXT_FIELDS = {
    "context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value", "eos_id",
    "no_causal_mask", "norm_kwargs", "pool_type",
}
_TOP_FIELDS = {
    "embed_dim", "quick_gelu", "vision_cfg", "text_cfg", "init_logit_scale", "init_logit_bias", "cast_dtype",
    "custom_text",
}
# open_clip's CLIPTextCfg default, used when a model config leaves the text heads out.
_OPEN_CLIP_TEXT_HEADS = 8


def _check_model_config(model_config: dict) -> list[str]:
    """Problems with an open_clip model config, as messages (empty when convertible)."""
    problems = [f"unknown top-level key {k!r}" for k in sorted(set(model_config) - _TOP_FIELDS)]
    if model_config.get("custom_text"):
        problems.append("custom_text=true (a CustomTextCLIP's text tower lives under 'text.'; only CLIP is supported)")
    for section, known in (("vision_cfg", _VISION_FIELDS), ("text_cfg", _TEXT_FIELDS)):
        cfg = model_config.get(section) or {}
        for key, value in sorted(cfg.items()):
            if key in known or key in _NO_EFFECT:
                continue
            if key not in _SUPPORTED_VALUES:
                problems.append(f"unknown key {section}.{key}")
            elif value not in _SUPPORTED_VALUES[key]:
                problems.append(f"{section}.{key}={value!r} (supported: {_SUPPORTED_VALUES[key]})")
        if set(cfg.get("norm_kwargs") or {}) - {"eps"}:
            problems.append(f"{section}.norm_kwargs={cfg['norm_kwargs']!r} (only eps is supported)")
    vision, text = model_config.get("vision_cfg") or {}, model_config.get("text_cfg") or {}
    if vision.get("pool_type", "tok") != "tok":
        problems.append(f"vision_cfg.pool_type={vision['pool_type']!r} (only 'tok', the class token, is supported)")
    if text.get("pool_type", "argmax") not in ("argmax", "eos"):
        problems.append(f"text_cfg.pool_type={text['pool_type']!r} (only 'argmax' and 'eos' are supported)")
    if not isinstance(vision.get("layers", 12), int):
        problems.append(f"vision_cfg.layers={vision['layers']!r} describes a ResNet; only ViT towers are supported")
    return problems


def _heads(width: int, heads: int | None, head_width: int | None, where: str) -> int:
    """Heads from the model config (a count or a head width), else open_clip's / OpenAI's width // 64."""
    if heads is None:
        heads = width // (head_width or HEAD_WIDTH)
    if heads < 1 or width % heads != 0:
        raise ValueError(
            f"{where}: width {width} cannot be split into {heads} heads; set the heads in the model config"
        )
    return int(heads)


def _check_matches(where: str, cfg: dict, inferred: dict) -> None:
    """The model config must agree with the shapes of the weights."""
    wrong = [
        f"{where}.{key}={cfg[key]!r} but the weights say {value!r}"
        for key, value in inferred.items()
        if key in cfg and cfg[key] != value
    ]
    if wrong:
        raise ValueError("the open_clip model config does not match the checkpoint: " + "; ".join(wrong))


def _transformer_config(
    reader: StateReader, prefix: str, width: int, heads: int, activation: str, cfg: dict, where: str
) -> TransformerConfig:
    depth = reader.num_blocks(f"{prefix}transformer.resblocks.")
    hidden = reader.peek(f"{prefix}transformer.resblocks.0.mlp.c_fc.weight").shape[0]
    mlp_ratio = mlp_ratio_for(width, hidden)
    _check_matches(where, cfg, {"layers": depth, "width": width})
    if "mlp_ratio" in cfg and int(width * float(cfg["mlp_ratio"])) != hidden:
        raise ValueError(
            f"{where}.mlp_ratio={cfg['mlp_ratio']} but the MLP of the weights is {hidden} wide (width {width})"
        )
    has_layer_scale = reader.has(f"{prefix}transformer.resblocks.0.ls_1.gamma")
    eps = float((cfg.get("norm_kwargs") or {}).get("eps", 1e-5))
    return TransformerConfig(
        width=width, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, activation=activation, norm_eps=eps,
        layer_scale_init=float(cfg.get("ls_init_value") or 1.0) if has_layer_scale else None,
    )


def open_clip_model_config(
    state: dict[str, torch.Tensor],
    *,
    activation: str | None = None,
    model_config: dict | None = None,
    eot_token_id: int | None = None,
    source: str = "the state dict",
) -> ModelConfig:
    """Our ``ModelConfig`` for an open_clip ``CLIP`` state dict (see the module docstring for what is inferred).

    Args:
        state: open_clip's ``model.state_dict()``.
        activation: ``"gelu"`` (open_clip's default) or ``"quick_gelu"`` (OpenAI weights,
            ``*-quickgelu`` models). None: from ``model_config["quick_gelu"]``, else GELU.
        model_config: an open_clip model config (the content of e.g. ``ViT-B-32.json``).
        eot_token_id: the end-of-text id; None: the largest id (``vocab_size - 1``, 49407 for
            CLIP's vocabulary), which is the token open_clip's argmax pooling finds.
        source: the checkpoint's name in error messages.
    """
    model_config = dict(model_config or {})
    problems = _check_model_config(model_config)
    if problems:
        raise ValueError("unsupported open_clip model config: " + "; ".join(problems))
    activation = _resolve_activation(activation, model_config)
    vision_cfg, text_cfg = model_config.get("vision_cfg") or {}, model_config.get("text_cfg") or {}
    reader = _reader(state, source)

    # Image tower.
    patch_weight = reader.peek("visual.conv1.weight")  # (D, 3, p, p)
    width, in_channels, patch_size, _ = patch_weight.shape
    num_positions = reader.peek("visual.positional_embedding").shape[0]  # 1 + side^2
    side = math.isqrt(num_positions - 1)
    if side * side != num_positions - 1:
        raise ValueError(f"{source}: visual.positional_embedding has {num_positions} rows, not 1 + a square grid")
    image_size = side * patch_size
    configured_size = vision_cfg.get("image_size", image_size)
    if isinstance(configured_size, (list, tuple)) and len(set(configured_size)) == 1:  # open_clip allows [H, W]
        configured_size = configured_size[0]
    _check_matches(
        "vision_cfg",
        {**vision_cfg, "image_size": configured_size},
        {"patch_size": patch_size, "image_size": image_size},
    )
    vision_heads = _heads(width, None, vision_cfg.get("head_width"), "vision_cfg")
    image = VisionConfig(
        image_size=image_size, patch_size=patch_size, in_channels=in_channels,
        transformer=_transformer_config(reader, "visual.", width, vision_heads, activation, vision_cfg, "vision_cfg"),
        class_token=True, pooling="cls", patch_bias=False, pre_norm=reader.has("visual.ln_pre.weight"),
    )
    embed_dim = reader.peek("visual.proj").shape[1]  # (D, E)

    # Text tower.
    vocab_size, text_width = reader.peek("token_embedding.weight").shape
    context_length = reader.peek("positional_embedding").shape[0]
    _check_matches("text_cfg", text_cfg, {"vocab_size": vocab_size, "context_length": context_length})
    # A model config that leaves the text heads out means open_clip's default, not width // 64.
    configured_heads = text_cfg.get("heads", _OPEN_CLIP_TEXT_HEADS if model_config else None)
    text_heads = _heads(text_width, configured_heads, None, "text_cfg")
    if eot_token_id is None:
        eot_token_id = int(text_cfg["eos_id"]) if text_cfg.get("pool_type") == "eos" else vocab_size - 1
    text = TextConfig(
        vocab_size=vocab_size, context_length=context_length,
        transformer=_transformer_config(reader, "", text_width, text_heads, activation, text_cfg, "text_cfg"),
        causal=not text_cfg.get("no_causal_mask", False), pooling="eot", eot_token_id=eot_token_id,
    )
    text_embed_dim = reader.peek("text_projection").shape[-1]
    if embed_dim != text_embed_dim or model_config.get("embed_dim", embed_dim) != embed_dim:
        raise ValueError(
            f"{source}: image projection gives {embed_dim} dims, text projection {text_embed_dim}, model config "
            f"{model_config.get('embed_dim')}; they must agree"
        )
    return ModelConfig(
        embed_dim=embed_dim, text=text, image=image, image_preprocess=ImagePreprocessConfig(image_size=image_size),
        projection_bias=False, loss="sigmoid" if reader.has("logit_bias") else "infonce",
    )


def _resolve_activation(activation: str | None, model_config: dict) -> str:
    from_config = None
    if "quick_gelu" in model_config:
        from_config = "quick_gelu" if model_config["quick_gelu"] else "gelu"
    if activation is None:
        return from_config or "gelu"
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r} for an open_clip model; expected one of {ACTIVATIONS}")
    if from_config is not None and activation != from_config:
        raise ValueError(
            f"activation={activation!r} contradicts the model config's quick_gelu={model_config['quick_gelu']}"
        )
    return activation


_BLOCK_NAMES = {
    "ln_1": "norm1", "attn.out_proj": "attn.proj", "ln_2": "norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}


def _map_blocks(reader: StateReader, source_prefix: str, our_prefix: str, transformer: TransformerConfig) -> None:
    for i in range(transformer.depth):
        src, dst = f"{source_prefix}transformer.resblocks.{i}.", f"{our_prefix}trunk.transformer.blocks.{i}."
        for theirs, ours in _BLOCK_NAMES.items():
            reader.take(f"{dst}{ours}.weight", f"{src}{theirs}.weight")
            reader.take(f"{dst}{ours}.bias", f"{src}{theirs}.bias")
        reader.take(f"{dst}attn.qkv.weight", f"{src}attn.in_proj_weight")  # (3D, D) = cat(q, k, v), as ours
        reader.take(f"{dst}attn.qkv.bias", f"{src}attn.in_proj_bias")
        if transformer.layer_scale_init is not None:
            reader.take(f"{dst}ls1.gamma", f"{src}ls_1.gamma")
            reader.take(f"{dst}ls2.gamma", f"{src}ls_2.gamma")


def open_clip_to_model(
    state: dict[str, torch.Tensor],
    *,
    activation: str | None = None,
    model_config: dict | None = None,
    eot_token_id: int | None = None,
    source: str = "the state dict",
) -> MultimodalModel:
    """A ``MultimodalModel`` (text + image) holding an open_clip ``CLIP``'s weights, in eval mode.

    ``encode("image", x)`` equals open_clip's ``encode_image(x, normalize=True)`` and
    ``encode("text", ids)`` its ``encode_text(ids, normalize=True)``; the log temperature
    is ``logit_scales["text_image"]``. Arguments as :func:`open_clip_model_config`.
    Raises ValueError naming the keys that did not map and those missing.
    """
    config = open_clip_model_config(
        state, activation=activation, model_config=model_config, eot_token_id=eot_token_id, source=source
    )
    reader = _reader(state, source)
    image, text = config.image, config.text
    R, K = image.grid_size
    D = image.transformer.width
    reader.take("encoders.image.patch_embed.proj.weight", "visual.conv1.weight")
    reader.take("encoders.image.class_token", "visual.class_embedding", fn=lambda t: t.reshape(1, 1, D))
    # visual.positional_embedding: (1 + R*K, D), the class token's first, patches row-major like ours.
    reader.take("encoders.image.positions.prefix", "visual.positional_embedding", fn=lambda t: t[:1])
    reader.take(
        "encoders.image.positions.grid", "visual.positional_embedding", fn=lambda t: t[1:].reshape(R, K, D)
    )
    if image.pre_norm:
        reader.take("encoders.image.trunk.pre_norm.weight", "visual.ln_pre.weight")
        reader.take("encoders.image.trunk.pre_norm.bias", "visual.ln_pre.bias")
    reader.take("encoders.image.trunk.norm.weight", "visual.ln_post.weight")
    reader.take("encoders.image.trunk.norm.bias", "visual.ln_post.bias")
    reader.take("projections.image.weight", "visual.proj", fn=lambda t: t.t())  # x @ proj == Linear(weight=proj.T)
    _map_blocks(reader, "visual.", "encoders.image.", image.transformer)

    text_width = text.transformer.width
    reader.take("encoders.text.token_embedding.weight", "token_embedding.weight")
    reader.take("encoders.text.positions.prefix", fn=lambda: torch.empty(0, text_width))  # text has no prefix tokens
    reader.take("encoders.text.positions.grid", "positional_embedding", fn=lambda t: t[None])  # (1, L, D)
    reader.take("encoders.text.trunk.norm.weight", "ln_final.weight")
    reader.take("encoders.text.trunk.norm.bias", "ln_final.bias")
    reader.take("projections.text.weight", "text_projection", fn=lambda t: t.t())
    _map_blocks(reader, "", "encoders.text.", text.transformer)

    reader.take("logit_scales.text_image", "logit_scale", fn=lambda t: t.reshape(()))
    if config.loss == "sigmoid":
        reader.take("logit_biases.text_image", "logit_bias", fn=lambda t: t.reshape(()))
    ours = reader.finish(hint="only open_clip's CLIP class with a ViT image tower and its own text transformer")
    model = MultimodalModel(config)
    load_state_checked(model, ours, source)
    return model.eval()


_BLOCK = (
    r"transformer\.resblocks\.\d+\."
    r"(ln_[12]\.(weight|bias)|attn\.in_proj_(weight|bias)|attn\.out_proj\.(weight|bias)|mlp\.c_(fc|proj)\.(weight|bias)"
    r"|ls_[12]\.gamma)"
)
_LAYOUT = (
    r"visual\.(conv1\.weight|class_embedding|positional_embedding|proj|ln_(pre|post)\.(weight|bias))",
    r"visual\." + _BLOCK,
    _BLOCK,
    r"token_embedding\.weight|positional_embedding|text_projection|logit_scale|logit_bias|ln_final\.(weight|bias)",
)


def _reader(state: dict[str, torch.Tensor], source: str) -> StateReader:
    return StateReader(state, source, WHAT, layout=_LAYOUT, ignore=_IGNORED_KEYS)
