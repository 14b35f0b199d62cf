r"""KL_G with the full aggregate covariance: ``MixtureKL(covariance="full")``, in closed form.

Eq. 19 compares the aggregate posterior with :math:`\mathcal N(0, I)` dim by dim, so it makes
every marginal :math:`\mathcal N(0, 1)` but leaves the correlations between latent dims free.
The full-covariance KL compares the Gaussian :math:`\mathcal N(m, S)` with the aggregate's mean
and full covariance instead,

.. math::
    \mathrm{KL}\big(\mathcal N(m, S) \,\|\, \mathcal N(0, I)\big)
        = \tfrac12\left(\operatorname{tr} S + m^\top m - d - \log\det S\right),

with :math:`m` the batch mean of :math:`\mu` (eq. 17) and :math:`S` the estimator's covariance
(population, 1/N, from centred deviations :math:`D`; :func:`mixelbo.functional.batch_covariance`):
``"means"`` :math:`S = D_\mu^\top D_\mu / N`, ``"mixture"`` :math:`S = D_\mu^\top D_\mu / N +
\operatorname{diag}(\overline{\sigma^2})` (the exact covariance of the batch's mixture),
``"sample"`` :math:`S = D_z^\top D_z / N` with :math:`D_z = z - m` (eq. 18's deviations). A
diagonal :math:`S` gives eq. 19 exactly.

Numerics. Whatever the input dtype, :math:`D`, :math:`S` and its Cholesky factor :math:`L` are
formed in float64, and :math:`\log\det S = 2\sum_j \log L_{jj}`: in float32 the Gram matrix's
rounding (about :math:`N\epsilon_{32}\lVert D\rVert^2`) exceeds the small eigenvalues of an
ill-conditioned :math:`S` (on MNIST they span 0.024 to 5.26; a test uses 1e-6 to 1e2), which
makes a float32 log-determinant wrong or its Cholesky fail. No jitter (floor) is added to
:math:`S`: it would change the loss silently. Where :math:`S` is singular the KL is
:math:`+\infty`, and a :class:`ValueError` is raised instead, never ``inf`` or ``NaN``: up front
where the estimator makes :math:`S` singular by construction (``"means"``/``"sample"`` with
:math:`N \le d`: rank at most :math:`N - 1`), and where the float64 Cholesky factorisation
breaks down (a pivot :math:`L_{jj}^2 \le d\,\epsilon_{64} S_{jj}`, the documented floor of
:func:`cholesky_factor`: :math:`S` singular to float64 precision, e.g. a latent dim without
spread, or linearly dependent dims). For
``"mixture"`` :math:`S` is positive definite whenever :math:`\sigma > 0`; with :math:`N \le d`
its low-rank path (below) stays exact as :math:`\sigma^2 \to 0`. Checking the factorisation
reads one integer from the device (a host synchronisation on CUDA, a graph break under
``torch.compile``). The value is returned in the accumulation dtype (float32 for float32 and
half-precision inputs), the gradients in the inputs' dtypes.

Closed-form backward. With :math:`A = I - S^{-1}` (so :math:`\partial\mathrm{KL}/\partial S =
A/2`, symmetric), :math:`\partial\mathrm{KL}/\partial m = m`, :math:`\partial m/\partial\mu_i =
1/N`, :math:`\sum_i D_i = 0` and the upstream gradient :math:`g`:

- ``"means"``: :math:`\partial\mathrm{KL}/\partial\mu_i = \frac gN\,(m + A D_i)`;
- ``"mixture"``: the same for :math:`\mu`, and :math:`\partial\mathrm{KL}/\partial\ell_{ij} =
  \frac g{2N} A_{jj}\, e^{\ell_{ij}}` for :math:`\ell = \log\sigma^2`;
- ``"sample"``: :math:`\partial\mathrm{KL}/\partial z_i = \frac gN A D_i` and
  :math:`\partial\mathrm{KL}/\partial\mu_i = \frac gN\,(m - A\,\overline{D})`,
  :math:`\overline{D} = \bar z - m`.

:math:`S^{-1}` comes from :math:`L` (``cholesky_inverse``, :math:`2d^3/3` flops; on CPU
faster than ``cholesky_solve`` with the :math:`N` right-hand sides, 2x at :math:`d = 32`) and
:math:`D A = D - D S^{-1}` from one product (:math:`2Nd^2`); autograd through the plain
expression differentiates the Gram matrix and the factorisation instead (two more
:math:`Nd^2` products and a :math:`d^3` backward of the factorisation).

Low rank. For ``"mixture"`` with :math:`N \le d` (where the Cholesky of :math:`S` would cost
:math:`d^3/3` for a matrix of rank :math:`N - 1` plus a diagonal) the KL and its gradient
come from an :math:`(N - 1) \times (N - 1)` capacitance matrix (matrix determinant lemma,
push-through and Woodbury identities; :func:`_low_rank_forward`), :math:`O(N^2 d)` in all:
at :math:`(N, d) = (64, 4096)` milliseconds instead of seconds. It is also the more accurate
path there: its factorisation is as well conditioned as the data whatever the size of
:math:`\sigma^2`, where the :math:`d \times d` one loses digits (and fails) as
:math:`\sigma^2 \to 0`. Costs: docs/benchmarks.md.

No fused (Inductor) kernels: the work is a Gram matrix, a Cholesky factorisation and triangular
solves, which Inductor hands to BLAS/LAPACK (cuBLAS/cuSOLVER) as they are; the few elementwise
ops it could fuse are :math:`O(Nd)` beside :math:`O(Nd^2 + d^3)`. CUDA runs the same code.
Under ``torch.compile`` :mod:`mixelbo.functional` traces its reference expression instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mixelbo._validation import accumulation_dtype

__all__ = ["check_full_rank", "cholesky_factor", "kl_from_cholesky", "mixture_kl_full"]

WORK_DTYPE = torch.float64


def check_full_rank(variance: str, samples: int, dims: int) -> None:
    """Raise ``ValueError`` where ``variance``'s covariance of ``samples`` points in ``dims``
    dims is singular by construction: ``"means"`` and ``"sample"`` with ``samples <= dims``
    (the centred deviations span at most ``samples - 1`` dims)."""
    if variance != "mixture" and samples <= dims:
        raise ValueError(
            f"covariance='full' with variance={variance!r} needs more samples than latent dims "
            f"(the covariance of N samples has rank at most N - 1, so it is singular and the KL "
            f"infinite); got N={samples} samples <= d={dims} dims: use more samples (a larger "
            "batch, sync=True across ranks, or pattern= for spatial latents), "
            "variance='mixture', or covariance='diagonal'"
        )


def cholesky_factor(
    matrix: Tensor, samples: int, variance: str, diagonal: Tensor | None = None
) -> Tensor:
    r"""The lower Cholesky factor of ``matrix`` (float64: ``S``, or the capacitance matrix of
    the low-rank path), or ``ValueError`` where it does not exist (singular or indefinite to
    float64 precision, or not finite); ``diagonal`` is ``diag(S)`` for the message (default:
    ``matrix``'s).

    For ``S`` itself (``diagonal=None``) a pivot at float64 rounding level fails too:
    :math:`L_{jj}^2 \le d\,\epsilon_{64} S_{jj}`, i.e. dim ``j`` is, to float64 precision, a
    linear combination of the dims before it (where exact arithmetic has a zero pivot, rounding
    leaves a tiny one of either sign, and a positive one would give a huge, meaningless KL).
    The capacitance matrix of the low-rank path has every pivot :math:`\ge 1` by construction.
    """
    chol: Tensor
    chol, info = torch.linalg.cholesky_ex(matrix)
    if diagonal is None:  # pivots at rounding level count as a breakdown (1-based index)
        unexplained = chol.diagonal().square() / matrix.diagonal()
        rounding = unexplained <= matrix.shape[-1] * torch.finfo(matrix.dtype).eps
        first = torch.where(rounding.any(), rounding.int().argmax() + 1, 0)
        info = torch.where(info > 0, info, first)
    failed = int(info.item())  # one integer read from the device
    if failed:
        dims = matrix.shape[-1] if diagonal is None else diagonal.shape[0]
        if not bool(torch.isfinite(matrix).all()):
            raise ValueError(
                f"covariance='full': the aggregate covariance ({dims} x {dims}, from N={samples} "
                "samples) has non-finite entries; check mu/logvar/z for inf or NaN"
            )
        diagonal = matrix.diagonal() if diagonal is None else diagonal
        raise ValueError(
            f"covariance='full' with variance={variance!r}: the aggregate covariance S "
            f"({dims} x {dims}, from N={samples} samples) is singular to float64 precision "
            f"(its Cholesky factorisation breaks down at pivot {failed}; diag(S) spans "
            f"{float(diagonal.min()):.3g} to {float(diagonal.max()):.3g}), so "
            "KL(N(m, S) || N(0, I)) is infinite: a latent dim with no spread, or linearly "
            "dependent dims; use more samples, variance='mixture', or covariance='diagonal'"
        )
    return chol


def kl_from_cholesky(cov: Tensor, chol: Tensor, mean: Tensor) -> Tensor:
    """``0.5 (tr S + m.m - d - log det S)`` from ``S``, its Cholesky factor and ``m``."""
    trace = cov.diagonal().sum()
    log_det = 2.0 * chol.diagonal().log().sum()
    squared_mean = mean.dot(mean)
    kl: Tensor = 0.5 * (trace + squared_mean - cov.shape[-1] - log_det)  # eq. 19, full S
    return kl


def _dense_forward(
    deviation: Tensor, mean: Tensor, variances: Tensor | None, variance: str
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The KL from ``S`` itself (``d x d``) and what the backward reads: ``(L,)``."""
    samples = deviation.shape[0]
    cov = torch.mm(deviation.T, deviation).div_(samples)
    if variances is not None:
        cov.diagonal().add_(variances.mean(0))
    chol = cholesky_factor(cov, samples, variance)
    return kl_from_cholesky(cov, chol, mean), (chol,)


def _centring_reflector(samples: int, like: Tensor) -> Tensor:
    """The unit vector ``w`` of the Householder reflection ``H = I - 2 w w^T`` that maps
    ``1/sqrt(N)`` to ``e_1``: for centred deviations (``1^T D = 0``) the first row of ``H D``
    vanishes and the other ``N - 1`` rows ``E`` carry all of ``D^T D = E^T E``."""
    direction = like.new_full((samples,), samples**-0.5)
    direction[0] -= 1.0
    unit: Tensor = direction / direction.norm()
    return unit


def _reflect(reflector: Tensor, rows: Tensor) -> Tensor:
    """``H rows`` for ``H = I - 2 w w^T`` (its own inverse), in ``O(N d)``."""
    return rows - torch.outer(2.0 * reflector, reflector @ rows)


def _low_rank_forward(
    deviation: Tensor, mean: Tensor, variances: Tensor
) -> tuple[Tensor, tuple[Tensor, ...]]:
    r"""The ``"mixture"`` KL for ``N <= d`` from an ``(N - 1) x (N - 1)`` capacitance matrix,
    never forming ``S``. With :math:`V = \operatorname{diag}(\overline{\sigma^2})` and the
    ``N - 1`` reflected rows :math:`E` of :func:`_centring_reflector` (:math:`D^\top D =
    E^\top E`; dropping the centring's null direction keeps :math:`K` as well conditioned as
    the data, however small :math:`V`), :math:`K = I + E V^{-1} E^\top / N`,
    :math:`\log\det S = \log\det V + \log\det K` (the matrix determinant lemma) and
    :math:`\operatorname{tr} S = \operatorname{tr} V + \lVert D\rVert^2 / N`. Returns the KL
    and ``(C, E V^-1, w)``, ``C`` the Cholesky factor of ``K``."""
    samples, dims = deviation.shape
    mean_variance = variances.mean(0)
    reflector = _centring_reflector(samples, deviation)
    reduced = _reflect(reflector, deviation)[1:]  # E, (N - 1, d)
    scaled = reduced / mean_variance  # E V^-1
    capacitance = torch.mm(scaled, reduced.T).div_(samples)
    capacitance.diagonal().add_(1.0)
    chol = cholesky_factor(capacitance, samples, "mixture", diagonal=mean_variance)
    trace = mean_variance.sum() + deviation.square().sum() / samples
    log_det = mean_variance.log().sum() + 2.0 * chol.diagonal().log().sum()
    squared_mean = mean.dot(mean)
    kl = 0.5 * (trace + squared_mean - dims - log_det)  # eq. 19, full S
    return kl, (chol, scaled, reflector)


def _slopes(
    deviation: Tensor, variances: Tensor | None, factors: tuple[Tensor, ...]
) -> tuple[Tensor, Tensor | None]:
    """``(D A, diag A)`` for ``A = I - S^-1`` (``diag A`` for ``"mixture"`` only), from the
    forward's factors: ``(L,)`` of ``S``, or the low-rank path's ``(C, E V^-1, w)``."""
    if len(factors) == 1:  # dense: S^-1 from L (2d^3/3), then D - D S^-1 in one product
        (chol,) = factors
        precision = torch.cholesky_inverse(chol)
        slope_deviation = torch.addmm(deviation, deviation, precision, alpha=-1.0)
        if variances is None:
            return slope_deviation, None
        return slope_deviation, 1.0 - precision.diagonal()
    # low rank: E S^-1 = K^-1 E V^-1 (push-through identity), D S^-1 = H [0; E S^-1], and
    # diag S^-1 = 1/v - colsum(Y^2) / N with Y = C^-1 E V^-1 (Woodbury)
    chol, scaled, reflector = factors
    assert variances is not None
    reduced_precision = torch.cholesky_solve(scaled, chol)
    padded = torch.cat([reduced_precision.new_zeros(1, scaled.shape[1]), reduced_precision])
    slope_deviation = deviation - _reflect(reflector, padded)
    whitened = torch.linalg.solve_triangular(chol, scaled, upper=False)
    samples = deviation.shape[0]
    precision_diagonal = variances.mean(0).reciprocal() - whitened.square().sum(0) / samples
    return slope_deviation, 1.0 - precision_diagonal


class _FullCovarianceKL(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, mu: Tensor, logvar: Tensor | None, z: Tensor | None, variance: str
    ) -> Tensor:
        x = mu.to(WORK_DTYPE)
        samples, dims = x.shape
        mean = x.mean(0)  # eq. 17
        data = z.to(WORK_DTYPE) if variance == "sample" and z is not None else x
        deviation = data - mean
        variances = None
        if variance == "mixture":
            assert logvar is not None
            variances = logvar.to(WORK_DTYPE).exp()
        if variances is not None and samples <= dims:
            kl, factors = _low_rank_forward(deviation, mean, variances)
        else:
            kl, factors = _dense_forward(deviation, mean, variances, variance)
        ctx.variance = variance
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (mu, logvar, z))
        ctx.save_for_backward(deviation, mean, variances, *factors)
        return kl.to(accumulation_dtype(mu))

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        deviation, mean, variances, *factors = ctx.saved_tensors
        mu_dtype, logvar_dtype, z_dtype = ctx.dtypes
        g_n = grad.to(WORK_DTYPE) / deviation.shape[0]
        slope_deviation, slope_diagonal = _slopes(deviation, variances, tuple(factors))
        if ctx.variance == "sample":
            grad_mean = g_n * (mean - slope_deviation.mean(0))  # g/N (m - A (zbar - m))
            grad_mu = grad_mean.to(mu_dtype).expand_as(deviation)
            return grad_mu, None, (g_n * slope_deviation).to(z_dtype), None
        grad_mu = (g_n * (slope_deviation + mean)).to(mu_dtype)  # g/N (m + A D_i)
        if slope_diagonal is None:
            return grad_mu, None, None, None
        grad_logvar = (0.5 * g_n) * slope_diagonal * variances  # g/(2N) A_jj sigma^2_ij
        return grad_mu, grad_logvar.to(logvar_dtype), None, None


def mixture_kl_full(mu: Tensor, logvar: Tensor | None, z: Tensor | None, variance: str) -> Tensor:
    """The full-covariance KL from validated ``(N, d)`` matrices, with the closed-form
    gradient; a scalar in the accumulation dtype of ``mu``.

    Raises:
        ValueError: where the covariance is singular (see the module docstring).
    """
    check_full_rank(variance, mu.shape[0], mu.shape[1])
    logvar = logvar if variance == "mixture" else None
    z = z if variance == "sample" else None
    out: Tensor = _FullCovarianceKL.apply(mu, logvar, z, variance)
    return out
