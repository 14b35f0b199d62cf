"""Adversarial terms of eqs. 21 (generator) and 23 (discriminator) with a PatchGAN critic."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from mixelbo import functional as F
from mixelbo._validation import check_option
from mixelbo.gradient_penalty import R1Penalty, as_step
from mixelbo.patch_discriminator import PatchDiscriminator


class DiscriminatorTerms(NamedTuple):
    """The discriminator's loss and its parts, for logging."""

    total: Tensor
    """criterion + r1: what the discriminator minimises."""
    criterion: Tensor
    """Eq. 23 (or the hinge / least-squares criterion), mean over scales."""
    r1: Tensor
    """The R1 penalty as applied this step (zero when off or skipped by lazy regularization)."""


def _inactive_zero(like: Tensor) -> Tensor:
    """A float32 zero that reaches no parameter; eager ``backward()`` accepts it.

    Under ``torch.compile`` it is a plain constant (a compiled region cannot return a fresh
    tensor that requires grad): skip the step with ``generator_active``/``discriminator_active``.
    """
    zero = torch.zeros((), dtype=torch.float32, device=like.device)
    if torch.compiler.is_compiling() or not torch.is_grad_enabled():
        return zero
    return zero.requires_grad_(True)


class PatchGANLoss(nn.Module):
    r"""PatchGAN adversarial loss: owns the discriminator and both of its objectives.

    Generator (eq. 21), averaged over the logit map :math:`D(\hat x)`:

    .. math:: L_G = H[\mathbf 1, \sigma(D(\hat x))] = \mathrm{mean}\,\mathrm{softplus}(-D(\hat x))

    Discriminator (eq. 23):

    .. math:: L_D = H[\mathbf 1, \sigma(D(x))] + H[\mathbf 0, \sigma(D(\hat x))]

    computed from logits (``softplus``), never as ``log(sigmoid(.))``. ``loss="hinge"`` and
    ``loss="lsgan"`` swap in those criteria (see
    :func:`mixelbo.functional.adversarial_generator_loss`). The weight :math:`\beta_4` is
    applied by :class:`~mixelbo.RegularizedELBO`, not here. Any discriminator works: one
    that returns a list of maps (:class:`~mixelbo.MultiScaleDiscriminator`) gets the mean of
    the per-scale losses.

    Options (defaults reproduce the paper: no warm-up, no smoothing, no penalty):

    - ``start_step``: the generator's adversarial term is exactly zero, with no
      discriminator call and so no gradient at all, for ``step < start_step``
      (taming-transformers' ``disc_start``). A decoder that has learnt to reconstruct first
      is not pushed around by a random critic.
    - ``discriminator_start_step``: the discriminator trains from this step (default 0). Set
      it below ``start_step`` to warm the discriminator up before the generator sees it;
      taming starts both at ``disc_start``, so the generator meets an untrained
      discriminator, the images degrade when it switches on (taming-transformers issue 44,
      latent-diffusion issue 350). It may not exceed ``start_step`` (a frozen, random critic
      would guide the generator).
    - ``label_smoothing``: one-sided, real target :math:`1 - s` for ``"bce"``/``"lsgan"``
      (Salimans et al. 2016); not defined for ``"hinge"``.
    - ``r1_gamma``, ``r1_interval``: R1 penalty on real data with lazy regularization
      (:class:`~mixelbo.R1Penalty`), added to the discriminator's loss.

    The step is always passed explicitly (``step=``), never counted inside, so a resumed run
    continues exactly where it stopped. ``step`` is a Python int; it may be omitted when no
    option needs it.

    Args:
        discriminator: the critic; ``None`` builds ``PatchDiscriminator(in_channels)``.
        in_channels: image channels for the default discriminator (ignored if one is given).
        loss: ``"bce"`` (the paper), ``"hinge"`` or ``"lsgan"``.
        label_smoothing: one-sided smoothing :math:`s \in [0, 1)` of the real target.
        start_step: first step at which the generator gets the adversarial term.
        discriminator_start_step: first step at which the discriminator trains.
        r1_gamma: weight :math:`\gamma` of the R1 penalty (0: off).
        r1_interval: apply R1 every this many steps, scaled by it.

    Shape:
        ``real``, ``fake``: ``(B, C, H, W)``; every loss is a scalar (float32 under autocast).

    Raises:
        ValueError: on an unknown ``loss``, smoothing outside ``[0, 1)`` or with
            ``"hinge"``, negative steps, ``discriminator_start_step > start_step``, a bad R1
            option, or a missing ``step`` that an option needs.

    Example:
        >>> import torch
        >>> adversarial = PatchGANLoss()
        >>> real, fake = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
        >>> adversarial(fake).shape, adversarial.discriminator_loss(real, fake).shape
        (torch.Size([]), torch.Size([]))
        >>> warm = PatchGANLoss(start_step=1000, r1_gamma=1.0, r1_interval=16)
        >>> warm.generator_loss(fake, step=10)  # before start_step: exactly zero
        tensor(0., requires_grad=True)
        >>> warm.discriminator_terms(real, fake, step=32).r1 > 0
        tensor(True)
    """

    def __init__(
        self,
        discriminator: nn.Module | None = None,
        in_channels: int = 3,
        loss: F.Criterion = "bce",
        *,
        label_smoothing: float = 0.0,
        start_step: int = 0,
        discriminator_start_step: int = 0,
        r1_gamma: float = 0.0,
        r1_interval: int = 1,
    ) -> None:
        super().__init__()
        check_option("loss", loss, F.CRITERIA)
        F.check_label_smoothing(label_smoothing, loss)
        start_step, discriminator_start_step = (
            as_step(start_step),
            as_step(discriminator_start_step),
        )
        if start_step < 0 or discriminator_start_step < 0:
            raise ValueError(
                "start_step and discriminator_start_step must be >= 0; got "
                f"{start_step} and {discriminator_start_step}"
            )
        if discriminator_start_step > start_step:
            raise ValueError(
                "discriminator_start_step must not exceed start_step (the generator would "
                f"learn from an untrained, frozen discriminator); got {discriminator_start_step}"
                f" > {start_step}"
            )
        self.discriminator = (
            PatchDiscriminator(in_channels) if discriminator is None else discriminator
        )
        self.loss = loss
        self.label_smoothing = label_smoothing
        self.start_step = start_step
        self.discriminator_start_step = discriminator_start_step
        self.r1 = R1Penalty(r1_gamma, r1_interval)

    @staticmethod
    def _reached(step: int | None, start: int, name: str) -> bool:
        if start == 0:
            return True
        if step is None:
            raise ValueError(f"{name}={start} needs the current step; pass step= explicitly")
        return as_step(step) >= start

    def generator_active(self, step: int | None = None) -> bool:
        """Whether the generator gets the adversarial term at ``step`` (``>= start_step``)."""
        return self._reached(step, self.start_step, "start_step")

    def discriminator_active(self, step: int | None = None) -> bool:
        """Whether the discriminator trains at ``step`` (``>= discriminator_start_step``)."""
        return self._reached(step, self.discriminator_start_step, "discriminator_start_step")

    def generator_loss(self, fake: Tensor, step: int | None = None) -> Tensor:
        """Eq. 21's adversarial term for the generator (the VAE's decoder output ``fake``).

        Before ``start_step`` it is an exact zero that reaches no parameter: the
        discriminator is not called, so nothing (not even a ``NaN``) can leak through it.
        """
        if not self.generator_active(step):
            return _inactive_zero(fake)
        return F.adversarial_generator_loss(self.discriminator(fake), self.loss)

    def discriminator_terms(
        self, real: Tensor, fake: Tensor, step: int | None = None
    ) -> DiscriminatorTerms:
        """Eq. 23 plus the R1 penalty, and each part; ``fake`` is detached inside.

        Before ``discriminator_start_step`` every term is an exact zero and the
        discriminator is not called. R1 is skipped outside autograd (``torch.no_grad()``).
        """
        if not self.discriminator_active(step):
            zero = _inactive_zero(real)
            return DiscriminatorTerms(zero, zero, zero)
        with_r1 = torch.is_grad_enabled() and self.r1.applies(step)
        if with_r1:
            real = real.detach().requires_grad_(True)
        real_logits = self.discriminator(real)
        fake_logits = self.discriminator(fake.detach())
        criterion = F.adversarial_discriminator_loss(
            real_logits, fake_logits, self.loss, label_smoothing=self.label_smoothing
        )
        r1 = self.r1(real_logits, real, step) if with_r1 else criterion.new_zeros(())
        return DiscriminatorTerms(criterion + r1, criterion, r1)

    def discriminator_loss(self, real: Tensor, fake: Tensor, step: int | None = None) -> Tensor:
        """Eq. 23 (plus R1 when enabled) for the discriminator; ``fake`` is detached inside."""
        return self.discriminator_terms(real, fake, step).total

    def forward(self, fake: Tensor, step: int | None = None) -> Tensor:
        return self.generator_loss(fake, step)

    def extra_repr(self) -> str:
        return (
            f"loss={self.loss!r}, label_smoothing={self.label_smoothing}, "
            f"start_step={self.start_step}, "
            f"discriminator_start_step={self.discriminator_start_step}"
        )
