"""The objectives the reference trainer can build, in one place (``--objective``).

* ``mixture`` (recommended), ``paper`` (eq. 22 as printed), ``authors-code``: the
  :class:`mixelbo.RegularizedELBO` presets; ``--beta1/2/3`` and ``--variance`` override them;
* ``vae``, ``beta-vae``: :class:`StandardELBO`, the standard KL of eq. 10 with the authors'
  baseline weights;
* ``wae-mmd``: :class:`WAEMMD`, the outside baseline of Tolstikhin et al. 2018 (WAE-MMD, the
  MMD-InfoVAE): the MMD between the batch's codes and as many prior samples (:func:`imq_mmd`).

:func:`build_objective` turns a :class:`~mixelbo_reference.config.TrainConfig` into the loss
module; the trainer, the benchmarks and the comparison all build their objectives here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mixelbo import GaussianKL, PatchGANLoss, RegularizedELBO
from mixelbo_reference.config import TrainConfig

__all__ = [
    "WAEMMD",
    "WAE_SCALES",
    "StandardELBO",
    "VAETerms",
    "WAETerms",
    "build_objective",
    "imq_mmd",
    "world_size",
]

WAE_SCALES: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
"""Scales ``s`` of the inverse multiquadric kernels, ``C = 2 d s`` (Tolstikhin et al. 2018)."""


def world_size() -> int:
    """Processes in the default ``torch.distributed`` group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class VAETerms(NamedTuple):
    """The standard (beta-)VAE objective and its unweighted terms, for logging."""

    total: Tensor
    kl: Tensor
    reconstruction: Tensor
    adversarial: Tensor


class _L1AdversarialObjective(nn.Module):
    """What the baselines share: ``beta3`` x mean L1 and ``beta4`` x the PatchGAN terms."""

    def __init__(self, adversarial: PatchGANLoss | None, beta3: float, beta4: float) -> None:
        super().__init__()
        self.beta3 = beta3
        self.beta4 = beta4 if adversarial is not None else 0.0
        self.adversarial = adversarial

    def _l1_and_adversarial(
        self, x: Tensor, x_hat: Tensor, step: int | None
    ) -> tuple[Tensor, Tensor]:
        """The unweighted mean L1 and generator term H[1, D(x_hat)] (0 without a critic)."""
        reconstruction = (x - x_hat).abs().float().mean()
        adversarial = (
            self.adversarial.generator_loss(x_hat, step=step)
            if self.adversarial is not None
            else reconstruction.new_zeros(())
        )
        return reconstruction, adversarial

    def discriminator_loss(self, x: Tensor, x_hat: Tensor, step: int | None = None) -> Tensor:
        """:math:`\\beta_4` times eq. 23; ``x_hat`` is detached inside."""
        if self.adversarial is None:
            raise ValueError("discriminator_loss needs an adversarial term; built with gan=False")
        return self.beta4 * self.adversarial.discriminator_loss(x, x_hat, step=step)


class StandardELBO(_L1AdversarialObjective):
    r"""The VAE / beta-VAE baseline with the authors' weights (eq. 10 KL + 5000 MAE).

    .. math::
        L = \beta\, \mathrm{KL}(q(z|x) \| \mathcal N(0, I)) + \beta_3\, \mathrm{MAE}(x, \hat x)
            + \beta_4 H[\mathbf 1, D(\hat x)]

    with the KL of eq. 10 summed over latent dims and averaged over the batch
    (:class:`mixelbo.GaussianKL`), :math:`\beta_3 = 5000`, :math:`\beta_4 = 100` (0 without an
    adversarial term). :math:`\beta = 1` is the standard VAE.

    Args:
        beta: KL weight.
        adversarial: the PatchGAN loss, or ``None`` for no adversarial term.
        beta3: reconstruction weight.
        beta4: adversarial weight.
    """

    def __init__(
        self,
        beta: float,
        adversarial: PatchGANLoss | None,
        beta3: float = 5000.0,
        beta4: float = 100.0,
    ) -> None:
        super().__init__(adversarial, beta3, beta4)
        self.beta = beta
        self.kl = GaussianKL(reduction="batchmean")

    def forward(
        self,
        x: Tensor,
        x_hat: Tensor,
        mu: Tensor,
        logvar: Tensor,
        z: Tensor | None = None,
        step: int | None = None,
    ) -> VAETerms:
        """The loss and its terms; ``z`` is unused by eq. 10, ``step`` drives the GAN warm-up."""
        kl = self.kl(mu, logvar)
        reconstruction, adversarial = self._l1_and_adversarial(x, x_hat, step)
        total = self.beta * kl + self.beta3 * reconstruction + self.beta4 * adversarial
        return VAETerms(total, kl, reconstruction, adversarial)


class WAETerms(NamedTuple):
    """The WAE-MMD objective and its unweighted terms, for logging."""

    total: Tensor
    mmd: Tensor
    reconstruction: Tensor
    adversarial: Tensor


def imq_mmd(x: Tensor, y: Tensor, scales: tuple[float, ...] = WAE_SCALES) -> Tensor:
    r"""Unbiased MMD^2 (the U-statistic) of two samples with inverse multiquadric kernels.

    .. math::
        k(a, b) = \sum_s \frac{C_s}{C_s + \|a - b\|^2}, \quad C_s = 2 d s, \\
        \mathrm{MMD}^2 = \frac{\sum_{i \ne j} k(x_i, x_j)}{n (n - 1)}
            + \frac{\sum_{i \ne j} k(y_i, y_j)}{m (m - 1)}
            - \frac{2}{n m} \sum_{i, j} k(x_i, y_j)

    with ``d`` the dimension; ``2 d`` is the expected squared distance of two draws of the
    prior :math:`\mathcal N(0, I)`, so the scales follow WAE (Tolstikhin et al. 2018, section
    4). Computed in float32 at least (also under autocast). Unbiased: it can be slightly negative
    when the two distributions are equal.

    Args:
        x: ``(n, d)`` samples, ``n >= 2`` (the codes).
        y: ``(m, d)`` samples, ``m >= 2`` (the prior samples).
        scales: the ``s`` of the kernel sum, each ``> 0``.

    Raises:
        ValueError: on samples that are not ``(n >= 2, d)`` with the same ``d``, or a scale
            that is not positive.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(
            "x and y must be (n >= 2, d) samples of the same dimension d; got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive numbers; got {scales}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, y = x.to(dtype), y.to(dtype)
    constants = torch.tensor(scales, dtype=dtype, device=x.device) * (2 * x.shape[1])

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        squared = (a.unsqueeze(1) - b.unsqueeze(0)).pow(2).sum(-1, keepdim=True)
        return (constants / (constants + squared)).sum(-1)

    n, m = len(x), len(y)
    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2 * k_xy.mean()


class WAEMMD(_L1AdversarialObjective):
    r"""The WAE-MMD / InfoVAE baseline (Tolstikhin et al. 2018), with the authors' L1 weight.

    .. math::
        L = \beta_3\, \mathrm{MAE}(x, \hat x) + \lambda\, \mathrm{MMD}^2(\{z_i\}, \{z'_i\})
            + \beta_4 H[\mathbf 1, D(\hat x)], \quad z'_i \sim \mathcal N(0, I)

    with :func:`imq_mmd` between the batch's sampled codes and as many fresh prior samples (drawn
    from the global RNG, so a resumed run draws the same ones), :math:`\beta_3 = 5000`,
    :math:`\beta_4 = 100` (0 without an adversarial term). Like the eq. 22 objectives it matches
    the aggregate posterior to the prior, but by a kernel two-sample distance instead of KL_G's
    Gaussian moments; there is no per-image term. Under DDP each process matches its own batch.

    Args:
        mmd_weight: :math:`\lambda`, the MMD weight.
        adversarial: the PatchGAN loss, or ``None`` for no adversarial term.
        beta3: reconstruction weight.
        beta4: adversarial weight.
        scales: the kernel scales (:data:`WAE_SCALES`).
    """

    def __init__(
        self,
        mmd_weight: float,
        adversarial: PatchGANLoss | None,
        beta3: float = 5000.0,
        beta4: float = 100.0,
        scales: tuple[float, ...] = WAE_SCALES,
    ) -> None:
        super().__init__(adversarial, beta3, beta4)
        if mmd_weight < 0:
            raise ValueError(f"mmd_weight must be >= 0; got {mmd_weight}")
        self.mmd_weight, self.scales = mmd_weight, tuple(scales)

    def forward(
        self,
        x: Tensor,
        x_hat: Tensor,
        mu: Tensor,
        logvar: Tensor,
        z: Tensor | None = None,
        step: int | None = None,
    ) -> WAETerms:
        """The loss and its terms; needs the sampled codes ``z`` (``mu``, ``logvar`` unused)."""
        if z is None:
            raise ValueError("WAEMMD needs the sampled codes z; got z=None")
        codes = z.flatten(1)
        mmd = imq_mmd(codes, torch.randn_like(codes), self.scales)
        reconstruction, adversarial = self._l1_and_adversarial(x, x_hat, step)
        total = self.mmd_weight * mmd + self.beta3 * reconstruction + self.beta4 * adversarial
        return WAETerms(total, mmd, reconstruction, adversarial)


def build_objective(config: TrainConfig, discriminator: nn.Module | None) -> nn.Module:
    """The loss module of ``config.objective``; ``discriminator`` may be a DDP/compiled wrapper.

    Under DDP (world size > 1) the mixture KL's batch moments are taken over the global batch
    (``RegularizedELBO(sync=True)``) and a batch-summed KL_I (the paper preset) is weighted by
    the world size, so the averaged gradients equal those of one process on the global batch;
    per-sample means (the standard KL of ``vae`` / ``beta-vae``, the L1 term) need neither.
    """
    adversarial = (
        PatchGANLoss(
            discriminator,
            loss=config.gan_loss,
            label_smoothing=config.label_smoothing,
            start_step=config.gan_start_step,
            discriminator_start_step=config.disc_start_step,
            r1_gamma=config.r1_gamma,
            r1_interval=config.r1_interval,
        )
        if discriminator is not None
        else None
    )
    if config.objective == "wae-mmd":
        reconstruction = {} if config.beta3 is None else {"beta3": config.beta3}
        return WAEMMD(config.mmd_weight, adversarial, **reconstruction)
    if config.objective in ("vae", "beta-vae"):
        if config.beta3 is not None:
            return StandardELBO(config.beta, adversarial, beta3=config.beta3)
        return StandardELBO(config.beta, adversarial)
    options: dict[str, Any] = {
        "adversarial": adversarial,
        "adaptive_weight": config.adaptive_weight,
    }
    overrides = {"beta1": config.beta1, "beta2": config.beta2, "beta3": config.beta3}
    overrides["variance"] = config.variance
    options["covariance"] = config.covariance
    options |= {name: value for name, value in overrides.items() if value is not None}
    if adversarial is None:
        options["beta4"] = 0.0
    world = world_size()
    if world > 1:  # KL_G's moments (eqs. 17-18) over the global batch
        options["sync"] = True
    preset = {
        "mixture": RegularizedELBO.recommended,
        "paper": RegularizedELBO.paper,
        "authors-code": RegularizedELBO.authors_code,
    }[config.objective]
    objective = preset(**options)
    if world > 1 and objective.kl_i.reduction == "sum":
        # eq. 20 sums over the global batch, but each rank sums its B / W samples and DDP
        # averages the W gradients: scale by W to get the single-process gradient exactly.
        objective.beta2 *= world
    return objective
