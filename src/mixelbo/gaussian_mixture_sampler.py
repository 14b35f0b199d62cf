"""Ex-post sampling from a full-covariance Gaussian mixture fitted to a VAE's encoded data."""

from __future__ import annotations

import torch
from torch import Tensor

from mixelbo import _ex_post as E
from mixelbo._fitted_sampler import FittedSampler
from mixelbo._validation import check_option


class GaussianMixtureSampler(FittedSampler):
    r"""A full-covariance Gaussian mixture fitted to encoded data by EM, to sample latents from.

    The ex-post density estimator of Ghosh et al. (2020, "From variational to deterministic
    autoencoders"), as pythae's ``GaussianMixtureSampler``, in torch: fit

    .. math::
        p(z) = \sum_{k=1}^K w_k\, \mathcal N(z \mid m_k, \Sigma_k)

    to the codes of the training data (e.g. the posterior means) and decode its draws instead
    of :math:`\mathcal N(0, I)`'s. The fit is scikit-learn's
    ``GaussianMixture(covariance_type="full")`` in float64: k-means++ seeding from a
    ``torch.Generator`` seeded with ``seed`` (refined by Lloyd's k-means with
    ``init="kmeans"``, scikit-learn's default), hard responsibilities, then EM until the mean
    log-likelihood per code changes by less than ``tol``; ``reg_covar`` is added to every
    :math:`\Sigma_k`'s diagonal. Of ``n_init`` starts the most likely one is kept; the fit is
    deterministic for a given ``seed``, codes and device.

    The fitted ``weights`` ``(K,)``, ``means`` ``(K, d)``, ``covariances`` and
    ``scale_tril`` (their Cholesky factors) ``(K, d, d)`` are buffers with the codes' dtype
    and device, beside ``converged``, ``n_iter`` and ``log_likelihood`` (the mean per code on
    the fitted data): ``state_dict`` saves them and ``load_state_dict`` restores them into a
    fresh sampler. Calling the module samples (``sampler(n)``). Spatial latents: flatten the
    codes, ``codes.flatten(1)``, and reshape the samples back (there is no ``pattern``).

    Args:
        n_components: :math:`K`.
        seed: Seed of the initialisations.
        reg_covar: Added to every covariance's diagonal (scikit-learn's default, 1e-6).
        max_iter: EM steps per start at most (scikit-learn's 100).
        tol: Convergence threshold on the change of the mean log-likelihood (1e-3).
        n_init: Starts, the most likely kept.
        init: ``"kmeans"`` (k-means++ then Lloyd's k-means) or ``"k-means++"`` (the seeds
            alone).

    Shape:
        - ``codes`` (:meth:`fit`): ``(N, d)``, ``N >= n_components``.
        - :meth:`sample`: ``(n, d)``; :meth:`log_prob`: ``(M, d) -> (M,)``.

    Raises:
        ValueError: on ``n_components``, ``max_iter`` or ``n_init`` < 1, a negative or
            non-finite ``reg_covar`` or ``tol``, a non-int ``seed`` or an unknown ``init``.

    Example:
        >>> import torch
        >>> centres = torch.tensor([[-5.0, 0.0], [5.0, 0.0]])
        >>> codes = centres[torch.arange(400) % 2] + torch.randn(400, 2)
        >>> sampler = GaussianMixtureSampler(n_components=2, seed=0).fit(codes)
        >>> sampler.converged, sampler.weights.tolist()
        (True, [0.5, 0.5])
        >>> sampler.sample(1000, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([1000, 2])
    """

    FITTED = (
        "weights",
        "means",
        "covariances",
        "scale_tril",
        "log_likelihood",
        "converged_flag",
        "iterations",
    )
    weights: Tensor
    means: Tensor
    covariances: Tensor
    scale_tril: Tensor
    log_likelihood: Tensor
    converged_flag: Tensor
    iterations: Tensor

    def __init__(
        self,
        n_components: int = 10,
        *,
        seed: int = 0,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        tol: float = 1e-3,
        n_init: int = 1,
        init: E.Init = "kmeans",
    ) -> None:
        super().__init__()
        self.n_components = E.check_int("n_components", n_components, 1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int; got {seed!r}")
        self.seed = seed
        self.reg_covar = E.check_nonnegative("reg_covar", reg_covar)
        self.max_iter = E.check_int("max_iter", max_iter, 1)
        self.tol = E.check_nonnegative("tol", tol)
        self.n_init = E.check_int("n_init", n_init, 1)
        check_option("init", init, E.INITS)
        self.init: E.Init = init

    @property
    def converged(self) -> bool:
        """Whether the kept start converged (``tol`` reached within ``max_iter`` steps)."""
        self._check_fitted()
        return bool(self.converged_flag)

    @property
    def n_iter(self) -> int:
        """EM steps of the kept start."""
        self._check_fitted()
        return int(self.iterations)

    @torch.no_grad()
    def fit(self, codes: Tensor) -> GaussianMixtureSampler:
        """Fit the mixture to ``codes`` by EM (float64 arithmetic on the codes' device).

        Args:
            codes: ``(N, d)`` encoded data, e.g. posterior means of the training images.

        Returns:
            The sampler itself, fitted (check :attr:`converged`).

        Raises:
            ValueError: If ``codes`` is not a floating ``(N, d)`` tensor with
                ``N >= n_components`` finite rows, or a covariance is not positive definite
                after adding ``reg_covar`` (only possible with ``reg_covar=0``).
        """
        x = E.check_codes(
            codes, self.n_components, f"to fit n_components={self.n_components} components"
        )
        fit = E.fit_gaussian_mixture(
            x,
            self.n_components,
            reg_covar=self.reg_covar,
            max_iter=self.max_iter,
            tol=self.tol,
            n_init=self.n_init,
            init=self.init,
            seed=self.seed,
        )
        dtype, device = codes.dtype, codes.device
        self._set_fitted(
            weights=fit.weights.to(dtype),
            means=fit.means.to(dtype),
            covariances=fit.covariances.to(dtype),
            scale_tril=fit.scale_tril.to(dtype),
            log_likelihood=torch.tensor(fit.log_likelihood, dtype=torch.float64, device=device),
            converged_flag=torch.tensor(fit.converged, device=device),
            iterations=torch.tensor(fit.n_iter, device=device),
        )
        return self

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        r"""``n`` draws of the mixture: a component :math:`k \sim \mathrm{Cat}(w)` per row,
        then :math:`z = m_k + L_k \varepsilon`, in float64.

        Args:
            n: Number of samples, ``>= 0``.
            generator: Random source; its device is where the component and normal draws are
                made, so a CPU generator gives the same samples on any device. ``None``: the
                global generator of the buffers' device.

        Returns:
            ``(n, d)`` samples with the buffers' dtype and device, in random component order.

        Raises:
            ValueError: If ``n`` is not an int ``>= 0``.
            RuntimeError: If the sampler is not fitted.
        """
        E.check_int("n", n, 0)
        self._check_fitted()
        z = E.sample_mixture(self.weights, self.means, self.scale_tril, n, generator)
        return z.to(self.means.dtype)

    def log_prob(self, z: Tensor) -> Tensor:
        """Log density of each row of ``z`` under the fitted mixture (float64 arithmetic).

        Args:
            z: ``(M, d)`` points.

        Returns:
            ``(M,)`` log densities with the buffers' dtype (their mean over the fitted codes
            is scikit-learn's ``score``).

        Raises:
            ValueError: If ``z`` is not a floating ``(M, d)`` tensor.
            RuntimeError: If the sampler is not fitted.
        """
        self._check_fitted()
        x = E.check_points("z", z, self.means.shape[1]).to(self.means.device)
        log_p, _ = E.mixture_log_prob(
            x, self.weights.double(), self.means.double(), self.scale_tril.double()
        )
        return log_p.to(self.means.dtype)

    def extra_repr(self) -> str:
        fitted = f", dims={self.means.shape[1]}" if self.fitted else ", not fitted"
        return (
            f"n_components={self.n_components}, seed={self.seed}, reg_covar={self.reg_covar!r}, "
            f"max_iter={self.max_iter}, tol={self.tol!r}, n_init={self.n_init}, "
            f"init={self.init!r}{fitted}"
        )
