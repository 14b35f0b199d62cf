"""The trainer: objectives, data order, overfitting, exact resume, non-finite stop, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from mixelbo_reference import train as train_module
from mixelbo_reference.checkpoint import list_checkpoints, load_run, load_training_state
from mixelbo_reference.config import (
    TrainConfig,
    build_parser,
    config_from_args,
    load_toml,
    save_toml,
)
from mixelbo_reference.objectives import StandardELBO, build_objective
from mixelbo_reference.train import EpochBatchSampler, NonFiniteLossError, train

import mixelbo.functional

pytestmark = pytest.mark.usefixtures("one_thread")  # small ops: threads only add contention


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("procedural-cache"))


def _tiny(run_dir: Path, cache_dir: str, **overrides: Any) -> TrainConfig:
    settings: dict[str, Any] = dict(
        procedural_size=40, train_split=32, run_dir=str(run_dir), cache_dir=cache_dir,
        progress=False, log_every=1, image_every=1000, checkpoint_every=1000,
    )  # fmt: skip
    return TrainConfig.preset("tiny-32", **(settings | overrides))


def _metrics(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_standard_elbo_equals_eq_10_plus_weighted_mae_in_float64() -> None:
    x, x_hat = torch.rand(4, 3, 8, 8) * 2 - 1, torch.rand(4, 3, 8, 8) * 2 - 1
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    terms = StandardELBO(beta=0.25, adversarial=None)(x, x_hat, mu, logvar)
    m, lv = mu.double(), logvar.double()
    kl = 0.5 * (m**2 + lv.exp() - 1 - lv).sum() / 4  # eq. 10, summed over dims, batch mean
    mae = (x.double() - x_hat.double()).abs().mean()
    assert terms.kl.item() == pytest.approx(kl.item(), rel=1e-5)
    assert terms.total.item() == pytest.approx(0.25 * kl.item() + 5000 * mae.item(), rel=1e-5)
    assert terms.adversarial.item() == 0


def test_objectives_are_the_configured_modules() -> None:
    build = build_objective
    config = TrainConfig.preset("tiny-32")
    mixture = build(config, torch.nn.Identity())
    assert isinstance(mixture, mixelbo.RegularizedELBO)
    assert (mixture.beta1, mixture.beta2, mixture.beta3, mixture.beta4) == (1, 0.5, 1000, 100)
    authors = build(config.replace(objective="authors-code"), None)
    assert (authors.beta2, authors.beta3, authors.beta4, authors.adversarial) == (
        0.1,
        5000,
        0,
        None,
    )
    beta_vae = build(config.replace(objective="beta-vae", beta=4.0), torch.nn.Identity())
    assert isinstance(beta_vae, StandardELBO) and (beta_vae.beta, beta_vae.beta4) == (4.0, 100)
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="wae")  # type: ignore[arg-type]


def test_epoch_sampler_is_a_seeded_permutation_sharded_over_ranks() -> None:
    full = list(EpochBatchSampler(10, 4, seed=3, epoch=1))
    assert len(full) == 2 and all(len(b) == 4 for b in full)  # the incomplete batch is dropped
    flat = [i for b in full for i in b]
    assert len(set(flat)) == 8 and set(flat) <= set(range(10))
    assert list(EpochBatchSampler(10, 4, seed=3, epoch=1, start=1)) == full[1:]
    assert list(EpochBatchSampler(10, 4, seed=3, epoch=2)) != full
    shards = [list(EpochBatchSampler(10, 4, 3, 1, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*shards, strict=True)] == full
    with pytest.raises(ValueError, match="divisible"):
        EpochBatchSampler(10, 3, 0, 0, world_size=2)


def test_a_tiny_model_overfits_a_small_batch(tmp_path: Path, cache_dir: str) -> None:
    config = _tiny(
        tmp_path, cache_dir, train_split=4, batch_size=4, steps=300, lr=1e-2,
        objective="beta-vae", beta=1e-3, gan=False,
    )  # fmt: skip
    metrics = _metrics(train(config))
    first, last = metrics[0], metrics[-1]
    assert last["step"] == 300
    assert last["reconstruction"] < first["reconstruction"] / 3
    assert last["total"] < first["total"] / 3


def test_resume_reproduces_the_uninterrupted_run_bitwise(tmp_path: Path, cache_dir: str) -> None:
    # 32 training images / batch 8 = 4 batches per epoch: the run crosses epoch boundaries and
    # is interrupted mid-epoch (after step 5).
    straight = train(_tiny(tmp_path / "straight", cache_dir, steps=10))
    interrupted = _tiny(tmp_path / "resumed", cache_dir, steps=5)
    train(interrupted)
    state = load_training_state(tmp_path / "resumed")
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (5, 1, 1)
    # the resumed half loads with a worker process: the batches do not depend on it
    resumed = train(interrupted.replace(steps=10, resume=True, num_workers=1))
    expected, got = _metrics(straight), _metrics(resumed)
    assert [m["step"] for m in got] == list(range(1, 11))
    assert got == expected  # every logged term, compared as exact floats


def test_resume_refuses_changed_trajectory_options(tmp_path: Path, cache_dir: str) -> None:
    config = _tiny(tmp_path, cache_dir, steps=2)
    train(config)
    with pytest.raises(ValueError, match="already has checkpoints"):
        train(config)
    with pytest.raises(ValueError, match="batch_size"):
        train(config.replace(resume=True, steps=4, batch_size=4))


def test_non_finite_loss_stops_naming_the_term_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = mixelbo.functional.individual_variance_kl
    calls = {"n": 0}

    def kl_i_blows_up(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * math.inf if calls["n"] == 3 else value

    monkeypatch.setattr(mixelbo.functional, "individual_variance_kl", kl_i_blows_up)
    with pytest.raises(NonFiniteLossError, match=r"step 3: total=inf, kl_i=inf") as error:
        train(_tiny(tmp_path, cache_dir, steps=6, checkpoint_every=2))
    assert "kl_g" not in str(error.value) and "step_00000002" in str(error.value)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002"]
    vae, _, _ = load_run(tmp_path)
    assert all(torch.isfinite(p).all() for p in vae.parameters())


def test_cli_runs_a_few_steps_end_to_end(tmp_path: Path, cache_dir: str) -> None:
    run_dir = tmp_path / "cli"
    argv = [
        "--config", "tiny-32", "--steps", "3", "--run-dir", str(run_dir),
        "--procedural-size", "40", "--cache-dir", cache_dir, "--no-progress",
        "--objective", "beta-vae", "--beta", "2", "--image-every", "3",
    ]  # fmt: skip
    assert train_module.main(argv) == 0
    vae, disc, config = load_run(run_dir)
    assert (config.objective, config.beta, config.steps, config.gan) == ("beta-vae", 2.0, 3, True)
    assert disc is not None and vae.latent_dim == 16
    assert [m["step"] for m in _metrics(run_dir)] == [1, 2, 3]
    assert any((run_dir / "tensorboard").iterdir())
    # --resume reads the run's config.toml: only the new step count is needed
    assert train_module.main(["--run-dir", str(run_dir), "--resume", "--steps", "4"]) == 0
    assert [m["step"] for m in _metrics(run_dir)][-1] == 4
    assert train_module.main(["--config", "nonsense"]) == 2


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for field in TrainConfig.__dataclass_fields__.values():
        assert f"--{field.name.replace('_', '-')}" in text
        assert field.metadata["help"].split()[0] in text
    assert "--no-gan" in text


def test_toml_round_trip_and_command_line_precedence(tmp_path: Path) -> None:
    config = TrainConfig.preset("cpu-64", data="/some/where", train_split=24000, gan=False)
    save_toml(config, tmp_path / "c.toml")
    assert TrainConfig.from_dict(load_toml(tmp_path / "c.toml")) == config
    parsed = config_from_args(["--config", str(tmp_path / "c.toml"), "--lr", "3e-4", "--gan"])
    assert parsed == config.replace(lr=3e-4, gan=True)
    assert config_from_args(["--config", "tiny-32"]).batch_size == 8
    assert config_from_args([]) == TrainConfig.preset("cpu-64")  # the default model's preset
    assert config_from_args(["--train-split", "24000"]).train_split == 24000
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"learning_rate": 1.0})


def test_patchgan_options_are_wired_and_restored_by_load_run(
    tmp_path: Path, cache_dir: str
) -> None:
    config = _tiny(
        tmp_path, cache_dir, steps=4, gan_start_step=2, disc_start_step=1, r1_gamma=1.0,
        r1_interval=2, disc_scales=2, disc_norm="group", adaptive_weight=True, gan_loss="hinge",
    )  # fmt: skip
    metrics = _metrics(train(config))
    # steps are counted from 0: the generator's adversarial term is off at steps 0 and 1, the
    # discriminator's loss at step 0
    assert [m["adversarial"] == 0 for m in metrics] == [True, True, False, False]
    assert [m["discriminator"] == 0 for m in metrics] == [True, False, False, False]
    _, disc, loaded = load_run(tmp_path)
    assert loaded == config
    assert isinstance(disc, mixelbo.MultiScaleDiscriminator) and len(disc.discriminators) == 2
    with pytest.raises(ValueError, match="adaptive_weight"):
        config.replace(objective="vae")


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "configs").glob("*.toml")), ids=lambda p: p.name
)
def test_example_configs_load(path: Path) -> None:
    config = config_from_args(["--config", str(path)])
    assert config.model in ("paper-256", "cpu-64")


@pytest.mark.cuda
@pytest.mark.parametrize("compile_networks", [False, True], ids=["eager", "compiled"])
def test_cuda_bf16_channels_last_run(
    tmp_path: Path, cache_dir: str, compile_networks: bool
) -> None:
    config = _tiny(tmp_path, cache_dir, steps=4, device="cuda", compile=compile_networks)
    metrics = _metrics(train(config))
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(math.isfinite(v) for m in metrics for v in m.values())
    vae, _, loaded = load_run(tmp_path)
    assert loaded.precision == "auto" and next(vae.parameters()).device.type == "cpu"
