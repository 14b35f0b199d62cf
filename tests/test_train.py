"""The trainer: objectives, data order, overfitting, exact resume, non-finite stop, the CLI."""

from __future__ import annotations

import json
import math
import os
import re
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import mixelbo.functional
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
    mixture = build(config, torch.nn.Identity())  # the default: RegularizedELBO.recommended()
    assert isinstance(mixture, mixelbo.RegularizedELBO)
    assert (mixture.beta1, mixture.beta2, mixture.beta3, mixture.beta4) == (1, 0.1, 5000, 100)
    assert (mixture.kl_g.variance, mixture.kl_i.reduction) == ("mixture", "batchmean")
    paper = build(config.replace(objective="paper"), torch.nn.Identity())
    assert (paper.beta1, paper.beta2, paper.beta3, paper.beta4) == (1, 0.5, 1000, 100)
    assert (paper.kl_g.variance, paper.kl_i.reduction) == ("sample", "sum")
    tuned = build(config.replace(beta2=0.5, beta3=2000.0, variance="sample"), None)
    assert (tuned.beta2, tuned.beta3, tuned.kl_g.variance, tuned.beta4) == (0.5, 2000, "sample", 0)
    with pytest.raises(ValueError, match="beta1, variance"):
        TrainConfig(objective="vae", beta1=2.0, variance="means")
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
    with pytest.raises(ValueError, match="--batch-size: saved 8, given 4"):
        train(config.replace(resume=True, steps=4, batch_size=4))


def _kl_i_blows_up_at_call(monkeypatch: pytest.MonkeyPatch, bad_call: int) -> None:
    """Make KL_I infinite at its ``bad_call``-th evaluation (1-based: the loop's step)."""
    real = mixelbo.functional.individual_variance_kl
    calls = {"n": 0}

    def kl_i(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * math.inf if calls["n"] == bad_call else value

    monkeypatch.setattr(mixelbo.functional, "individual_variance_kl", kl_i)


def _first_bad_steps(message: str) -> dict[str, int]:
    return {k: int(s) for k, s in re.findall(r"(\w+) \(non-finite from step (\d+)\)", message)}


def test_non_finite_loss_stops_naming_the_term_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # KL_I is infinite at step 4 only; the check is read back at the checkpoint steps 3, 6, 9
    # and the log steps 8, 12, so the run must stop at step 6, before its checkpoint, and
    # report step 4.
    _kl_i_blows_up_at_call(monkeypatch, 4)
    with pytest.raises(NonFiniteLossError, match=r"^non-finite loss at step 4: ") as error:
        train(_tiny(tmp_path, cache_dir, steps=12, log_every=8, checkpoint_every=3))
    message = str(error.value)
    first = _first_bad_steps(message)
    assert first["kl_i"] == 4 and first["total"] == 4  # the first step, not the latest
    # the infinite gradient poisons the weights: other terms follow, each at its own later step
    later = {k: s for k, s in first.items() if k not in ("kl_i", "total")}
    assert later and all(4 < s <= 6 for s in later.values())
    assert "step_00000003" in message
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003"]
    assert _metrics(tmp_path) == []  # the first log step, 8, was never reached
    vae, _, _ = load_run(tmp_path)
    assert all(torch.isfinite(p).all() for p in vae.parameters())


def test_non_finite_loss_before_any_checkpoint_names_none(
    tmp_path: Path, cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _kl_i_blows_up_at_call(monkeypatch, 1)
    with pytest.raises(NonFiniteLossError, match=r"step 1: .*no checkpoint was written yet"):
        train(_tiny(tmp_path, cache_dir, steps=3, log_every=2, checkpoint_every=2))
    assert list_checkpoints(tmp_path) == [] and _metrics(tmp_path) == []


def _ddp_worker(rank: int, port: int, config: TrainConfig, out: str) -> None:
    """One of two gloo ranks; KL_I is infinite at step 3 on rank 1 only."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    if rank == 1:
        _kl_i_blows_up_at_call(pytest.MonkeyPatch(), 3)
    try:
        train(config)
        outcome = "finished"
    except NonFiniteLossError as error:
        outcome = str(error)
    Path(out, f"rank{rank}.txt").write_text(outcome)


@pytest.mark.distributed
def test_ddp_ranks_agree_on_a_term_non_finite_on_one_rank(tmp_path: Path, cache_dir: str) -> None:
    config = _tiny(tmp_path / "run", cache_dir, steps=6, log_every=2, checkpoint_every=2)
    config = config.replace(device="cpu")
    config.datasets()  # generate the procedural cache once, before the ranks start
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    mp.spawn(_ddp_worker, args=(port, config, str(tmp_path)), nprocs=2, join=True)
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert outcomes[0] == outcomes[1]  # both ranks stop at the same check, with one message
    assert outcomes[0].startswith("non-finite loss at step 3: ")
    assert _first_bad_steps(outcomes[0])["kl_i"] == 3
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000002"]
    assert [m["step"] for m in _metrics(tmp_path / "run")] == [2]


# Every way the host reads a tensor's values (on a GPU each one waits for the device).
_HOST_READS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu,
    torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__,
}  # fmt: skip


def _watch_objective(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Record the loop's batches and each host read of a value derived from the loss terms.

    The objective's terms (and the discriminator loss) are returned as a tensor subclass whose
    ``__torch_function__`` follows them through every op (stack, isfinite, where, all-reduce
    means...); ``reads`` gets the loop's step counter at each host read.
    """
    record: dict[str, Any] = {"step": 0, "reads": [], "batches": []}

    class HostReads(torch.Tensor):
        @classmethod
        def __torch_function__(
            cls, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            if func in _HOST_READS:
                record["reads"].append(record["step"])
            return super().__torch_function__(func, types, args, kwargs or {})

    def build(config: TrainConfig, discriminator: Any) -> Any:
        objective = build_objective(config, discriminator)
        forward, discriminator_loss = objective.forward, objective.discriminator_loss

        def watched(x: torch.Tensor, *args: Any, step: int, **kwargs: Any) -> Any:
            record["step"] = step + 1  # the loop's counter once this step is done
            record["batches"].append(x.detach().clone())
            terms = forward(x, *args, step=step, **kwargs)
            return type(terms)(*(t.as_subclass(HostReads) for t in terms))

        objective.forward = watched
        objective.discriminator_loss = lambda *a, **k: discriminator_loss(*a, **k).as_subclass(
            HostReads
        )
        return objective

    monkeypatch.setattr(train_module, "build_objective", build)
    return record


def test_loss_values_reach_the_host_only_at_log_image_and_checkpoint_steps(
    tmp_path: Path, cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _watch_objective(monkeypatch)
    config = _tiny(
        tmp_path, cache_dir, steps=12, log_every=4, image_every=6, checkpoint_every=5,
    )  # fmt: skip
    train(config)
    # log steps 4, 8, 12; image steps 6, 12; checkpoint steps 5, 10, 12: nothing in between
    assert sorted(set(record["reads"])) == [4, 5, 6, 8, 10, 12]
    assert [m["step"] for m in _metrics(tmp_path)] == [4, 8, 12]
    assert all(math.isfinite(v) for m in _metrics(tmp_path) for v in m.values())


def test_the_loop_scales_uint8_batches_on_the_device_bit_for_bit(
    tmp_path: Path, cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _watch_objective(monkeypatch)
    config = _tiny(tmp_path, cache_dir, steps=6)
    train(config)
    train_ds, _ = config.datasets()
    # 32 images / batch 8: step 5 (index 5) is batch 1 of epoch 1, with that epoch's flips
    for index, (epoch, batch) in ((0, (0, 0)), (5, (1, 1))):
        train_ds.set_epoch(epoch)
        order = list(EpochBatchSampler(len(train_ds), 8, config.seed, epoch))[batch]
        pixels = np.stack([train_ds[i].numpy() for i in order])
        assert pixels.dtype == np.uint8
        expected = pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        x = record["batches"][index]
        assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(x.view(torch.int32), torch.from_numpy(expected).view(torch.int32))


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
