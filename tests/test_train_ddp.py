"""A two-process DDP run (gloo on CPU, 127.0.0.1 only) of the trainer."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mixelbo_reference.checkpoint import load_run, load_training_state
from mixelbo_reference.config import TrainConfig
from mixelbo_reference.data import build_datasets
from mixelbo_reference.models import build_vae


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, world: int, port: int, config: TrainConfig, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    from mixelbo_reference.train import train

    run_dir = train(config)
    Path(out, f"rank{rank}.txt").write_text(str(run_dir))


@pytest.mark.distributed
def test_two_process_gloo_ddp_run(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    config = TrainConfig.preset(
        "tiny-32", procedural_size=40, train_split=32, cache_dir=cache, steps=4,
        out_dir=str(tmp_path / "runs"), progress=False, log_every=1, device="cpu",
    )  # fmt: skip
    build_datasets(None, 32, 32, 0, procedural_size=40, cache_dir=cache)  # generate once
    mp.spawn(_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2, join=True)

    run_dirs = {(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)}
    assert len(run_dirs) == 1  # rank 0's default (time-stamped) folder, broadcast
    run_dir = Path(run_dirs.pop())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(list(m.values()))).all() for m in metrics)
    state = load_training_state(run_dir)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank noise
    vae, disc, _ = load_run(run_dir)
    torch.manual_seed(0)
    initial = build_vae(config.model_config)
    assert disc is not None
    assert any(
        not torch.equal(a, b) for a, b in zip(vae.parameters(), initial.parameters(), strict=True)
    )


@pytest.mark.parametrize(
    ("objective", "one_rank", "four_ranks"),
    [("paper", 0.5, 2.0), ("authors-code", 0.1, 0.1), ("mixture", 0.1, 0.1)],
)
def test_batch_summed_kl_i_is_weighted_by_the_world_size(
    monkeypatch: pytest.MonkeyPatch, objective: str, one_rank: float, four_ranks: float
) -> None:
    # Eq. 20 sums over the global batch; each of W ranks sums B / W samples and DDP averages
    # the gradients, so the paper preset's beta2 must be W times larger on every rank. The
    # authors' and the default per-sample mean ("batchmean") is already averaged and stays.
    import mixelbo_reference.objectives as objectives_module

    config = TrainConfig.preset("tiny-32", objective=objective, gan=False)
    for world, beta2 in ((1, one_rank), (4, four_ranks)):
        monkeypatch.setattr(objectives_module, "world_size", lambda world=world: world)
        assert objectives_module.build_objective(config, None).beta2 == pytest.approx(beta2)
