"""Patch dropout (FLIP, Li et al. 2023): in training, each sample keeps a random subset of its patch tokens.

Dropping half the patches roughly halves the cost of every block, so a step costs
about half as much and larger batches fit; FLIP reports equal or better accuracy per
unit of compute. Evaluation always sees every token.

Shapes: B batch, P prefix tokens (CLS, distillation), N patch tokens, M kept patch
tokens per sample (the widest sample's count when a padding mask is given), D width.
"""
from __future__ import annotations

import torch
from torch import nn


def kept_counts(valid: torch.Tensor, rate: float) -> torch.Tensor:
    """Patch tokens kept of ``valid`` (B,) valid ones at drop ``rate``: floor(valid * (1 - rate)), at least one.

    floor, as open_clip's ``PatchDropout``: 49 patches at 0.5 keep 24, at 0.75 keep 12.
    The product is nudged up by 1e-6 before the floor so that float error in
    ``1 - rate`` never costs a token (100 patches at 0.9 keep 10, where open_clip's
    ``int(100 * (1 - 0.9))`` gives 9). A sample without valid patches keeps none.
    """
    kept = (valid.double() * (1.0 - rate) + 1e-6).floor().long()
    return kept.clamp(min=1).minimum(valid)


class PatchDropout(nn.Module):
    """Keeps a uniformly random ``floor(N * (1 - rate))`` of the patch tokens of each sample, in training only.

    Apply it after position encodings are added (a kept token carries its position) and
    before the block stack. The ``num_prefix`` leading tokens (CLS, distillation) are
    always kept, in front. Kept patch tokens come in random order, which changes nothing
    downstream: positions are already added and attention without a causal mask does
    not depend on order.

    With a padding mask (audio clips shorter than the longest in the batch), padded
    tokens are dropped first: each sample keeps ``floor(valid * (1 - rate))`` of its own
    valid tokens, so a short clip is thinned at the same rate as a long one. The batch
    is as wide as the sample keeping the most; the rest of each row is padding, and the
    returned mask says so, so attention and mean pooling still see valid tokens only.

    Args:
        rate: fraction of patch tokens dropped, in [0, 1); 0 disables it.
        num_prefix: leading tokens never dropped.
    """

    def __init__(self, rate: float, num_prefix: int) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"patch dropout rate must be in [0, 1), got {rate}")
        self.rate = rate
        self.num_prefix = num_prefix

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, P + N, D), ``padding_mask`` (B, P + N) True at padding -> x (B, P + M, D) and its mask (or None)."""
        if not self.training or self.rate == 0.0:
            return x, padding_mask
        prefix, patches = x[:, : self.num_prefix], x[:, self.num_prefix :]  # (B, P, D), (B, N, D)
        B, N, D = patches.shape
        # The top M of Gaussian scores is a uniformly random subset. On CPU this is
        # open_clip's draw, so both keep the same tokens under one seed; elsewhere ours
        # draws on the tokens' device (open_clip always draws on the CPU).
        scores = torch.randn(B, N, device=x.device)  # (B, N)
        if padding_mask is None:
            num_keep = int(kept_counts(torch.tensor([N]), self.rate))
            kept = scores.topk(num_keep, dim=1).indices  # (B, M)
            kept_mask = None
        else:
            patch_is_pad = padding_mask[:, self.num_prefix :]  # (B, N)
            keep = kept_counts((~patch_is_pad).sum(dim=1), self.rate)  # (B,)
            # Padding scores lowest, so each row's top-ranked tokens are its valid ones.
            scores = scores.masked_fill(patch_is_pad, float("-inf"))
            kept = scores.topk(int(keep.max()), dim=1).indices  # (B, M)
            kept_is_pad = torch.arange(kept.shape[1], device=x.device)[None, :] >= keep[:, None]  # (B, M)
            kept_mask = torch.cat([padding_mask[:, : self.num_prefix], kept_is_pad], dim=1)  # (B, P + M)
        kept_patches = patches.gather(1, kept[..., None].expand(-1, -1, D))  # (B, M, D)
        return torch.cat([prefix, kept_patches], dim=1), kept_mask

    def extra_repr(self) -> str:
        return f"rate={self.rate}, num_prefix={self.num_prefix}"
