"""Attention-weighted fusion: a softmax over per-modality scores, with several heads."""

from __future__ import annotations

from torch import Tensor, nn

from mtmm_train.encoders.base import check_sizes
from mtmm_train.errors import KEY, SettingError
from mtmm_train.fusion.base import ProjectedFusion, masked_softmax


class AttentionFusion(ProjectedFusion):
    """``s_{m,k} = v_k^T tanh(W h_m)``, ``a_{:,k} = softmax_m(s_{:,k})``, ``z_k = n sum_m a_{m,k} h_{m,k}``.

    ``h_m`` is the modality's embedding projected to the common size ``D`` and split into
    ``num_heads`` slices ``h_{m,k}``; each head weighs the present modalities by content with
    its own softmax, and the heads' outputs are concatenated (``D`` features). ``n`` is the
    number of present modalities: the weights average to one instead of summing to one, so
    uniform attention equals sum fusion. Without it the fused signal shrinks by ``1/n`` and,
    on the synthetic ``match`` task, training sat on its initial plateau several epochs
    longer (one head, seed 0: validation AUROC 0.65 after 6 epochs, against 0.91 with it).
    One head tends to pick a single modality per sample; several heads can attend to
    several modalities at once (four heads: 0.97).

    Args:
        in_dims: modality -> embedding size (passed in by the recipe).
        dim: common size (``None``: see :class:`ProjectedFusion`).
        hidden_dim: width of the scoring layer ``W``.
        num_heads: number of softmaxes over the modalities (must divide the common size).

    Raises:
        SettingError: ``num_heads`` does not divide the common size.
    """

    def __init__(self, in_dims: dict[str, int], dim: int | None, hidden_dim: int, num_heads: int) -> None:
        super().__init__(in_dims, dim)
        check_sizes(hidden_dim=hidden_dim, num_heads=num_heads)
        if self.out_dim % num_heads:
            fit = max(h for h in range(1, num_heads + 1) if self.out_dim % h == 0)
            raise SettingError("num_heads", f"must divide the fused size {self.out_dim}, found num_heads={num_heads}; "
                               f"e.g. {KEY}.num_heads={fit}, or set {KEY}.dim to a multiple of {num_heads}")
        self.num_heads = num_heads
        # No bias on the last layer: a softmax ignores a score shift, so its gradient is zero.
        self.score = nn.Sequential(nn.Linear(self.out_dim, hidden_dim), nn.Tanh(),
                                   nn.Linear(hidden_dim, num_heads, bias=False))
        # Start near uniform weights: random scores would make each sample pick a modality at
        # random. Small rather than zero, so that the first layer gets gradients from step one.
        nn.init.normal_(self.score[-1].weight, std=0.01)

    def forward(self, embs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        h, mask = self.stacked(embs, present)  # (B, M, D), (B, M, 1)
        weights = masked_softmax(self.score(h), mask.bool(), dim=1)  # (B, M, K)
        h = h.unflatten(-1, (self.num_heads, -1))  # (B, M, K, D/K)
        weights = weights * mask.sum(1, keepdim=True)  # average one over the present modalities
        return (weights.unsqueeze(-1) * h).sum(1).flatten(1)  # (B, D)
