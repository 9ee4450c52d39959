"""BatchNorm that learns only from the rows where the modality is present, without a host synchronisation.

The from-scratch encoders (``cnn``, ``conv1d``) run the whole batch, absent rows (zeros) included: a plain
BatchNorm in training mode would normalise with statistics diluted by those zeros and learn running
statistics unlike those of real inputs. :class:`MaskedBatchNorm1d` / :class:`MaskedBatchNorm2d` take the
modality's presence mask and count the present rows only, with tensor operations alone (no ``if`` on a
device value), so a step stays free of host reads and compiles into one graph. Their parameters and
buffers (and so their ``state_dict`` keys) are those of ``nn.BatchNorm1d`` / ``nn.BatchNorm2d``, of which
they are subclasses.

This module defines no encoder (the encoder families take their members from the other modules).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def masked_batch_norm(layer: _BatchNorm, x: Tensor, present: Tensor) -> Tensor:
    """Batch normalisation of ``x`` with statistics over the present rows only; in training mode (with
    ``track_running_stats``) the running statistics are updated from them.

    The mean and the biased variance over the present rows (and every position: the dimensions after the
    channels) normalise every row; absent rows' outputs are computed alike and mean nothing (the fusion masks
    them). The running mean and the unbiased variance move by ``layer.momentum`` (or the cumulative average
    when it is None) and ``num_batches_tracked`` counts the step, as ``nn.BatchNorm`` does; with no present
    row the running statistics and the count stay as they are (``torch.where`` on the count, no host read)
    and the output is finite. Statistics are computed in float32 and the output has the dtype of ``x``.

    Args:
        layer: the BatchNorm layer (its affine parameters, ``eps``, ``momentum`` and buffers are used).
        x: ``(B, C, *positions)``.
        present: bool ``(B,)``, True where the row holds the modality.

    Returns:
        The normalised ``x``, same shape and dtype.
    """
    shape = (1, -1, *([1] * (x.dim() - 2)))  # a per-channel vector, broadcast over x
    xf = x.float()
    b, c = x.shape[0], x.shape[1]
    w = present.to(torch.float32)
    per_row = x[0, 0].numel()
    n = w.sum() * per_row  # present values per channel
    denom = n.clamp(min=1.0)
    # Sums over the positions (the contiguous last dimension), then over the present rows as a product with the
    # mask: far faster on the CPU than one reduction over dimensions (0, 2, ...). Two passes: the mean, then
    # the variance about it.
    mean = (w @ xf.reshape(b, c, -1).sum(2)) / denom
    centred = xf - mean.view(shape)
    var = (w @ centred.square().reshape(b, c, -1).sum(2)) / denom  # biased: what normalises
    if layer.training and layer.track_running_stats:
        update_running_statistics(layer, mean.detach(), var.detach(), n)
    scale = torch.rsqrt(var + layer.eps)
    if layer.weight is not None:
        scale = scale * layer.weight.float()
    shift = -mean * scale
    if layer.bias is not None:
        shift = shift + layer.bias.float()
    out = torch.addcmul(shift.view(shape), xf, scale.view(shape))  # one pass: x * scale + shift
    return out.to(x.dtype)


def update_running_statistics(layer: _BatchNorm, mean: Tensor, var: Tensor, n: Tensor) -> None:
    """Move ``layer``'s running statistics towards the batch ``mean`` and biased ``var`` of ``n`` values per
    channel, as ``nn.BatchNorm`` does in training (unbiased variance, ``momentum`` or the cumulative average);
    with ``n == 0`` nothing changes. No host read: the choice is a ``torch.where`` on ``n``.

    Args:
        layer: a BatchNorm layer with ``track_running_stats``.
        mean: the batch mean per channel (detached).
        var: the batch's biased variance per channel (detached).
        n: the number of values per channel, a float scalar tensor.
    """
    has = n > 0
    tracked = layer.num_batches_tracked + has.to(layer.num_batches_tracked.dtype)
    layer.num_batches_tracked.copy_(tracked)
    if layer.momentum is None:  # cumulative moving average (a Python attribute, not a device value)
        factor: Tensor | float = 1.0 / tracked.clamp(min=1).to(torch.float32)
    else:
        factor = layer.momentum
    unbiased = var * (n / (n - 1).clamp(min=1.0))
    running_mean, running_var = layer.running_mean, layer.running_var
    new_mean = factor * mean + (1 - factor) * running_mean.float()
    new_var = factor * unbiased + (1 - factor) * running_var.float()
    running_mean.copy_(torch.where(has, new_mean, running_mean.float()))
    running_var.copy_(torch.where(has, new_var, running_var.float()))


class _MaskedBatchNorm(_BatchNorm):
    """``forward(x, present=None)``: with a mask in training mode (or without running statistics), the
    statistics of the present rows (:func:`masked_batch_norm`); otherwise the plain BatchNorm."""

    def forward(self, x: Tensor, present: Tensor | None = None) -> Tensor:
        """Normalise ``x`` ``(B, C, ...)``; ``present``: bool ``(B,)`` (None: every row)."""
        if present is None or not (self.training or self.running_mean is None):
            return super().forward(x)
        self._check_input_dim(x)
        return masked_batch_norm(self, x, present)


class MaskedBatchNorm1d(_MaskedBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` whose ``forward(x, present=None)`` learns from the present rows only."""


class MaskedBatchNorm2d(_MaskedBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose ``forward(x, present=None)`` learns from the present rows only."""


def run_layers(layers: nn.Sequential, x: Tensor, present: Tensor | None) -> Tensor:
    """Run ``layers`` in order on ``x``, handing ``present`` to the presence-aware layers (the masked
    BatchNorms) and ``x`` alone to the others.

    Args:
        layers: the layers.
        x: their input ``(B, ...)``.
        present: bool ``(B,)``, or None (every row present).

    Returns:
        The last layer's output.
    """
    for layer in layers:
        x = layer(x, present) if isinstance(layer, _MaskedBatchNorm) else layer(x)
    return x
