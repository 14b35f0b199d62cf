"""KL_I (eq. 20): keeps each individual posterior from collapsing to a Dirac delta."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from mixelbo import functional as F
from mixelbo._validation import check_option


class IndividualVarianceKL(nn.Module):
    r"""Penalty on individual posterior variances that shrink towards zero, eq. 20.

    .. math::
        \mathrm{KL}_I = c \sum_i \sum_j \left[\sigma_j^{(i)2} - 1 - \log\sigma_j^{(i)2}\right]

    with :math:`c = 1` for ``form="paper"`` (eq. 20 as printed) and :math:`c = 1/2` for
    ``form="kl"`` (the true :math:`\mathrm{KL}(\mathcal N(\mu, \sigma^2) \| \mathcal N(\mu, 1))`).
    Independent of the means: it only keeps the encoder stochastic.

    Args:
        form: ``"paper"`` or ``"kl"``.
        reduction: ``"batchmean"`` (the default: sum over dims, mean over samples, as the
            authors' public code), ``"sum"`` (eq. 20 as printed: over the batch too, which
            makes it ``N`` times stronger than a per-sample term and collapses small models
            to the prior, see docs/collapse.md), ``"mean"`` or ``"none"``
            (``(samples, dims)``).
        pattern: einops pattern mapping ``logvar`` to ``(samples, dims)``.

    Shape:
        - ``logvar``: ``(N, ...)``.
        - Output: scalar, or ``(samples, dims)`` with ``reduction="none"``.

    Raises:
        ValueError: on unknown options or a non-floating ``logvar``.

    Example:
        >>> import torch
        >>> kl_i = IndividualVarianceKL()  # per image: sum over dims, mean over the batch
        >>> kl_i(torch.zeros(16, 8))  # sigma = 1 everywhere
        tensor(0.)
    """

    def __init__(
        self,
        form: Literal["paper", "kl"] = "paper",
        reduction: F.ElementReduction = "batchmean",
        pattern: str | None = None,
    ) -> None:
        super().__init__()
        check_option("form", form, ("paper", "kl"))
        check_option("reduction", reduction, F.ELEMENT_REDUCTIONS)
        self.form = form
        self.reduction = reduction
        self.pattern = pattern

    def forward(self, logvar: Tensor) -> Tensor:
        return F.individual_variance_kl(
            logvar, form=self.form, reduction=self.reduction, pattern=self.pattern
        )

    def extra_repr(self) -> str:
        return f"form={self.form!r}, reduction={self.reduction!r}, pattern={self.pattern!r}"
