"""The WAE-MMD baseline (objectives.imq_mmd, WAEMMD) and the config fields of the study."""

from __future__ import annotations

import itertools

import pytest
import torch

from mixelbo_reference.config import HeldOut, TrainConfig
from mixelbo_reference.features import load_images
from mixelbo_reference.objectives import WAE_SCALES, WAEMMD, build_objective, imq_mmd


def _mmd_double_loop(x: torch.Tensor, y: torch.Tensor) -> float:
    """The U-statistic MMD^2 of the WAE paper, one pair at a time in float64."""
    x, y = x.double().tolist(), y.double().tolist()
    d = len(x[0])

    def k(a: list[float], b: list[float]) -> float:
        squared = sum((ai - bi) ** 2 for ai, bi in zip(a, b, strict=True))
        return sum(2 * d * s / (2 * d * s + squared) for s in WAE_SCALES)

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(a, b) for a in x for b in y) / (n * m)
    return xx + yy - 2 * xy


@pytest.mark.parametrize(("n", "m", "d"), [(2, 2, 1), (7, 5, 3), (12, 12, 16)])
def test_imq_mmd_matches_a_double_loop(n: int, m: int, d: int) -> None:
    g = torch.Generator().manual_seed(n * 100 + d)
    x, y = torch.randn(n, d, generator=g), 1.5 * torch.randn(m, d, generator=g) + 0.3
    assert float(imq_mmd(x, y)) == pytest.approx(_mmd_double_loop(x, y), rel=1e-5, abs=1e-6)


def test_imq_mmd_separates_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 8, generator=g), torch.randn(300, 8, generator=g)
    same = float(imq_mmd(x, y))
    shifted = float(imq_mmd(x, y + 0.5))
    assert abs(same) < 0.03
    assert shifted > 0.15
    assert shifted > 10 * abs(same)


def test_imq_mmd_is_symmetric_and_float32_under_half_inputs() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 4, generator=g), torch.randn(30, 4, generator=g) + 1
    assert float(imq_mmd(x, y)) == pytest.approx(float(imq_mmd(y, x)), rel=1e-5)
    half = imq_mmd(x.bfloat16(), y.bfloat16())
    assert half.dtype == torch.float32


@pytest.mark.parametrize(
    ("x", "y", "scales", "match"),
    [
        (torch.zeros(1, 3), torch.zeros(4, 3), WAE_SCALES, r"x and y.*\(1, 3\)"),
        (torch.zeros(4, 3), torch.zeros(4, 2), WAE_SCALES, r"\(4, 2\)"),
        (torch.zeros(4), torch.zeros(4, 1), WAE_SCALES, r"\(4,\)"),
        (torch.zeros(4, 3), torch.zeros(4, 3), (1.0, 0.0), r"scales.*\(1.0, 0.0\)"),
    ],
)
def test_imq_mmd_rejects_bad_input(x, y, scales, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        imq_mmd(x, y, scales)


def test_wae_mmd_loss_is_l1_plus_weighted_mmd_against_fresh_prior_samples() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    x_hat = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    z = (torch.randn(6, 5, generator=g) + 2).requires_grad_()
    mu, logvar = torch.zeros(6, 5), torch.zeros(6, 5)
    loss = WAEMMD(mmd_weight=7.0, adversarial=None)
    torch.manual_seed(3)
    terms = loss(x, x_hat, mu, logvar, z)
    torch.manual_seed(3)
    prior = torch.randn(6, 5)
    mmd = _mmd_double_loop(z.detach(), prior)
    l1 = float((x - x_hat).abs().mean())
    assert float(terms.mmd.detach()) == pytest.approx(mmd, rel=1e-5)
    assert float(terms.reconstruction) == pytest.approx(l1, rel=1e-6)
    assert float(terms.adversarial) == 0.0
    assert float(terms.total.detach()) == pytest.approx(7.0 * mmd + 5000.0 * l1, rel=1e-5)
    terms.total.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0  # the MMD pulls the codes
    with pytest.raises(ValueError, match="z=None"):
        loss(x, x_hat, mu, logvar)
    with pytest.raises(ValueError, match="gan=False"):
        loss.discriminator_loss(x, x_hat)
    with pytest.raises(ValueError, match=r"mmd_weight must be >= 0; got -1"):
        WAEMMD(mmd_weight=-1.0, adversarial=None)


def test_build_objective_wae_mmd() -> None:
    config = TrainConfig(model="tiny-32", objective="wae-mmd", mmd_weight=10.0, beta3=200.0)
    objective = build_objective(config, None)
    assert isinstance(objective, WAEMMD)
    assert (objective.mmd_weight, objective.beta3, objective.beta4) == (10.0, 200.0, 0.0)
    default = build_objective(TrainConfig(model="tiny-32", objective="wae-mmd"), None)
    assert (default.mmd_weight, default.beta3) == (100.0, 5000.0)


@pytest.mark.parametrize("objective", ["mixture", "paper", "authors-code"])
def test_build_objective_passes_covariance_to_kl_g(objective: str) -> None:
    """--covariance reaches MixtureKL in every eq. 22 preset; the default stays diagonal."""
    for covariance in ("diagonal", "full"):
        config = TrainConfig(model="tiny-32", objective=objective, covariance=covariance)
        built = build_objective(config, None)
        assert built.kl_g.covariance == covariance
    with pytest.raises(ValueError, match=r"covariance must be one of.*'dense'"):
        TrainConfig(model="tiny-32", covariance="dense")
    with pytest.raises(ValueError, match=r"covariance applies to the eq. 22.*'vae'"):
        TrainConfig(model="tiny-32", objective="vae", covariance="full")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"objective": "wae-mmd", "mmd_weight": 0.0}, r"mmd_weight must be > 0, got 0.0"),
        ({"objective": "vae", "mmd_weight": 10.0}, r"mmd_weight applies to.*wae-mmd.*'vae'"),
        ({"objective": "wae-mmd", "beta1": 1.0}, r"beta1 apply to the eq. 22.*wae-mmd"),
        ({"objective": "wae-mmd", "variance": "means"}, r"variance apply.*wae-mmd"),
        ({"objective": "wae-mmd", "adaptive_weight": True}, r"adaptive_weight.*wae-mmd"),
        ({"holdout": -1}, r"holdout must be an integer >= 0, got -1"),
        ({"holdout": 2.5}, r"holdout must be an integer >= 0, got 2.5"),
    ],
)
def test_config_rejects_bad_study_fields(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(model="tiny-32", **options)


def test_holdout_removes_the_last_training_images_and_serves_them_unflipped() -> None:
    config = TrainConfig(model="tiny-32", procedural_size=50, holdout=6)
    full_train, full_test = config.replace(holdout=0).datasets()
    train, test = config.datasets()
    validation = config.validation_dataset()
    assert isinstance(train, HeldOut) and len(train) == len(full_train) - 6 == 34
    assert len(test) == len(full_test) == 10
    assert len(validation) == 6
    stored = load_images(full_train)  # unflipped
    assert torch.equal(load_images(validation), stored[34:])
    for epoch in (0, 3):  # training items keep the split's flips of the epoch
        train.set_epoch(epoch)
        full_train.set_epoch(epoch)
        assert all(torch.equal(train[i], full_train[i]) for i in range(34))
    with pytest.raises(IndexError):
        train[34]
    with pytest.raises(ValueError, match=r"holdout must be smaller.*\(40 images\), got 40"):
        config.replace(holdout=40).datasets()
    with pytest.raises(ValueError, match="holdout > 0; got holdout=0"):
        config.replace(holdout=0).validation_dataset()


def test_mnist_holdout_is_the_last_500_training_digits() -> None:
    config = TrainConfig(model="tiny-32", data="mnist", holdout=500)
    train, test = config.datasets()
    validation = config.validation_dataset()
    assert (len(train), len(validation), len(test)) == (3500, 500, 1000)
    full, _ = config.replace(holdout=0).datasets()
    assert torch.equal(validation[0], full[3500]) and torch.equal(train[3499], full[3499])
