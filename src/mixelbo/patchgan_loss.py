"""Adversarial terms of eqs. 21 (generator) and 23 (discriminator) with a PatchGAN critic."""

from __future__ import annotations

from torch import Tensor, nn

from mixelbo import functional as F
from mixelbo._validation import check_option
from mixelbo.patch_discriminator import PatchDiscriminator


class PatchGANLoss(nn.Module):
    r"""PatchGAN adversarial loss: owns the discriminator and both of its objectives.

    Generator (eq. 21), averaged over the logit map :math:`D(\hat x)`:

    .. math:: L_G = H[\mathbf 1, \sigma(D(\hat x))] = \mathrm{mean}\,\mathrm{softplus}(-D(\hat x))

    Discriminator (eq. 23):

    .. math:: L_D = H[\mathbf 1, \sigma(D(x))] + H[\mathbf 0, \sigma(D(\hat x))]

    computed from logits (``softplus``), never as ``log(sigmoid(.))``. ``loss="hinge"`` and
    ``loss="lsgan"`` swap in those criteria (see
    :func:`mixelbo.functional.adversarial_generator_loss`). The weight :math:`\beta_4` is
    applied by :class:`~mixelbo.RegularizedELBO`, not here.

    Args:
        discriminator: the critic; ``None`` builds ``PatchDiscriminator(in_channels)``.
        in_channels: image channels for the default discriminator (ignored if one is given).
        loss: ``"bce"`` (the paper), ``"hinge"`` or ``"lsgan"``.

    Shape:
        ``real``, ``fake``: ``(B, C, H, W)``; every loss is a scalar (float32 under autocast).

    Raises:
        ValueError: on an unknown ``loss``.

    Example:
        >>> import torch
        >>> adversarial = PatchGANLoss()
        >>> real, fake = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
        >>> adversarial(fake).shape, adversarial.discriminator_loss(real, fake).shape
        (torch.Size([]), torch.Size([]))
    """

    def __init__(
        self,
        discriminator: nn.Module | None = None,
        in_channels: int = 3,
        loss: F.Criterion = "bce",
    ) -> None:
        super().__init__()
        check_option("loss", loss, F.CRITERIA)
        self.discriminator = discriminator or PatchDiscriminator(in_channels)
        self.loss = loss

    def generator_loss(self, fake: Tensor) -> Tensor:
        """Eq. 21's adversarial term for the generator (the VAE's decoder output ``fake``)."""
        return F.adversarial_generator_loss(self.discriminator(fake), self.loss)

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        """Eq. 23 for the discriminator; ``fake`` is detached, so no gradient reaches the VAE."""
        real_logits = self.discriminator(real)
        fake_logits = self.discriminator(fake.detach())
        return F.adversarial_discriminator_loss(real_logits, fake_logits, self.loss)

    def forward(self, fake: Tensor) -> Tensor:
        return self.generator_loss(fake)

    def extra_repr(self) -> str:
        return f"loss={self.loss!r}"
