"""GaussianSampler and GaussianMixtureSampler against independent oracles.

NumPy's covariance, torch.distributions' MultivariateNormal and scikit-learn's GaussianMixture
fitted to the same codes; sample statistics against the fitted parameters, with tolerances of
several standard errors.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from mixelbo import GaussianMixtureSampler, GaussianSampler

pytestmark = pytest.mark.usefixtures("one_thread")

# four well-separated clusters in 3-D: different weights, means and full covariances
WEIGHTS = (0.1, 0.2, 0.3, 0.4)
CENTRES = ((-30.0, 0.0, 0.0), (30.0, 0.0, 0.0), (0.0, 30.0, 0.0), (0.0, -30.0, 15.0))
SCALES = (0.5, 1.0, 1.5, 0.8)


def _clusters(n: int = 4000, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes (n, 3) float64, labels (n,))`` of the four clusters (exactly the weights)."""
    generator = torch.Generator().manual_seed(seed)
    counts = [round(w * n) for w in WEIGHTS]
    parts, labels = [], []
    for k, count in enumerate(counts):
        mixing = torch.randn(3, 3, generator=generator, dtype=torch.float64) * SCALES[k]
        draws = torch.randn(count, 3, generator=generator, dtype=torch.float64)
        parts.append(draws @ mixing.T + torch.tensor(CENTRES[k], dtype=torch.float64))
        labels.append(torch.full((count,), k))
    order = torch.randperm(n, generator=generator)
    return torch.cat(parts)[order], torch.cat(labels)[order]


def _correlated(n: int, d: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=generator, dtype=torch.float64)
    shift = torch.randn(d, generator=generator, dtype=torch.float64) * 3
    return torch.randn(n, d, generator=generator, dtype=torch.float64) @ mixing + shift


def _nearest(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return torch.cdist(points, centres).argmin(1)


def _match(fitted_means: np.ndarray, reference_means: np.ndarray) -> np.ndarray:
    """For each reference component the index of the nearest fitted one (a permutation)."""
    order = np.linalg.norm(reference_means[:, None] - fitted_means[None], axis=2).argmin(1)
    assert sorted(order.tolist()) == list(range(len(reference_means)))
    return order


# ------------------------------------------------------------------------- GaussianSampler


def test_gaussian_sampler_fits_numpys_mean_and_covariance() -> None:
    codes = _correlated(500, 5)
    sampler = GaussianSampler().fit(codes)
    reference = codes.numpy()
    np.testing.assert_allclose(sampler.mean.numpy(), reference.mean(0), rtol=0, atol=1e-12)
    expected = np.cov(reference.T, bias=True) + 1e-6 * np.eye(5)  # ML estimate + reg_covar
    np.testing.assert_allclose(sampler.covariance.numpy(), expected, rtol=1e-12, atol=1e-12)
    factor = sampler.scale_tril.numpy()
    np.testing.assert_allclose(factor, np.linalg.cholesky(expected), rtol=1e-10, atol=1e-12)
    assert sampler.mean.dtype == torch.float64


def test_gaussian_sampler_reg_covar_floors_a_constant_dimension() -> None:
    codes = _correlated(300, 4)
    codes[:, 2] = 0.25  # an inactive latent dim: zero variance
    sampler = GaussianSampler(reg_covar=1e-4).fit(codes)
    assert sampler.covariance[2, 2].item() == pytest.approx(1e-4, rel=1e-9)
    assert torch.isfinite(sampler.log_prob(codes)).all()
    z = sampler.sample(20000, generator=torch.Generator().manual_seed(0))
    assert z[:, 2].std().item() == pytest.approx(1e-2, rel=0.03)
    with pytest.raises(ValueError, match="increase reg_covar"):
        GaussianSampler(reg_covar=0.0).fit(codes)


def test_gaussian_sampler_samples_have_the_fitted_moments() -> None:
    codes = _correlated(400, 4, seed=3)
    sampler = GaussianSampler().fit(codes)
    n = 200_000
    z = sampler.sample(n, generator=torch.Generator().manual_seed(1))
    assert z.shape == (n, 4) and z.dtype == torch.float64
    sd = sampler.covariance.diagonal().sqrt()
    assert ((z.mean(0) - sampler.mean).abs() < 5 * sd / n**0.5).all()
    # sd of a sample covariance entry: sqrt((S_ii S_jj + S_ij^2) / n)
    cov = sampler.covariance
    se = ((cov.diagonal()[:, None] * cov.diagonal()[None] + cov.square()) / n).sqrt()
    sample_cov = torch.from_numpy(np.cov(z.numpy().T, bias=True))
    assert ((sample_cov - cov).abs() < 5 * se).all()


def test_gaussian_sampler_log_prob_is_torch_distributions() -> None:
    codes = _correlated(300, 6, seed=4)
    sampler = GaussianSampler().fit(codes)
    reference = torch.distributions.MultivariateNormal(
        torch.from_numpy(codes.numpy().mean(0)),
        covariance_matrix=torch.from_numpy(np.cov(codes.numpy().T, bias=True) + 1e-6 * np.eye(6)),
    )
    points = torch.randn(50, 6, dtype=torch.float64) * 4
    torch.testing.assert_close(sampler.log_prob(points), reference.log_prob(points))


def test_gaussian_sampler_keeps_the_codes_dtype_and_float32_matches_float64() -> None:
    codes = _correlated(300, 3)
    single = GaussianSampler().fit(codes.float())
    double = GaussianSampler().fit(codes)
    assert single.mean.dtype == torch.float32
    generator = torch.Generator().manual_seed(0)
    z = single.sample(10, generator=generator)
    assert z.dtype == torch.float32 and single.log_prob(z).dtype == torch.float32
    z64 = double.sample(10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.double(), z64, rtol=1e-5, atol=1e-5)


def test_one_component_mixture_is_the_gaussian_sampler() -> None:
    codes = _correlated(300, 4, seed=5)
    gaussian = GaussianSampler().fit(codes)
    mixture = GaussianMixtureSampler(n_components=1).fit(codes)
    torch.testing.assert_close(mixture.means[0], gaussian.mean)
    torch.testing.assert_close(mixture.covariances[0], gaussian.covariance)
    draws = [s.sample(100, generator=torch.Generator().manual_seed(2)) for s in (gaussian, mixture)]
    torch.testing.assert_close(draws[0], draws[1])


# ------------------------------------------------------------------ GaussianMixtureSampler


@pytest.mark.parametrize("init", ["kmeans", "k-means++"])
def test_mixture_matches_sklearn_on_separated_clusters(init: str) -> None:
    codes, _ = _clusters()
    sampler = GaussianMixtureSampler(n_components=4, seed=0, init=init).fit(codes)  # type: ignore[arg-type]
    reference = GaussianMixture(4, covariance_type="full", random_state=0).fit(codes.numpy())
    assert sampler.converged and reference.converged_
    order = _match(sampler.means.numpy(), reference.means_)
    np.testing.assert_allclose(sampler.weights.numpy()[order], reference.weights_, atol=1e-4)
    np.testing.assert_allclose(sampler.means.numpy()[order], reference.means_, atol=1e-3)
    np.testing.assert_allclose(
        sampler.covariances.numpy()[order], reference.covariances_, atol=1e-3
    )
    log_p = sampler.log_prob(codes)
    assert log_p.mean().item() == pytest.approx(reference.score(codes.numpy()), abs=1e-4)
    # per point, against sklearn's score_samples under sklearn's own parameters
    np.testing.assert_allclose(log_p.numpy(), reference.score_samples(codes.numpy()), atol=1e-3)
    assert sampler.log_likelihood.item() == pytest.approx(log_p.mean().item(), abs=1e-9)
    # and the truth: weights within the clusters' exact proportions
    np.testing.assert_allclose(np.sort(sampler.weights.numpy()), WEIGHTS, atol=1e-3)


def test_mixture_log_prob_is_the_mixture_of_multivariate_normals() -> None:
    codes, _ = _clusters(n=1000)
    sampler = GaussianMixtureSampler(n_components=4).fit(codes)
    components = torch.distributions.MultivariateNormal(
        sampler.means, covariance_matrix=sampler.covariances
    )
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=sampler.weights), components
    )
    points = torch.randn(200, 3, dtype=torch.float64) * 10
    torch.testing.assert_close(sampler.log_prob(points), reference.log_prob(points))


def test_mixture_samples_have_the_fitted_per_component_statistics() -> None:
    codes, _ = _clusters()
    sampler = GaussianMixtureSampler(n_components=4).fit(codes)
    n = 200_000
    z = sampler.sample(n, generator=torch.Generator().manual_seed(3))
    assert z.shape == (n, 3)
    # the clusters are > 12 sd apart: the nearest fitted mean is the component drawn from
    owner = _nearest(z, sampler.means)
    for k in range(4):
        weight = sampler.weights[k].item()
        rows = z[owner == k]
        share = len(rows) / n
        assert abs(share - weight) < 5 * (weight * (1 - weight) / n) ** 0.5
        cov = sampler.covariances[k]
        sd = cov.diagonal().sqrt()
        assert ((rows.mean(0) - sampler.means[k]).abs() < 5 * sd / len(rows) ** 0.5).all()
        se = ((cov.diagonal()[:, None] * cov.diagonal()[None] + cov.square()) / len(rows)).sqrt()
        sample_cov = torch.from_numpy(np.cov(rows.numpy().T, bias=True))
        assert ((sample_cov - cov).abs() < 5 * se).all()


def test_mixture_fit_and_samples_are_seeded() -> None:
    codes, _ = _clusters(n=1200)
    codes = codes + 2 * torch.randn(codes.shape, dtype=torch.float64)  # overlapping clusters
    first = GaussianMixtureSampler(n_components=6, seed=3).fit(codes)
    second = GaussianMixtureSampler(n_components=6, seed=3).fit(codes)
    for name in ("weights", "means", "covariances"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    draw = first.sample(50, generator=torch.Generator().manual_seed(7))
    assert torch.equal(draw, second.sample(50, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(draw, first.sample(50, generator=torch.Generator().manual_seed(8)))
    other = GaussianMixtureSampler(n_components=6, seed=4).fit(codes)
    assert not torch.equal(first.means, other.means)


def test_more_starts_keep_the_most_likely_one() -> None:
    codes, _ = _clusters(n=1200)
    noise = torch.randn(
        codes.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    codes = codes + 2 * noise
    # two EM steps from bare k-means++ seeds: the starts end at different likelihoods
    options = {"n_components": 6, "seed": 0, "init": "k-means++", "max_iter": 2}
    one = GaussianMixtureSampler(**options).fit(codes)  # type: ignore[arg-type]
    several = GaussianMixtureSampler(n_init=4, **options).fit(codes)  # type: ignore[arg-type]
    # the first of the four starts is the single one (same generator state)
    assert several.log_likelihood.item() >= one.log_likelihood.item()
    assert several.log_likelihood.item() == pytest.approx(several.log_prob(codes).mean().item())


def test_mixture_reports_convergence() -> None:
    codes, _ = _clusters(n=1000)
    codes = codes + 3 * torch.randn(codes.shape, dtype=torch.float64)
    stopped = GaussianMixtureSampler(n_components=4, max_iter=1, tol=0.0).fit(codes)
    assert not stopped.converged and stopped.n_iter == 1
    done = GaussianMixtureSampler(n_components=4).fit(codes)
    assert done.converged and 1 < done.n_iter <= 100


def test_mixture_keeps_the_codes_dtype() -> None:
    codes, _ = _clusters(n=1000)
    sampler = GaussianMixtureSampler(n_components=4).fit(codes.float())
    for name in ("weights", "means", "covariances", "scale_tril"):
        assert getattr(sampler, name).dtype == torch.float32
    z = sampler.sample(8, generator=torch.Generator().manual_seed(0))
    assert z.dtype == torch.float32 and sampler(8).shape == (8, 3)  # calling samples
    assert sampler.log_prob(z).dtype == torch.float32
    assert sampler.sample(0).shape == (0, 3)


@pytest.mark.parametrize("make", [GaussianSampler, lambda: GaussianMixtureSampler(3, seed=1)])
def test_state_dict_round_trip(make: Callable[[], Any]) -> None:
    codes, _ = _clusters(n=600)
    fitted = make().fit(codes)
    buffer = io.BytesIO()
    torch.save(fitted.state_dict(), buffer)
    buffer.seek(0)
    fresh = make()
    assert not fresh.fitted
    fresh.load_state_dict(torch.load(buffer))
    assert fresh.fitted
    for name, value in fitted.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    generator = torch.Generator()
    torch.testing.assert_close(
        fresh.sample(20, generator=generator.manual_seed(0)),
        fitted.sample(20, generator=generator.manual_seed(0)),
    )
    torch.testing.assert_close(fresh.log_prob(codes[:20]), fitted.log_prob(codes[:20]))
    if isinstance(fitted, GaussianMixtureSampler):
        assert (fresh.converged, fresh.n_iter) == (fitted.converged, fitted.n_iter)


@pytest.mark.cuda
def test_a_cpu_generator_gives_the_same_samples_on_cuda() -> None:
    codes, _ = _clusters(n=1000)
    cpu = GaussianMixtureSampler(n_components=4).fit(codes)
    gpu = GaussianMixtureSampler(n_components=4).fit(codes.cuda())
    torch.testing.assert_close(gpu.means.cpu(), cpu.means)
    z = gpu.sample(100, generator=torch.Generator().manual_seed(0))
    assert z.device.type == "cuda"
    torch.testing.assert_close(z.cpu(), cpu.sample(100, generator=torch.Generator().manual_seed(0)))
    assert gpu.sample(10).device.type == "cuda"


# ---------------------------------------------------------------------------- errors


def _raises(call: Callable[[], Any], *fragments: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"n_components": 0}, ("n_components", "0")),
        ({"n_components": 2.5}, ("n_components", "2.5")),
        ({"seed": None}, ("seed", "None")),
        ({"reg_covar": -1e-3}, ("reg_covar", "-0.001")),
        ({"reg_covar": float("nan")}, ("reg_covar", "nan")),
        ({"max_iter": 0}, ("max_iter", "0")),
        ({"tol": -1.0}, ("tol", "-1.0")),
        ({"n_init": 0}, ("n_init", "0")),
        ({"init": "random"}, ("init", "'random'")),
    ],
)
def test_mixture_rejects_bad_options(kwargs: dict[str, Any], fragments: tuple[str, ...]) -> None:
    _raises(lambda: GaussianMixtureSampler(**kwargs), *fragments)


def test_bad_codes_and_arguments() -> None:
    gaussian, mixture = GaussianSampler(), GaussianMixtureSampler(n_components=5)
    for sampler in (gaussian, mixture):
        _raises(lambda s=sampler: s.fit(torch.randn(10)), "codes", "(N, d)", "(10,)")
        _raises(lambda s=sampler: s.fit(torch.randn(10, 2, 2)), "codes", "(10, 2, 2)")
        _raises(lambda s=sampler: s.fit(torch.zeros(10, 2, dtype=torch.long)), "codes")
        _raises(lambda s=sampler: s.fit(np.zeros((10, 2))), "codes", "ndarray")
        bad = torch.randn(10, 2)
        bad[3, 1] = float("nan")
        _raises(lambda s=sampler, b=bad: s.fit(b), "codes must be finite", "1 NaN")
    _raises(lambda: gaussian.fit(torch.randn(1, 3)), "at least 2 rows", "got 1")
    _raises(lambda: mixture.fit(torch.randn(4, 3)), "n_components=5", "got 4")
    _raises(lambda: GaussianSampler(reg_covar=-1.0), "reg_covar", "-1.0")
    gaussian.fit(torch.randn(10, 3))
    _raises(lambda: gaussian.sample(-1), "n", "-1")
    _raises(lambda: gaussian.sample(2.0), "n", "2.0")  # type: ignore[arg-type]
    _raises(lambda: gaussian.log_prob(torch.randn(4, 2)), "z", "(M, 3)", "(4, 2)")


@pytest.mark.parametrize("make", [GaussianSampler, GaussianMixtureSampler])
def test_sampling_before_fit_is_a_clear_error(make: Callable[[], Any]) -> None:
    sampler = make()
    for call in (lambda: sampler.sample(4), lambda: sampler.log_prob(torch.randn(4, 2))):
        with pytest.raises(RuntimeError, match=r"not fitted yet: call \.fit\(codes\)"):
            call()
    assert "not fitted" in repr(sampler)
