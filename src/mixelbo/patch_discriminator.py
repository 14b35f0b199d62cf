"""PatchGAN discriminator: a fully convolutional critic whose logit map is (H/8, W/8)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as apply_spectral_norm

from mixelbo._validation import check_option

Norm = Literal["batch", "instance", "group", "none"]
NORMS = ("batch", "instance", "group", "none")


def _norm_layer(norm: str, num_features: int) -> nn.Module:
    """The normalisation after a hidden convolution (``nn.Identity`` for ``"none"``)."""
    if norm == "batch":
        return nn.BatchNorm2d(num_features)
    if norm == "instance":
        return nn.InstanceNorm2d(num_features, affine=True)
    if norm == "group":
        return nn.GroupNorm(math.gcd(32, num_features), num_features)
    return nn.Identity()


class PatchDiscriminator(nn.Module):
    r"""PatchGAN discriminator (Li and Wand 2016; Isola et al. 2017) as in eqs. 21 and 23.

    Instead of one realism score per image it returns a map of logits, one per receptive field
    ("patch"). With the defaults it is the authors' layout: six 3x3 convolutions with channels
    128, 128, 128, 64, 64, 1 and strides 2, 2, 2, 1, 1, 1; batch norm, LeakyReLU and dropout
    after each but the last (about 0.41 M parameters). Padding 1 everywhere, so the map has
    size :math:`(\lceil H/8 \rceil, \lceil W/8 \rceil)`: exactly ``(H/8, W/8)`` when 8 divides
    the image size, not the ``H/8 - 2`` (30 x 30 for 256 x 256 images) of pix2pix's
    ``NLayerDiscriminator`` whose last two 4x4 convolutions each drop a row and a column.

    Options (all default to the paper's discriminator):

    - ``norm``: ``"batch"`` (the paper; pix2pix's and taming's default), ``"instance"``
      (affine :class:`~torch.nn.InstanceNorm2d`, as pix2pix/CycleGAN offer), ``"group"``
      (:class:`~torch.nn.GroupNorm` with ``gcd(32, channels)`` groups) or ``"none"``.
      Batch norm couples the samples of a batch, and under DDP each GPU normalises with its
      own batch's statistics unless converted with one call,
      ``torch.nn.SyncBatchNorm.convert_sync_batchnorm(discriminator)``; instance, group and
      no norm are per-sample and need no conversion (and suit the R1 penalty, whose
      per-sample gradient batch norm mixes across the batch).
    - ``spectral_norm``: wrap every convolution in
      :func:`torch.nn.utils.parametrizations.spectral_norm` (Miyato et al. 2018), which
      bounds each layer's Lipschitz constant so the gradients the discriminator sends to the
      decoder cannot explode; usually paired with ``norm="none"``.
    - depth and width: ``channels``/``strides`` set the layers (their number is the depth,
      the product of the strides the map's downsampling); ``width`` multiplies every hidden
      channel count (``round(c * width)``, at least 1).

    Args:
        in_channels: channels of the images it scores.
        channels: output channels of the hidden convolutions (the last conv has 1).
        strides: stride of each hidden convolution; the product is the map's downsampling.
        dropout: dropout probability after each hidden block (0 disables it).
        negative_slope: LeakyReLU slope.
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"``.
        spectral_norm: spectral-normalise every convolution.
        width: multiplier of the hidden channels.

    Shape:
        - Input: ``(B, in_channels, H, W)``.
        - Output: ``(B, 1, ceil(H / s), ceil(W / s))`` logits, ``s = prod(strides)``.

    Raises:
        ValueError: if ``channels`` and ``strides`` differ in length or are empty, on an
            unknown ``norm``, a non-positive ``width``, or ``dropout`` outside ``[0, 1)``.

    Example:
        >>> import torch
        >>> PatchDiscriminator()(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 1, 8, 8])
        >>> PatchDiscriminator(norm="none", spectral_norm=True, width=0.5)(
        ...     torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (128, 128, 128, 64, 64),
        strides: Sequence[int] = (2, 2, 2, 1, 1),
        dropout: float = 0.25,
        negative_slope: float = 0.2,
        *,
        norm: Norm = "batch",
        spectral_norm: bool = False,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError(
                "channels and strides must be non-empty and of equal length; got "
                f"channels={tuple(channels)}, strides={tuple(strides)}"
            )
        check_option("norm", norm, NORMS)
        if not width > 0:
            raise ValueError(f"width must be positive; got {width!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
        self.norm, self.spectral_norm, self.width = norm, spectral_norm, width

        def conv(in_chs: int, out_chs: int, stride: int) -> nn.Module:
            layer = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1)
            return apply_spectral_norm(layer) if spectral_norm else layer

        layers: list[nn.Module] = []
        in_chs = in_channels
        for hidden_chs, stride in zip(channels, strides, strict=True):
            out_chs = max(1, round(hidden_chs * width))
            layers += [
                conv(in_chs, out_chs, stride),
                _norm_layer(norm, out_chs),
                nn.LeakyReLU(negative_slope),
                nn.Dropout(dropout),
            ]
            in_chs = out_chs
        layers.append(conv(in_chs, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.layers(x)
        return logits

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}, spectral_norm={self.spectral_norm}, width={self.width}"
