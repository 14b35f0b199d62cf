"""Ex-post sampling from one full-covariance Gaussian fitted to a VAE's encoded data."""

from __future__ import annotations

import torch
from torch import Tensor

from mixelbo import _ex_post as E
from mixelbo._fitted_sampler import FittedSampler


class GaussianSampler(FittedSampler):
    r"""A full-covariance Gaussian fitted to encoded data, to sample latents from ex post.

    A VAE's aggregate posterior rarely matches its prior :math:`\mathcal N(0, I)`; decoding
    draws of a Gaussian fitted to the codes of the training data (Ghosh et al. 2020) often
    gives much better samples. :meth:`fit` takes the maximum-likelihood estimates

    .. math::
        m = \frac1N \sum_i x_i, \qquad
        \Sigma = \frac1N \sum_i (x_i - m)(x_i - m)^\top + \epsilon I

    (``numpy.cov(codes.T, bias=True)``; :math:`\epsilon` = ``reg_covar`` keeps :math:`\Sigma`
    invertible when latent dims are inactive), in float64, and :meth:`sample` draws
    :math:`z = m + L\varepsilon`, :math:`L L^\top = \Sigma`, :math:`\varepsilon \sim
    \mathcal N(0, I)`. It is :class:`GaussianMixtureSampler` with one component.

    The fitted ``mean`` ``(d,)``, ``covariance`` and ``scale_tril`` (the Cholesky factor)
    ``(d, d)`` are buffers with the codes' dtype and device: ``state_dict`` saves them and
    ``load_state_dict`` restores them into a fresh sampler; ``.to()`` moves them. Calling the
    module samples (``sampler(n)``). Spatial latents: flatten the codes,
    ``codes.flatten(1)``, and reshape the samples back (there is no ``pattern``).

    Args:
        reg_covar: :math:`\epsilon`, added to the covariance's diagonal (scikit-learn's
            default, 1e-6).

    Shape:
        - ``codes`` (:meth:`fit`): ``(N, d)``, ``N >= 2``.
        - :meth:`sample`: ``(n, d)``; :meth:`log_prob`: ``(M, d) -> (M,)``.

    Raises:
        ValueError: on a negative or non-finite ``reg_covar``.

    Example:
        >>> import torch
        >>> codes = torch.randn(500, 4) * 3 + 1  # e.g. the posterior means of training images
        >>> sampler = GaussianSampler().fit(codes)
        >>> sampler.sample(1000, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([1000, 4])
        >>> sampler.log_prob(codes[:3]).shape
        torch.Size([3])
    """

    FITTED = ("mean", "covariance", "scale_tril")
    mean: Tensor
    covariance: Tensor
    scale_tril: Tensor

    def __init__(self, reg_covar: float = 1e-6) -> None:
        super().__init__()
        self.reg_covar = E.check_nonnegative("reg_covar", reg_covar)

    @torch.no_grad()
    def fit(self, codes: Tensor) -> GaussianSampler:
        """Fit the mean and full covariance of ``codes`` (float64 arithmetic).

        Args:
            codes: ``(N, d)`` encoded data, e.g. posterior means of the training images.

        Returns:
            The sampler itself, fitted.

        Raises:
            ValueError: If ``codes`` is not a floating ``(N, d)`` tensor with ``N >= 2``
                finite rows, or its covariance is not positive definite after adding
                ``reg_covar`` (only possible with ``reg_covar=0``).
        """
        x = E.check_codes(codes, 2, "to estimate a covariance")
        ones = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
        _, means, covariances = E.weighted_moments(x, ones, self.reg_covar)
        factor = E.cholesky(covariances, self.reg_covar)
        self._set_fitted(
            mean=means[0].to(codes.dtype),
            covariance=covariances[0].to(codes.dtype),
            scale_tril=factor[0].to(codes.dtype),
        )
        return self

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        r"""``n`` draws of :math:`\mathcal N(m, \Sigma)`.

        Args:
            n: Number of samples, ``>= 0``.
            generator: Random source; its device is where the normal draws are made (float64),
                so a CPU generator gives the same samples on any device. ``None``: the global
                generator of the buffers' device.

        Returns:
            ``(n, d)`` samples with the buffers' dtype and device.

        Raises:
            ValueError: If ``n`` is not an int ``>= 0``.
            RuntimeError: If the sampler is not fitted.
        """
        E.check_int("n", n, 0)
        self._check_fitted()
        z = E.sample_mixture(
            self.mean.new_ones(1), self.mean[None], self.scale_tril[None], n, generator
        )
        return z.to(self.mean.dtype)

    def log_prob(self, z: Tensor) -> Tensor:
        """Log density of each row of ``z`` under the fitted Gaussian (float64 arithmetic).

        Args:
            z: ``(M, d)`` points.

        Returns:
            ``(M,)`` log densities with the buffers' dtype.

        Raises:
            ValueError: If ``z`` is not a floating ``(M, d)`` tensor.
            RuntimeError: If the sampler is not fitted.
        """
        self._check_fitted()
        x = E.check_points("z", z, self.mean.shape[0]).to(self.mean.device)
        log_p = E.component_log_prob(x, self.mean[None].double(), self.scale_tril[None].double())
        return log_p[:, 0].to(self.mean.dtype)

    def extra_repr(self) -> str:
        fitted = f", dims={self.mean.shape[0]}" if self.fitted else ", not fitted"
        return f"reg_covar={self.reg_covar!r}{fitted}"
