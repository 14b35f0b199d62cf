"""The objectives the reference trainer can build, in one place (``--objective``).

* ``mixture`` (recommended), ``paper`` (eq. 22 as printed), ``authors-code``: the
  :class:`mixelbo.RegularizedELBO` presets; ``--beta1/2/3`` and ``--variance`` override them;
* ``vae``, ``beta-vae``: :class:`StandardELBO`, the standard KL of eq. 10 with the authors'
  baseline weights.

:func:`build_objective` turns a :class:`~mixelbo_reference.config.TrainConfig` into the loss
module; the trainer, the benchmarks and the comparison all build their objectives here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch.distributed as dist
from torch import Tensor, nn

from mixelbo import GaussianKL, PatchGANLoss, RegularizedELBO
from mixelbo_reference.config import TrainConfig

__all__ = ["StandardELBO", "VAETerms", "build_objective", "world_size"]


def world_size() -> int:
    """Processes in the default ``torch.distributed`` group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class VAETerms(NamedTuple):
    """The standard (beta-)VAE objective and its unweighted terms, for logging."""

    total: Tensor
    kl: Tensor
    reconstruction: Tensor
    adversarial: Tensor


class StandardELBO(nn.Module):
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
        super().__init__()
        self.beta, self.beta3 = beta, beta3
        self.beta4 = beta4 if adversarial is not None else 0.0
        self.kl = GaussianKL(reduction="batchmean")
        self.adversarial = adversarial

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
        reconstruction = (x - x_hat).abs().float().mean()
        adversarial = (
            self.adversarial.generator_loss(x_hat, step=step)
            if self.adversarial is not None
            else reconstruction.new_zeros(())
        )
        total = self.beta * kl + self.beta3 * reconstruction + self.beta4 * adversarial
        return VAETerms(total, kl, reconstruction, adversarial)

    def discriminator_loss(self, x: Tensor, x_hat: Tensor, step: int | None = None) -> Tensor:
        """:math:`\\beta_4` times eq. 23; ``x_hat`` is detached inside."""
        if self.adversarial is None:
            raise ValueError("discriminator_loss needs an adversarial term; built with gan=False")
        return self.beta4 * self.adversarial.discriminator_loss(x, x_hat, step=step)


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
