"""R1 gradient penalty on real data, with lazy (every-N-steps) regularization."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mixelbo import functional as F


def as_step(step: object) -> int:
    """``step`` as a Python int, or ``ValueError`` (tensors and floats are refused)."""
    if isinstance(step, bool):
        raise ValueError(f"step must be an int; got {step!r}")
    try:
        return operator.index(step)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(
            f"step must be an int (the optimisation step); got {type(step).__name__} {step!r}"
        ) from None


class R1Penalty(nn.Module):
    r"""R1 gradient penalty (Mescheder, Geiger and Nowozin 2018) for the discriminator.

    .. math:: R_1 = \frac{\gamma}{2}\, \mathbb E_{x \sim p_{data}} \lVert \nabla_x D(x) \rVert^2

    added to the discriminator's loss. It keeps the discriminator flat on real data, which
    stops the oscillation of unregularised GAN training. With ``interval = N > 1`` it is
    applied only on steps with ``step % N == 0`` and multiplied by ``N`` there ("lazy
    regularization", Karras et al. 2020, StyleGAN2), which keeps the average strength and
    saves the double backward on the other steps. See :func:`mixelbo.functional.r1_penalty`
    for how a patch map is reduced and how autocast is handled.

    Usage: before the discriminator call, check :meth:`applies` and, if it does, pass
    ``real = real.detach().requires_grad_()`` to the discriminator and then here.
    :class:`~mixelbo.PatchGANLoss` does this for you (``r1_gamma``, ``r1_interval``).

    Args:
        gamma: the weight :math:`\gamma` (0 turns the penalty off).
        interval: apply every ``interval`` steps, scaled by ``interval``.

    Raises:
        ValueError: if ``gamma < 0`` or ``interval < 1``; in :meth:`applies`, if
            ``interval > 1`` and no ``step`` is given.

    Example:
        >>> import torch
        >>> r1 = R1Penalty(gamma=1.0, interval=4)
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> r1((2 * x).sum(1), x, step=8), r1((2 * x).sum(1), x, step=9)
        (tensor(24.), tensor(0.))
    """

    def __init__(self, gamma: float = 1.0, interval: int = 1) -> None:
        super().__init__()
        if not gamma >= 0:
            raise ValueError(f"gamma must be non-negative; got {gamma!r}")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be an int >= 1; got {interval!r}")
        self.gamma, self.interval = gamma, interval

    def applies(self, step: int | None) -> bool:
        """Whether the penalty is applied at ``step`` (always when ``interval == 1``)."""
        if self.gamma == 0:
            return False
        if self.interval == 1:
            return True
        if step is None:
            raise ValueError(
                f"R1 with interval={self.interval} needs the step; pass step= explicitly"
            )
        return as_step(step) % self.interval == 0

    def forward(
        self, real_logits: Tensor | Sequence[Tensor], real: Tensor, step: int | None = None
    ) -> Tensor:
        if not self.applies(step):
            return torch.zeros((), dtype=torch.float32, device=real.device)
        return self.interval * F.r1_penalty(real_logits, real, gamma=self.gamma)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, interval={self.interval}"
