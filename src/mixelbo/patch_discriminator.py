"""PatchGAN discriminator: a fully convolutional critic whose logit map is (H/8, W/8)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    r"""PatchGAN discriminator (Li and Wand 2016; Isola et al. 2017) as in eqs. 21 and 23.

    Instead of one realism score per image it returns a map of logits, one per receptive field
    ("patch"). With the defaults it is the authors' layout: six 3x3 convolutions with channels
    128, 128, 128, 64, 64, 1 and strides 2, 2, 2, 1, 1, 1; batch norm, LeakyReLU and dropout
    after each but the last (about 0.41 M parameters). Padding 1 everywhere, so the map has
    size :math:`(\lceil H/8 \rceil, \lceil W/8 \rceil)`: exactly ``(H/8, W/8)`` when 8 divides
    the image size (not the ``H/8 - 2`` of pix2pix's 4x4 valid convolutions).

    Args:
        in_channels: channels of the images it scores.
        channels: output channels of the hidden convolutions (the last conv has 1).
        strides: stride of each hidden convolution; the product is the map's downsampling.
        dropout: dropout probability after each hidden block (0 disables it).
        negative_slope: LeakyReLU slope.

    Shape:
        - Input: ``(B, in_channels, H, W)``.
        - Output: ``(B, 1, ceil(H / s), ceil(W / s))`` logits, ``s = prod(strides)``.

    Raises:
        ValueError: if ``channels`` and ``strides`` differ in length or are empty.

    Example:
        >>> import torch
        >>> PatchDiscriminator()(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (128, 128, 128, 64, 64),
        strides: Sequence[int] = (2, 2, 2, 1, 1),
        dropout: float = 0.25,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError(
                "channels and strides must be non-empty and of equal length; got "
                f"channels={tuple(channels)}, strides={tuple(strides)}"
            )
        layers: list[nn.Module] = []
        in_chs = in_channels
        for out_chs, stride in zip(channels, strides, strict=True):
            layers += [
                nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1),
                nn.BatchNorm2d(out_chs),
                nn.LeakyReLU(negative_slope),
                nn.Dropout(dropout),
            ]
            in_chs = out_chs
        layers.append(nn.Conv2d(in_chs, 1, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.layers(x)
        return logits
