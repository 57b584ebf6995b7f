"""Contrastive losses between modality pairs: InfoNCE (CLIP) and sigmoid (SigLIP).

Shapes: b local batch (this process), W world size, N = W * b global batch, E embedding
dimension. Features are unit-norm (B, E) rows; row i of every modality belongs to the
same example, so the positives are the diagonal of the similarity matrix.

Temperatures are taken as the *log* of the logit scale, the form the model learns
(CLIP initialises it at ln(1/0.07) and clamps it at ln(100)); the losses exponentiate
it themselves, so callers never pass ``scale.exp()``.

Across processes (``torch.distributed`` initialised with more than one process) the
losses follow open_clip's ``--local-loss --gather-with-grad``: every process gathers the
other processes' features with gradients, and compares only its own b rows against all
N columns, so memory grows as b * N instead of N * N. Each process's loss is the mean
over its own rows. That makes the mean of the processes' losses equal the loss of one
process on the concatenated batch, and DDP's gradient averaging (sum over processes / W)
give exactly that loss's gradients: the gather's backward sends every process the
gradient that all processes' losses put on its features. Two requirements follow:

* every process must hold the same local batch size (the gather and the label offsets
  ``rank * b`` assume it; checking it would cost a host sync on every step, so it is
  not checked: drop partial last batches);
* every process must call ``backward`` on its loss, because the gather's backward is a
  collective operation too.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from multimodal.data.modalities.registry import MODALITIES

LOSS_KINDS = ("infonce", "sigmoid")

__all__ = [
    "LOSS_KINDS",
    "contrastive_loss",
    "gather_with_grad",
    "infonce_loss",
    "pair_name",
    "sigmoid_loss",
    "substitute_microbatch",
]


def _check_modalities(names: Iterable[str], where: str) -> None:
    unknown = sorted({name for name in names if name not in MODALITIES})
    if unknown:
        raise ValueError(f"unknown modality names {unknown} in {where}; expected names from {MODALITIES}")


def _ordered(first: str, second: str) -> tuple[str, str]:
    _check_modalities((first, second), f"the pair ({first!r}, {second!r})")
    if first == second:
        raise ValueError(f"a modality pair needs two different modalities, got ({first!r}, {second!r})")
    if MODALITIES.index(first) > MODALITIES.index(second):
        return second, first
    return first, second


def pair_name(first: str, second: str) -> str:
    """Canonical name of a modality pair, ordered text < image < audio.

    ``pair_name("image", "text") == pair_name("text", "image") == "text_image"``.
    """
    return "_".join(_ordered(first, second))


def _distributed_rank_and_world(gather: bool | None) -> tuple[int, int]:
    """(rank, world size) of the gather to do; (0, 1) when features stay local.

    ``gather=None`` gathers exactly when ``torch.distributed`` is initialised with more
    than one process; ``True`` insists on it being initialised; ``False`` never gathers.
    """
    if gather is False:
        return 0, 1
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not initialised:
        if gather:
            raise ValueError(
                "gather=True needs an initialised torch.distributed process group; "
                "call torch.distributed.init_process_group first, or pass gather=None to gather only when one exists"
            )
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


class _GatherRows(torch.autograd.Function):
    """All processes' rows in rank order; backward: each process gets the sum of every process's gradient on its rows.

    torch.distributed.nn's all_gather does the same, but its backward calls all_to_all
    for any backend other than NCCL, and gloo (CPU training) has none; summing the
    whole gradient with all_reduce and keeping one's own rows works on every backend,
    and CUDA tensors use reduce_scatter, which moves W times fewer bytes.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor) -> torch.Tensor:
        world_size = torch.distributed.get_world_size()
        ctx.rows, ctx.rank = features.shape[0], torch.distributed.get_rank()
        parts = [torch.empty_like(features) for _ in range(world_size)]
        torch.distributed.all_gather(parts, features.contiguous())
        return torch.cat(parts, dim=0)  # (W * b, E)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if grad.is_cuda:
            own = grad.new_empty((ctx.rows, *grad.shape[1:]))
            torch.distributed.reduce_scatter_tensor(own, grad.contiguous())
            return own
        total = grad.contiguous().clone()
        torch.distributed.all_reduce(total)
        return total[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def _gather_groups(groups: torch.Tensor, world_size: int) -> torch.Tensor:
    """(b,) group ids of this process -> (N,) of all processes, in rank order (no gradient to carry)."""
    parts = [torch.empty_like(groups) for _ in range(world_size)]
    torch.distributed.all_gather(parts, groups.contiguous())
    return torch.cat(parts)


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """All processes' features concatenated in rank order, (b, E) -> (W * b, E), with gradients.

    A plain ``torch.distributed.all_gather`` returns tensors detached from the graph;
    this one's backward returns to every process the summed gradient on its own rows.
    Every process must pass the same shape.
    """
    return _GatherRows.apply(features)


def _scaled_similarity(rows: torch.Tensor, columns: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """exp(log_scale) * rows @ columns.T in at least float32: (b, E), (N, E) -> (b, N).

    Autocast is switched off and half-precision features are upcast: at a logit scale
    of 100, bf16 cosines (~3 significant digits) would put errors of ~0.4 into the logits.
    """
    dtype = torch.promote_types(rows.dtype, torch.float32)  # float64 stays float64
    with torch.autocast(device_type=rows.device.type, enabled=False):
        log_scale = torch.as_tensor(log_scale, device=rows.device).to(dtype)
        return log_scale.exp() * (rows.to(dtype) @ columns.to(dtype).T)


def _positive_targets(groups: torch.Tensor, groups_all: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(b,), (N,) group ids -> (b, N) targets: 1 / |positives of row i| at each column of row i's group, else 0."""
    same = (groups[:, None] == groups_all[None, :]).to(dtype)  # (b, N); the own pair is always among them
    return same / same.sum(dim=1, keepdim=True)


def _infonce(
    first: torch.Tensor,
    second: torch.Tensor,
    first_all: torch.Tensor,
    second_all: torch.Tensor,
    log_scale: torch.Tensor,
    offset: int,
    groups: torch.Tensor | None = None,
    groups_all: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric cross-entropy of local rows (b, E) against all columns (N, E); positives at ``offset + i``.

    With ``groups`` (b,) and ``groups_all`` (N,), every column of a row's group is a
    positive, each with an equal share of the target (UniCL's image-text-label loss).
    """
    num_rows = first.shape[0]
    logits_first = _scaled_similarity(first, second_all, log_scale)  # (b, N)
    if first_all is first:  # one process: the second direction is the transpose
        logits_second = logits_first.T  # (N, N)
    else:
        logits_second = _scaled_similarity(second, first_all, log_scale)  # (b, N)
    if groups is None:
        targets = torch.arange(offset, offset + num_rows, device=first.device)  # (b,)
    else:
        targets = _positive_targets(groups, groups_all, logits_first.dtype)  # (b, N)
    return (F.cross_entropy(logits_first, targets) + F.cross_entropy(logits_second, targets)) / 2


def _sigmoid(
    first: torch.Tensor,
    second_all: torch.Tensor,
    log_scale: torch.Tensor,
    bias: torch.Tensor,
    offset: int,
    groups: torch.Tensor | None = None,
    groups_all: torch.Tensor | None = None,
) -> torch.Tensor:
    """SigLIP loss of local rows (b, E) against all columns (N, E), divided by b; positives at ``offset + i``,
    or at every column of the row's group when ``groups`` (b,) and ``groups_all`` (N,) are given."""
    logits = _scaled_similarity(first, second_all, log_scale)  # (b, N)
    logits = logits + torch.as_tensor(bias, device=logits.device).to(logits.dtype)
    if groups is None:
        positives = logits.diagonal(offset)  # (b,)
    else:
        positives = logits[groups[:, None] == groups_all[None, :]]  # every same-group logit
    # -logsigmoid(label * z) is softplus(z) for a negative pair and softplus(z) - z for a
    # positive one, so the sum needs no (b, N) matrix of +-1 labels.
    return (F.softplus(logits).sum() - positives.sum()) / first.shape[0]


def _check_pair_features(first: torch.Tensor, second: torch.Tensor, where: str) -> None:
    if first.ndim != 2 or second.ndim != 2:
        raise ValueError(
            f"{where}: features must be (B, E) matrices, got shapes {tuple(first.shape)} and {tuple(second.shape)}"
        )
    if first.shape != second.shape:
        raise ValueError(
            f"{where}: both modalities need the same batch size and embedding dimension, "
            f"got {tuple(first.shape)} and {tuple(second.shape)}"
        )


def infonce_loss(
    first: torch.Tensor,
    second: torch.Tensor,
    log_scale: torch.Tensor,
    *,
    gather: bool | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) between two modalities' unit-norm features.

    ``logits = exp(log_scale) * first @ second.T``;
    ``loss = (cross_entropy(logits, i) + cross_entropy(logits.T, i)) / 2``.

    Args:
        first, second: (b, E) unit-norm features; row i of both is one example.
        log_scale: scalar tensor, the natural log of the logit scale (exponentiated here).
        gather: across processes, compare local rows with every process's features
            (see the module docstring); ``None`` does so whenever ``torch.distributed``
            is initialised with more than one process.

    Returns:
        Scalar loss (float32, or float64 for float64 features), the mean over this
        process's rows.
    """
    _check_pair_features(first, second, "infonce_loss")
    rank, world_size = _distributed_rank_and_world(gather)
    if world_size == 1:
        return _infonce(first, second, first, second, log_scale, 0)
    return _infonce(
        first, second, gather_with_grad(first), gather_with_grad(second), log_scale, rank * first.shape[0]
    )


def sigmoid_loss(
    first: torch.Tensor,
    second: torch.Tensor,
    log_scale: torch.Tensor,
    bias: torch.Tensor,
    *,
    gather: bool | None = None,
) -> torch.Tensor:
    """Sigmoid (SigLIP) loss between two modalities' unit-norm features.

    ``logits = exp(log_scale) * first @ second.T + bias``; labels are +1 on the diagonal
    and -1 elsewhere; ``loss = -sum(logsigmoid(labels * logits)) / b`` (normalised by the
    batch size, as the SigLIP paper does).

    Args:
        first, second: (b, E) unit-norm features; row i of both is one example.
        log_scale: scalar tensor, the natural log of the logit scale (exponentiated here).
        bias: scalar tensor added to every logit (SigLIP initialises it at -10).
        gather: as in :func:`infonce_loss`; this process's rows are compared with the
            columns of every process, so the mean over processes is the global loss.

    Returns:
        Scalar loss (float32, or float64 for float64 features).
    """
    _check_pair_features(first, second, "sigmoid_loss")
    rank, world_size = _distributed_rank_and_world(gather)
    if world_size == 1:
        return _sigmoid(first, second, log_scale, bias, 0)
    return _sigmoid(first, gather_with_grad(second), log_scale, bias, rank * first.shape[0])


def _resolve_pairs(
    features: Mapping[str, torch.Tensor], pairs: Iterable[Sequence[str]] | None
) -> list[tuple[str, str]]:
    """Canonically ordered pairs to compute, each once, all present in ``features``."""
    if pairs is None:
        present = [m for m in MODALITIES if m in features]
        if len(present) < 2:
            raise ValueError(f"a contrastive loss needs at least two modalities; features hold only {present}")
        return [(a, b) for i, a in enumerate(present) for b in present[i + 1 :]]
    resolved: list[tuple[str, str]] = []
    for pair in pairs:
        if isinstance(pair, str) or len(pair) != 2:
            raise TypeError(f"each pair must be two modality names like ('text', 'image'), got {pair!r}")
        ordered = _ordered(*pair)
        missing = [m for m in ordered if m not in features]
        if missing:
            raise ValueError(
                f"pair {pair_name(*ordered)!r} needs modalities {missing} that are not in features "
                f"(which hold {sorted(features)}); leave them out of pairs or pass pairs=None"
            )
        if ordered in resolved:
            raise ValueError(f"pair {pair_name(*ordered)!r} is listed twice in pairs; list each pair once")
        resolved.append(ordered)
    if not resolved:
        raise ValueError("pairs is empty: pass at least one modality pair, or pairs=None for every pair present")
    return resolved


def contrastive_loss(
    features: Mapping[str, torch.Tensor],
    log_scales: Mapping[str, torch.Tensor],
    biases: Mapping[str, torch.Tensor] | None = None,
    kind: str = "infonce",
    pairs: Iterable[Sequence[str]] | None = None,
    gather: bool | None = None,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Contrastive loss summed over modality pairs.

    Args:
        features: modality name -> unit-norm (b, E) features, rows aligned across modalities.
        log_scales: pair name (``pair_name(a, b)``, e.g. ``"text_image"``) -> scalar log
            logit scale of that pair; exponentiated inside the loss.
        biases: pair name -> scalar logit bias; required by ``kind="sigmoid"``, must be
            None for ``"infonce"``.
        kind: ``"infonce"`` (CLIP) or ``"sigmoid"`` (SigLIP).
        pairs: modality pairs to train, e.g. ``[("text", "image"), ("text", "audio")]``, in
            either order; None trains every pair of the modalities present.
        gather: across processes, compare local rows with every process's features
            (module docstring); None gathers whenever ``torch.distributed`` is initialised
            with more than one process. Each modality is gathered once for all its pairs.
        groups: optional int64 (b,) group of each row (a class label): rows of one group
            are all positives of each other, not negatives (UniCL). On a data set of few
            classes, a batch otherwise holds many pairs that show the same class and
            trains them apart: with 10 classes in a batch of 128, each row has about 12.
            None: only a row's own pair is positive (CLIP).

    Returns:
        ``(total, per_pair)``: the summed scalar loss, and each pair's loss detached
        (tensors, not floats, so that logging forces no host sync), keyed by pair name.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; expected one of {LOSS_KINDS}")
    if kind == "infonce" and biases is not None:
        raise ValueError("biases are only used by kind='sigmoid'; pass biases=None for 'infonce'")
    if kind == "sigmoid" and biases is None:
        raise ValueError("kind='sigmoid' needs biases: a mapping from pair name to a scalar logit bias")
    _check_modalities(features, "features")
    selected = _resolve_pairs(features, pairs)

    rank, world_size = _distributed_rank_and_world(gather)
    gathered: dict[str, torch.Tensor] = {}

    def everyone(modality: str) -> torch.Tensor:
        """(N, E): this modality's features of all processes, gathered once."""
        if world_size == 1:
            return features[modality]
        if modality not in gathered:
            gathered[modality] = gather_with_grad(features[modality])
        return gathered[modality]

    groups_all = None
    if groups is not None:
        first_features = features[selected[0][0]]
        if groups.shape != (first_features.shape[0],):
            raise ValueError(f"groups must be one id per row, shape ({first_features.shape[0]},); "
                             f"got {tuple(groups.shape)}")
        groups = groups.to(first_features.device)
        groups_all = groups if world_size == 1 else _gather_groups(groups, world_size)
    total: torch.Tensor | None = None
    per_pair: dict[str, torch.Tensor] = {}
    for first_name, second_name in selected:
        name = pair_name(first_name, second_name)
        first, second = features[first_name], features[second_name]
        _check_pair_features(first, second, f"pair {name!r}")
        if name not in log_scales:
            raise ValueError(f"no log scale for pair {name!r}; log_scales holds {sorted(log_scales)}")
        offset = rank * first.shape[0]
        if kind == "infonce":
            loss = _infonce(first, second, everyone(first_name), everyone(second_name), log_scales[name], offset,
                            groups, groups_all)
        else:
            if name not in biases:
                raise ValueError(f"no bias for pair {name!r}; biases holds {sorted(biases)}")
            loss = _sigmoid(first, everyone(second_name), log_scales[name], biases[name], offset, groups, groups_all)
        per_pair[name] = loss.detach()
        total = loss if total is None else total + loss
    return total, per_pair


def substitute_microbatch(
    cached: Mapping[str, Sequence[torch.Tensor]],
    fresh: Mapping[str, torch.Tensor],
    index: int,
) -> dict[str, torch.Tensor]:
    """The whole accumulated batch's features, with micro-batch ``index`` recomputed with gradients.

    Gradient accumulation for contrastive losses (open_clip's ``--accum-freq``): the
    negatives of every micro-batch should be the whole accumulated batch, not just the
    micro-batch. First compute all k micro-batches' features without gradients
    (``cached[m][j]``, (b_j, E)); then for each j recompute micro-batch j with gradients
    (``fresh[m]``), build the full (sum_j b_j, E) features with this function, take the
    loss and call ``backward``. Each micro-batch's rows get their gradient once, from the
    loss of the whole batch, so the accumulated encoder gradients equal those of one
    batch k times larger.

    The temperatures and biases take part in all k losses, and every pass computes the
    same loss, so their gradient is the same in each pass; summed over the passes it
    would be k times too large. Take it from one pass only: pass them detached in all
    passes but one, as the trainer's ``compute_gradients`` does (the last pass keeps
    them). Dividing their summed gradients by k before clipping and the optimiser step
    gives the same result.

    Returns:
        modality -> cached micro-batches concatenated in order, with ``fresh`` at ``index``.
    """
    if set(cached) != set(fresh):
        raise ValueError(f"cached features hold modalities {sorted(cached)} but fresh ones hold {sorted(fresh)}")
    full: dict[str, torch.Tensor] = {}
    for modality, chunks in cached.items():
        if not 0 <= index < len(chunks):
            raise IndexError(
                f"micro-batch index {index} is out of range for {len(chunks)} cached {modality!r} micro-batches"
            )
        if fresh[modality].shape != chunks[index].shape:
            raise ValueError(
                f"fresh {modality!r} features have shape {tuple(fresh[modality].shape)} but cached micro-batch "
                f"{index} has {tuple(chunks[index].shape)}; recompute the same micro-batch"
            )
        full[modality] = torch.cat([*chunks[:index], fresh[modality], *chunks[index + 1 :]], dim=0)  # (sum b_j, E)
    return full
