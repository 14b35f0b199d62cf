"""FID, KID and precision/recall against independent computations, and on real digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as torch_f

from mixelbo import GaussianMixtureSampler, GaussianSampler
from mixelbo_reference.features import FeatureNet, load_images, load_or_train_feature_net
from mixelbo_reference.mnist import mnist_datasets
from mixelbo_reference.sample_quality import (
    PRIOR_SAMPLERS,
    InceptionFeatures,
    ProjectFeatures,
    compare_sets,
    extract_features,
    fit_ex_post_samplers,
    frechet_distance,
    kernel_distance,
    latent_samples,
    precision_recall,
    to_uint8,
)


def _features(seed: int, n: int, d: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """``n`` draws of one correlated Gaussian in ``d`` dims (the same for every seed)."""
    mixing = torch.randn(d, d, generator=torch.Generator().manual_seed(100), dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return draws @ mixing / d**0.5 * scale + shift


# ---------------------------------------------------------------------------------- FID


def _fid_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """Heusel et al.'s formula with SciPy's matrix square root, in float64."""
    m1, m2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


@pytest.mark.parametrize(("shift", "scale"), [(0.0, 1.0), (0.3, 1.0), (-0.5, 2.0), (1.0, 0.5)])
def test_fid_matches_the_scipy_sqrtm_formula(shift: float, scale: float) -> None:
    real, fake = _features(0, 400, 12), _features(1, 300, 12, shift, scale)
    expected = _fid_scipy(real.numpy(), fake.numpy())
    assert frechet_distance(real, fake) == pytest.approx(expected, rel=1e-8, abs=1e-10)


def test_fid_of_two_gaussians_with_known_moments() -> None:
    # N(0, I) against N(m, 4 I) in d = 4, n large: ||m||^2 + d (1 + 4 - 2 * 2) = 1 + 4 = 5
    generator = torch.Generator().manual_seed(2)
    real = torch.randn(200_000, 4, generator=generator, dtype=torch.float64)
    fake = torch.randn(200_000, 4, generator=generator, dtype=torch.float64) * 2 + 0.5
    assert frechet_distance(real, fake) == pytest.approx(5.0, abs=0.05)


# ---------------------------------------------------------------------------------- KID


def _mmd2_unbiased(a: np.ndarray, b: np.ndarray) -> float:
    """Binkowski et al.'s unbiased MMD^2 with the kernel (x.y / d + 1)^3, by explicit sums."""
    d, m = a.shape[1], len(a)

    def kernel(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (u @ v.T / d + 1) ** 3

    k_aa, k_bb, k_ab = kernel(a, a), kernel(b, b), kernel(a, b)
    within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(within - 2 * k_ab.sum() / m**2)


def test_kid_with_whole_sets_is_the_unbiased_mmd() -> None:
    # subsets of all n images are permutations: each gives the same unbiased estimate
    real, fake = _features(3, 120, 8), _features(4, 120, 8, 0.4, 1.2)
    mean, std, used = kernel_distance(real, fake, subset_size=120, subsets=3)
    assert used == 120
    assert mean == pytest.approx(_mmd2_unbiased(real.numpy(), fake.numpy()), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_seeded() -> None:
    real, same = _features(5, 600, 8), _features(6, 600, 8)
    mean, std, _ = kernel_distance(real, same, subset_size=200, subsets=50, seed=1)
    assert abs(mean) < 2 * std + 1e-3
    assert kernel_distance(real, same, subset_size=200, subsets=50, seed=1)[0] == mean
    state = torch.get_rng_state()
    kernel_distance(real, same, subset_size=10, subsets=2)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone


def test_compare_sets_caps_the_kid_subset_at_half_the_smaller_set() -> None:
    scores = compare_sets(_features(7, 100, 6), _features(8, 60, 6))
    assert scores["kid_subset_size"] == 30 and scores["images"] == 60
    assert scores["kid_std"] > 0  # the subsets differ


# ---------------------------------------------------------------------------------- PR


def _precision_recall_by_loops(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkaanniemi et al.'s definition, one pair of points at a time."""

    def radii(points: np.ndarray) -> list[float]:
        out = []
        for i, p in enumerate(points):
            others = sorted(np.linalg.norm(p - q) for j, q in enumerate(points) if j != i)
            out.append(others[k - 1])
        return out

    def inside(queries: np.ndarray, centres: np.ndarray, radius: list[float]) -> float:
        hits = 0
        for q in queries:
            hits += any(np.linalg.norm(q - c) <= r for c, r in zip(centres, radius, strict=True))
        return hits / len(queries)

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


@pytest.mark.parametrize(("k", "shift"), [(3, 0.0), (3, 0.8), (1, 0.4), (5, 1.5)])
def test_precision_recall_match_a_brute_force_loop(k: int, shift: float) -> None:
    real, fake = _features(9, 60, 3), _features(10, 45, 3, shift, 0.7)
    expected = _precision_recall_by_loops(real.numpy(), fake.numpy(), k)
    assert precision_recall(real, fake, k=k, chunk=7) == pytest.approx(expected, abs=1e-12)


def test_precision_recall_of_identical_and_of_far_apart_sets() -> None:
    real = _features(11, 50, 4)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    # a fake set collapsed onto one real point: fully precise, no coverage
    collapsed = real[:1].repeat(50, 1)
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0 and recall <= 4 / 50  # only points at distance 0 from it


def test_metrics_reject_bad_features() -> None:
    real = _features(12, 20, 4)
    with pytest.raises(ValueError, match="same feature width"):
        frechet_distance(real, _features(13, 20, 5))
    with pytest.raises(ValueError, match=r"fake must be an \(N, d\) feature tensor"):
        frechet_distance(real, torch.zeros(20))
    with pytest.raises(ValueError, match="at least 4 feature rows"):
        precision_recall(real, real[:3])
    with pytest.raises(ValueError, match="k must be >= 1"):
        precision_recall(real, real, k=0)
    with pytest.raises(ValueError, match="finite"):
        kernel_distance(real, torch.full((20, 4), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="subset_size must be >= 2"):
        kernel_distance(real, real, subset_size=1)


def test_inception_features_need_a_local_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"feature_extractor_weights_path .* is not a file"):
        InceptionFeatures(tmp_path / "missing.pth")


def test_to_uint8_inverts_the_dataset_scaling() -> None:
    values = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(values.float() / 127.5 - 1), values)
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]


# ---------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """Features of 300 test digits and of train / blurred / pixel-shuffled training digits."""
    train, test = mnist_datasets(32)
    cache = tmp_path_factory.mktemp("features")
    loaded = load_or_train_feature_net(train, test, cache_dir=cache, steps=100, progress=False)
    assert loaded is not None
    net, info = loaded
    assert info.metric == "test accuracy" and info.score > 0.9
    count = 300
    real, other = load_images(test, count), load_images(train, count)
    blurred = torch_f.avg_pool2d(torch_f.pad(other, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    order = torch.randperm(32 * 32, generator=torch.Generator().manual_seed(0))
    shuffled = other.flatten(2)[:, :, order].reshape(other.shape)
    extractor = ProjectFeatures(net)
    return {
        name: extract_features(extractor, images.split(100))
        for name, images in [
            ("test", real),
            ("train", other),
            ("blurred", blurred),
            ("shuffled", shuffled),
        ]
    }


@pytest.mark.parametrize("degraded", ["blurred", "shuffled"])
def test_real_digits_score_far_better_than_degraded_ones(
    digits: dict[str, torch.Tensor], degraded: str
) -> None:
    # measured: train FID 1.5, KID 0.01, P/R 0.93/0.93; blurred 63, 2.4 +- 0.24, 0.39/0.003;
    # shuffled 67, 1.9, 0/0. KID's spread over subsets is about a tenth of its mean, so the
    # two KIDs are told apart by three subset deviations each (ten of the degraded one's
    # failed once in CI: 0.009 + 2.41 against 2.395).
    good = compare_sets(digits["test"], digits["train"], kid_subset_size=100)
    bad = compare_sets(digits["test"], digits[degraded], kid_subset_size=100)
    assert good["fid"] * 10 < bad["fid"]
    assert good["kid_mean"] + 3 * good["kid_std"] < bad["kid_mean"] - 3 * bad["kid_std"]
    assert good["precision"] > 0.8 and good["recall"] > 0.8
    assert bad["precision"] < good["precision"] - 0.3
    assert bad["recall"] < 0.2


def test_project_features_accept_uint8_and_clamp_decoded_images() -> None:
    net = FeatureNet(3, 16).eval()
    extractor = ProjectFeatures(net)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    scaled = images.float() / 127.5 - 1
    with torch.no_grad():
        assert torch.equal(extractor(images), net.features(scaled))
        assert torch.equal(extractor(scaled * 3), net.features((scaled * 3).clamp(-1, 1)))
    assert extractor.num_features == 128


# ------------------------------------------------------------------------ ex-post samplers


def test_fit_ex_post_samplers_fits_the_gaussian_and_the_mixture_to_the_codes() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 6, generator=generator) * 20
    codes = centres[torch.arange(2000) % 10] + torch.randn(2000, 6, generator=generator)
    samplers = fit_ex_post_samplers(codes.float(), seed=1)
    assert PRIOR_SAMPLERS == ("prior", "gaussian", "gmm") and set(samplers) == {"gaussian", "gmm"}
    gaussian, gmm = samplers["gaussian"], samplers["gmm"]
    assert isinstance(gaussian, GaussianSampler) and isinstance(gmm, GaussianMixtureSampler)
    assert gmm.n_components == 10 and gmm.seed == 1 and gmm.converged
    reference = codes.double().numpy()
    np.testing.assert_allclose(gaussian.mean.numpy(), reference.mean(0), atol=1e-5)
    np.testing.assert_allclose(
        gaussian.covariance.numpy(), np.cov(reference.T, bias=True), rtol=1e-5, atol=1e-5
    )
    # the clusters are 20 sd apart: each cluster's sample mean is one component's mean
    cluster_means = torch.stack([codes.double()[k::10].mean(0) for k in range(10)])
    distances = torch.cdist(cluster_means, gmm.means)
    assert (distances.min(1).values < 1e-3).all()
    assert sorted(distances.argmin(1).tolist()) == list(range(10))
    np.testing.assert_allclose(gmm.weights.numpy(), 0.1, atol=1e-6)
    assert len(fit_ex_post_samplers(codes[:50], n_components=3)["gmm"].weights) == 3


def test_latent_samples_from_each_sampler() -> None:
    codes = torch.randn(300, 5, dtype=torch.float64) * 4 + 10
    samplers = fit_ex_post_samplers(codes)
    prior = latent_samples("prior", {}, 40, 5, torch.Generator().manual_seed(3))
    assert torch.equal(prior, torch.randn(40, 5, generator=torch.Generator().manual_seed(3)))
    for name in ("gaussian", "gmm"):
        z = latent_samples(name, samplers, 40, 5, torch.Generator().manual_seed(3))
        assert z.shape == (40, 5) and z.dtype == torch.float32 and z.device.type == "cpu"
        expected = samplers[name].sample(40, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(z, expected.float())
        assert z.mean().item() == pytest.approx(10, abs=1.5)  # the codes', not N(0, I)'s
        # in batches from one generator: the same as one call
        generator = torch.Generator().manual_seed(4)
        batches = [latent_samples(name, samplers, 20, 5, generator) for _ in range(2)]
        again = torch.Generator().manual_seed(4)
        first = latent_samples(name, samplers, 20, 5, again)
        torch.testing.assert_close(batches[0], first)
        assert not torch.equal(batches[0], batches[1])
    as_double = latent_samples("gmm", samplers, 4, 5, torch.Generator(), dtype=torch.float64)
    assert as_double.dtype == torch.float64


def test_latent_samples_rejects_bad_arguments() -> None:
    samplers = fit_ex_post_samplers(torch.randn(100, 3))
    generator = torch.Generator()
    with pytest.raises(ValueError, match="name must be one of 'prior', 'gaussian', 'gmm'; got 'x'"):
        latent_samples("x", samplers, 4, 3, generator)
    with pytest.raises(ValueError, match="no 'gmm' sampler"):
        latent_samples("gmm", {}, 4, 3, generator)
    with pytest.raises(ValueError, match="fitted to 3-d codes; got latent_dim 8"):
        latent_samples("gaussian", samplers, 4, 8, generator)
    with pytest.raises(ValueError, match="codes must be finite"):
        fit_ex_post_samplers(torch.full((20, 3), float("nan")))
