"""The standard VAE KL (eq. 10), for the VAE and beta-VAE baselines."""

from __future__ import annotations

from torch import Tensor, nn

from mixelbo import functional as F
from mixelbo._validation import check_option


class GaussianKL(nn.Module):
    r"""KL of each diagonal-Gaussian posterior against :math:`\mathcal N(0, I)`, eq. 10.

    .. math::
        \mathrm{KL} = \frac12 \sum_i \sum_j
            \left[\sigma_j^{(i)2} + \mu_j^{(i)2} - 1 - \log\sigma_j^{(i)2}\right]

    Args:
        reduction: ``"batchmean"`` (sum over dims, mean over samples), ``"sum"`` (eq. 10),
            ``"mean"`` or ``"none"`` (``(samples, dims)``).
        pattern: einops pattern mapping the inputs to ``(samples, dims)``.

    Shape:
        - ``mu``, ``logvar``: ``(N, ...)``, the same shape.
        - Output: scalar, or ``(samples, dims)`` with ``reduction="none"``.

    Raises:
        ValueError: on an unknown ``reduction``, shape mismatch or non-floating dtypes.

    Example:
        >>> import torch
        >>> GaussianKL()(torch.zeros(4, 8), torch.zeros(4, 8))
        tensor(0.)
    """

    def __init__(
        self, reduction: F.ElementReduction = "batchmean", pattern: str | None = None
    ) -> None:
        super().__init__()
        check_option("reduction", reduction, F.ELEMENT_REDUCTIONS)
        self.reduction = reduction
        self.pattern = pattern

    def forward(self, mu: Tensor, logvar: Tensor) -> Tensor:
        return F.gaussian_kl(mu, logvar, reduction=self.reduction, pattern=self.pattern)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, pattern={self.pattern!r}"
