"""Eq. 22 as one module: beta1 KL_G + beta2 KL_I + beta3 L1 + beta4 adversarial."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from mixelbo import functional as F
from mixelbo._validation import accumulation_dtype, check_floating, check_option, check_same_shape
from mixelbo.adaptive_weight import AdaptiveAdversarialWeight
from mixelbo.individual_variance_kl import IndividualVarianceKL
from mixelbo.mixture_kl import MixtureKL
from mixelbo.patchgan_loss import PatchGANLoss

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


class ELBOTerms(NamedTuple):
    """The regularized ELBO (eq. 22) and its unweighted terms, for logging."""

    total: Tensor
    """beta1 kl_g + beta2 kl_i + beta3 reconstruction + beta4 adversarial: what to minimise."""
    kl_g: Tensor
    """KL_G of eq. 19, unweighted."""
    kl_i: Tensor
    """KL_I of eq. 20, unweighted."""
    reconstruction: Tensor
    """The L1 term of eq. 21, unweighted."""
    adversarial: Tensor
    """H[1, D(x_hat)] of eq. 21, unweighted (zero without a discriminator)."""
    adversarial_weight: Tensor | None = None
    """Extra factor on beta4 adversarial: the adaptive weight (1 without it, 0 in warm-up)."""


class RegularizedELBO(nn.Module):
    r"""The paper's training objective for the VAE (eq. 22), as one module.

    .. math::
        \mathrm{ELBO}_{reg} = \beta_1 \mathrm{KL}_G + \beta_2 \mathrm{KL}_I
            + \beta_3 \lVert x - \hat x \rVert_1 + \beta_4 H[\mathbf 1, D(\hat x)]

    (written as a loss to minimise). ``forward`` returns an :class:`ELBOTerms` with the total
    and each unweighted term; :meth:`discriminator_loss` is :math:`\beta_4` times eq. 23.

    Adversarial options: warm-up, label smoothing, R1 and the discriminator's architecture
    live on the :class:`~mixelbo.PatchGANLoss` passed as ``adversarial``; pass the step to
    ``forward(..., step=)`` and :meth:`discriminator_loss` (``step=``). With
    ``adaptive_weight`` the adversarial term is multiplied by
    :math:`\lambda = \lVert\nabla_{G_L} \beta_3 L_1\rVert / (\lVert\nabla_{G_L} H\rVert + \delta)`
    at the decoder's last layer :math:`G_L` (Esser et al. 2021; the KL terms do not depend on
    the decoder), so :math:`\beta_4` becomes the ratio of the two gradients there (taming's
    ``disc_weight``; pick it near 1, not the paper's 100); pass
    ``forward(..., last_layer=decoder.<last conv>.weight)``.

    The defaults are :meth:`recommended`: :math:`(\beta_1..\beta_4) = (1, 0.1, 5000, 100)`,
    KL_I averaged over the batch and the exact ``"mixture"`` variance, the configuration that
    keeps small models from collapsing to the prior (docs/collapse.md). Two more presets:
    :meth:`paper` (eq. 22 as printed: :math:`(1, 0.5, 1000, 100)`, KL_I summed over the batch,
    the eq. 18 ``"sample"`` variance) and :meth:`authors_code` (the public Keras code's
    choices). The paper does not say how :math:`\lVert x - \hat x \rVert` is normalised; every
    preset uses the mean absolute error per element, as the public code does.

    Args:
        beta1, beta2, beta3, beta4: the weights of eq. 22; ``beta4=0`` drops the adversarial
            term and builds no discriminator.
        variance: aggregate-variance estimator of KL_G (see :class:`~mixelbo.MixtureKL`).
        covariance: ``"diagonal"`` (eq. 19, default) or ``"full"``: KL_G against the full
            aggregate covariance (see :class:`~mixelbo.MixtureKL`).
        kl_i_form: ``"paper"`` or ``"kl"`` (see :class:`~mixelbo.IndividualVarianceKL`).
        kl_i_reduction: reduction of KL_I, ``"batchmean"`` (per image, the default), ``"sum"``
            (eq. 20 as printed) or ``"mean"``.
        reconstruction_reduction: ``"mean"`` (per element), ``"batchmean"`` or ``"sum"``.
        adversarial: a :class:`~mixelbo.PatchGANLoss`; ``None`` builds the default one for
            ``in_channels`` when ``beta4 != 0``.
        in_channels: image channels for the default discriminator.
        pattern: latent layout (see :class:`~mixelbo.MixtureKL`).
        sync: global-batch moments for KL_G under ``torch.distributed`` (see
            :class:`~mixelbo.MixtureKL`).
        adaptive_weight: ``True`` (or an :class:`~mixelbo.AdaptiveAdversarialWeight` with
            its own ``delta``, ``max_weight``, ``fallback``) to weight the adversarial term
            adaptively; ``False`` (the paper) for the fixed :math:`\beta_4`.

    Shape:
        ``x``, ``x_hat``: ``(B, C, H, W)`` (any shape, the same); ``mu``, ``logvar``, ``z``:
        ``(B, ...)``. Every term is a scalar.

    Raises:
        ValueError: on unknown options, shape mismatches or non-floating dtypes.

    Example:
        >>> import torch
        >>> elbo = RegularizedELBO()  # the recommended configuration
        >>> x = torch.rand(4, 3, 32, 32) * 2 - 1
        >>> mu, logvar = torch.randn(4, 16), torch.zeros(4, 16)
        >>> z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        >>> terms = elbo(x, x.tanh(), mu, logvar, z)
        >>> terms.total.backward() if terms.total.requires_grad else None
        >>> sorted(terms._asdict())
        ['adversarial', 'adversarial_weight', 'kl_g', 'kl_i', 'reconstruction', 'total']
    """

    def __init__(
        self,
        beta1: float = 1.0,
        beta2: float = 0.1,
        beta3: float = 5000.0,
        beta4: float = 100.0,
        *,
        variance: F.Variance = "mixture",
        kl_i_form: Literal["paper", "kl"] = "paper",
        kl_i_reduction: Literal["sum", "batchmean", "mean"] = "batchmean",
        reconstruction_reduction: Literal["sum", "batchmean", "mean"] = "mean",
        adversarial: PatchGANLoss | None = None,
        in_channels: int = 3,
        pattern: str | None = None,
        adaptive_weight: bool | AdaptiveAdversarialWeight = False,
        sync: bool | ProcessGroup = False,
        covariance: F.Covariance = "diagonal",
    ) -> None:
        super().__init__()
        check_option("kl_i_reduction", kl_i_reduction, ("sum", "batchmean", "mean"))
        check_option(
            "reconstruction_reduction", reconstruction_reduction, ("sum", "batchmean", "mean")
        )
        self.beta1, self.beta2, self.beta3, self.beta4 = beta1, beta2, beta3, beta4
        self.kl_g = MixtureKL(
            variance=variance, reduction="sum", pattern=pattern, sync=sync, covariance=covariance
        )
        self.kl_i = IndividualVarianceKL(form=kl_i_form, reduction=kl_i_reduction, pattern=pattern)
        self.reconstruction_reduction = reconstruction_reduction
        if adversarial is None and beta4 != 0:
            adversarial = PatchGANLoss(in_channels=in_channels)
        self.adversarial = adversarial
        if adaptive_weight is True:
            adaptive_weight = AdaptiveAdversarialWeight()
        if adaptive_weight is not False and adversarial is None:
            raise ValueError("adaptive_weight needs an adversarial term; this ELBO has beta4=0")
        self.adaptive_weight = adaptive_weight or None

    @classmethod
    def recommended(cls, **overrides: Any) -> RegularizedELBO:
        """The defaults, by name: KL_I per image (0.1), exact mixture variance, 5000 MAE, 100 BCE.

        What the collapse study supports (docs/collapse.md): eq. 22 with KL_I averaged over
        the batch instead of summed (a sum over the batch makes KL_I ``b`` times stronger than
        every other term and pins every sigma at 1, which collapses a small model to the
        prior), the ``"mixture"`` variance (the exact variance of the aggregate, so prior
        samples N(0, I) match it), and the reconstruction and adversarial weights of the
        authors' public code.
        """
        settings: dict[str, Any] = dict(
            beta1=1.0, beta2=0.1, beta3=5000.0, beta4=100.0, variance="mixture",
            kl_i_form="paper", kl_i_reduction="batchmean", reconstruction_reduction="mean",
        )  # fmt: skip
        return cls(**(settings | overrides))

    @classmethod
    def paper(cls, **overrides: Any) -> RegularizedELBO:
        """Eq. 22 as the paper states it: betas (1, 0.5, 1000, 100), eq. 18 variance, eq. 20 sum."""
        settings: dict[str, Any] = dict(
            beta1=1.0, beta2=0.5, beta3=1000.0, beta4=100.0, variance="sample",
            kl_i_form="paper", kl_i_reduction="sum", reconstruction_reduction="mean",
        )  # fmt: skip
        return cls(**(settings | overrides))

    @classmethod
    def authors_code(cls, **overrides: Any) -> RegularizedELBO:
        """The public Keras code: variance of the means, 0.1 KL_I per sample, 5000 MAE, 100 BCE."""
        settings: dict[str, Any] = dict(
            beta1=1.0, beta2=0.1, beta3=5000.0, beta4=100.0, variance="means",
            kl_i_form="paper", kl_i_reduction="batchmean", reconstruction_reduction="mean",
        )  # fmt: skip
        return cls(**(settings | overrides))

    def reconstruction(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """The L1 term of eq. 21, :math:`\\lVert x - \\hat x \\rVert_1`, reduced as configured."""
        check_floating("x", x)
        check_floating("x_hat", x_hat)
        check_same_shape("x_hat", x_hat, "x", x)
        error = (x - x_hat).abs().to(accumulation_dtype(x_hat))
        if self.reconstruction_reduction == "mean":
            return error.mean()
        total = error.sum()
        return total / x.shape[0] if self.reconstruction_reduction == "batchmean" else total

    def forward(
        self,
        x: Tensor,
        x_hat: Tensor,
        mu: Tensor,
        logvar: Tensor,
        z: Tensor | None = None,
        *,
        step: int | None = None,
        last_layer: Tensor | None = None,
    ) -> ELBOTerms:
        """Eq. 22 and its terms; ``step`` drives the adversarial warm-up, ``last_layer`` the
        adaptive weight (the weight of the decoder's last layer; required with it)."""
        kl_g = self.kl_g(mu, logvar, z)
        kl_i = self.kl_i(logvar)
        reconstruction = self.reconstruction(x, x_hat)
        adversarial, adversarial_weight = self._adversarial(
            x_hat, self.beta3 * reconstruction, step, last_layer
        )
        total = (
            self.beta1 * kl_g
            + self.beta2 * kl_i
            + self.beta3 * reconstruction
            + self.beta4 * adversarial_weight * adversarial
        )  # eq. 22
        return ELBOTerms(total, kl_g, kl_i, reconstruction, adversarial, adversarial_weight)

    def _adversarial(
        self, x_hat: Tensor, rec_loss: Tensor, step: int | None, last_layer: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The generator's adversarial term and its extra weight (adaptive, 1, or 0 if off)."""
        if self.adaptive_weight is not None and last_layer is None:
            raise ValueError(
                "adaptive_weight needs the decoder's last layer: pass "
                "forward(..., last_layer=decoder.<last conv>.weight); got last_layer=None"
            )
        off = rec_loss.new_zeros(())
        if self.adversarial is None or not self.adversarial.generator_active(step):
            return off, off
        adversarial = self.adversarial.generator_loss(x_hat, step=step)
        if self.adaptive_weight is None or last_layer is None:
            return adversarial, torch.ones_like(off)
        return adversarial, self.adaptive_weight(rec_loss, adversarial, last_layer)

    def discriminator_loss(self, x: Tensor, x_hat: Tensor, step: int | None = None) -> Tensor:
        """:math:`\\beta_4` times eq. 23 (plus R1 if enabled, so its relative weight is
        ``r1_gamma``); ``x_hat`` is detached inside; ``step`` drives warm-up and lazy R1."""
        if self.adversarial is None:
            raise ValueError("discriminator_loss needs an adversarial term; this ELBO has beta4=0")
        return self.beta4 * self.adversarial.discriminator_loss(x, x_hat, step=step)

    def extra_repr(self) -> str:
        return (
            f"beta1={self.beta1}, beta2={self.beta2}, beta3={self.beta3}, beta4={self.beta4}, "
            f"reconstruction_reduction={self.reconstruction_reduction!r}"
        )
