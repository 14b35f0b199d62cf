"""The adaptive adversarial weight of Esser et al. (2021), computed safely in fp32."""

from __future__ import annotations

from torch import Tensor, nn

from mixelbo import functional as F


class AdaptiveAdversarialWeight(nn.Module):
    r"""Balance the adversarial term against reconstruction at the decoder's last layer.

    .. math::
        \lambda = \mathrm{clamp}\left(\frac{\lVert \nabla_{G_L} \mathcal L_{rec} \rVert}
            {\lVert \nabla_{G_L} \mathcal L_{adv} \rVert + \delta}, 0, \lambda_{max}\right)

    (Esser, Rombach and Ommer 2021; taming-transformers, latent-diffusion and Stability's
    generative-models use it with :math:`\delta = 10^{-4}`, :math:`\lambda_{max} = 10^4`).
    The loss to minimise is then :math:`\mathcal L_{rec} + w\,\lambda\,\mathcal L_{adv}`
    with a fixed factor :math:`w` (taming's ``disc_weight``; mixelbo's ``beta4``).

    The reference implementations take the norms of the raw gradients and clamp the ratio;
    with a float16 last layer the sum of squares overflows to ``inf`` and ``inf / inf`` is a
    ``NaN`` that ``clamp`` passes on, so one bad step poisons the decoder. Here the gradients
    are upcast to float32 before the norms, and a non-finite ratio gives ``fallback``
    (default 0: that step trains without the adversarial term). See
    :func:`mixelbo.functional.adaptive_adversarial_weight`.

    Args:
        delta: added to the denominator.
        max_weight: upper clamp of :math:`\lambda`.
        fallback: :math:`\lambda` when the ratio is not finite, or outside autograd
            (``torch.no_grad()``), where there is no gradient to measure.

    Shape:
        ``rec_loss``, ``adv_loss``: scalars; ``last_layer``: any weight tensor. Returns a
        detached float32 scalar.

    Raises:
        ValueError: as :func:`mixelbo.functional.adaptive_adversarial_weight`.

    Example:
        >>> import torch
        >>> final = torch.nn.Conv2d(4, 3, 3, padding=1)
        >>> x_hat = final(torch.randn(2, 4, 8, 8))
        >>> rec, adv = x_hat.abs().mean(), -x_hat.mean()
        >>> weight = AdaptiveAdversarialWeight()(rec, adv, final.weight)
        >>> bool(weight.isfinite()), weight.requires_grad
        (True, False)
    """

    def __init__(self, delta: float = 1e-4, max_weight: float = 1e4, fallback: float = 0.0):
        super().__init__()
        F.check_adaptive_weight_options(delta, max_weight, fallback)
        self.delta, self.max_weight, self.fallback = delta, max_weight, fallback

    def forward(self, rec_loss: Tensor, adv_loss: Tensor, last_layer: Tensor) -> Tensor:
        return F.adaptive_adversarial_weight(
            rec_loss,
            adv_loss,
            last_layer,
            delta=self.delta,
            max_weight=self.max_weight,
            fallback=self.fallback,
        )

    def extra_repr(self) -> str:
        return f"delta={self.delta}, max_weight={self.max_weight}, fallback={self.fallback}"
