"""Multi-scale PatchGAN: several discriminators on an image pyramid (pix2pixHD style)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as torch_f
from torch import Tensor, nn

from mixelbo.patch_discriminator import PatchDiscriminator


class MultiScaleDiscriminator(nn.Module):
    r"""Several :class:`~mixelbo.PatchDiscriminator` on average-pooled copies of the input.

    Discriminator :math:`k` scores the image downsampled :math:`k` times by a 3x3 average
    pool with stride 2 (padding 1, padding excluded from the average), as in pix2pixHD's
    ``MultiscaleDiscriminator`` (Wang et al. 2018). The coarse scales see large structures
    with the same receptive field, the fine scale sees texture. ``forward`` returns the list
    of logit maps, finest first; :class:`~mixelbo.PatchGANLoss` and the functional criteria
    accept such a list and average the loss over scales (pix2pixHD sums them instead, so its
    weight is ``num_scales`` times larger at equal loss).

    (MONAI's ``MultiScalePatchDiscriminator`` differs: its discriminators see the same
    full-resolution input and get deeper instead.)

    Args:
        in_channels: image channels.
        num_scales: number of discriminators (1 is a single :class:`PatchDiscriminator`
            returned in a list).
        **discriminator_kwargs: keyword arguments of :class:`~mixelbo.PatchDiscriminator`
            (``channels``, ``strides``, ``dropout``, ``negative_slope``, ``norm``,
            ``spectral_norm``, ``width``), the same for every scale.

    Shape:
        - Input: ``(B, in_channels, H, W)``.
        - Output: a list of ``num_scales`` logit maps; map :math:`k` has size
          ``(B, 1, ceil(H_k / s), ceil(W_k / s))`` with :math:`H_0 = H`,
          :math:`H_{k+1} = \lceil H_k / 2 \rceil` and ``s = prod(strides)``.

    Raises:
        ValueError: if ``num_scales < 1``, and as :class:`PatchDiscriminator`.

    Example:
        >>> import torch
        >>> maps = MultiScaleDiscriminator(num_scales=3)(torch.randn(2, 3, 64, 64))
        >>> [tuple(m.shape[-2:]) for m in maps]
        [(8, 8), (4, 4), (2, 2)]
    """

    def __init__(self, in_channels: int = 3, num_scales: int = 3, **discriminator_kwargs: Any):
        super().__init__()
        if num_scales < 1:
            raise ValueError(f"num_scales must be at least 1; got {num_scales!r}")
        self.discriminators = nn.ModuleList(
            PatchDiscriminator(in_channels, **discriminator_kwargs) for _ in range(num_scales)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        logit_maps = []
        for scale, discriminator in enumerate(self.discriminators):
            if scale > 0:
                x = torch_f.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            logit_maps.append(discriminator(x))
        return logit_maps
