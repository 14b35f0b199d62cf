"""KL_G (eq. 19): the batch-aggregate posterior against N(0, I)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from mixelbo import functional as F
from mixelbo._validation import check_option
from mixelbo.distributed import is_synced, synced_mixture_kl

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


class MixtureKL(nn.Module):
    r"""KL of the batch-aggregate (mixture) posterior against :math:`\mathcal N(0, I)`, eq. 19.

    .. math::
        \mathrm{KL}_G = \frac12 \sum_{j=1}^d
            \left[\bar\sigma_j^2 + \bar\mu_j^2 - 1 - \log\bar\sigma_j^2\right],
        \qquad \bar\mu_j = \frac1N \sum_i \mu^{(i)}_j \;\text{(eq. 17)}

    with :math:`\bar\sigma_j^2` from the chosen estimator (see
    :func:`mixelbo.functional.batch_moments`): ``"mixture"`` (the default: the exact variance of
    the mixture, :math:`\overline{\sigma^2_j} + \mathrm{var}(\mu_j)`), ``"sample"`` (eq. 18 as
    printed, needs ``z``; the same expectation with Monte-Carlo noise) or ``"means"`` (the
    authors' public code; ignores the individual variances). Why ``"mixture"`` is the default:
    docs/collapse.md.

    ``covariance="full"`` replaces the per-dim comparison by the KL of the Gaussian with the
    aggregate's mean and *full* covariance :math:`S` (:func:`mixelbo.functional.batch_covariance`),
    :math:`\frac12(\operatorname{tr} S + \bar\mu^\top\bar\mu - d - \log\det S)`, which also
    decorrelates the latent dims, so that prior samples :math:`\mathcal N(0, I)` land where the
    codes are; eq. 19 makes only each marginal :math:`\mathcal N(0, 1)`. It is computed in
    float64 via a Cholesky factorisation with a closed-form gradient, costs :math:`O(Nd^2 +
    d^3)` (docs/benchmarks.md), and raises ``ValueError`` where :math:`S` is singular (e.g.
    ``"sample"``/``"means"`` with no more samples than latent dims); see
    :func:`mixelbo.functional.mixture_kl`.

    Args:
        variance: ``"mixture"`` (default), ``"sample"`` or ``"means"``.
        covariance: ``"diagonal"`` (eq. 19, default) or ``"full"``.
        reduction: over latent dims, ``"sum"`` (eq. 19), ``"mean"`` or ``"none"``
            (``covariance="full"``: ``"sum"``, the KL, or ``"mean"``, the KL / dims).
        pattern: einops pattern mapping the inputs to ``(samples, dims)``, e.g.
            ``"b c h w -> (b h w) c"`` for a spatial latent; ``None``: batch first, every
            other axis a latent dim.
        sync: ``False`` (default): moments of the local batch, like BatchNorm. ``True`` or a
            ``torch.distributed`` process group: when ``torch.distributed`` is initialised
            with more than one rank, the moments of the global batch across ranks (see
            :mod:`mixelbo.distributed`; under DDP the averaged gradients equal those of the
            one-process loss on the concatenated batch); a no-op with one process.

    Shape:
        - ``mu``, ``logvar``, ``z``: ``(N, ...)``, all the same shape, ``N >= 2``; ``z`` is
          needed by ``"sample"`` only.
        - Output: scalar, or ``(dims,)`` with ``reduction="none"``.

    Raises:
        ValueError: on unknown options, a missing ``z`` with ``variance="sample"``, shape
            mismatch, non-floating dtypes or fewer than 2 samples; with ``covariance="full"``,
            on ``reduction="none"`` and a singular covariance.

    Example:
        >>> import torch
        >>> kl_g = MixtureKL()
        >>> mu, logvar = torch.randn(16, 8), torch.zeros(16, 8)
        >>> z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        >>> kl_g(mu, logvar, z).shape
        torch.Size([])
        >>> MixtureKL(covariance="full")(mu, logvar).shape  # the full aggregate covariance
        torch.Size([])
    """

    def __init__(
        self,
        variance: F.Variance = "mixture",
        reduction: F.DimReduction = "sum",
        pattern: str | None = None,
        sync: bool | ProcessGroup = False,
        covariance: F.Covariance = "diagonal",
    ) -> None:
        super().__init__()
        check_option("variance", variance, F.VARIANCES)
        check_option("reduction", reduction, F.DIM_REDUCTIONS)
        F.check_full_covariance_options(covariance, reduction)
        self.variance = variance
        self.covariance = covariance
        self.reduction = reduction
        self.pattern = pattern
        self.sync = sync

    def forward(self, mu: Tensor, logvar: Tensor | None, z: Tensor | None = None) -> Tensor:
        if is_synced(self.sync):
            return synced_mixture_kl(
                mu, logvar, z, variance=self.variance, covariance=self.covariance,
                reduction=self.reduction, pattern=self.pattern,
                group=None if self.sync is True else self.sync,
            )  # fmt: skip
        return F.mixture_kl(
            mu, logvar, z, variance=self.variance, covariance=self.covariance,
            reduction=self.reduction, pattern=self.pattern,
        )  # fmt: skip

    def extra_repr(self) -> str:
        sync = "" if self.sync is False else f", sync={self.sync!r}"
        full = "" if self.covariance == "diagonal" else f", covariance={self.covariance!r}"
        return (
            f"variance={self.variance!r}, reduction={self.reduction!r}, "
            f"pattern={self.pattern!r}{sync}{full}"
        )
