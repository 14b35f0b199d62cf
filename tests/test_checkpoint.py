"""Checkpoints: atomic writes, crash safety, pruning, RNG round trip, load_run."""

# ruff: noqa: NPY002 (the legacy global NumPy RNG is what checkpoints save and restore)

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mixelbo_reference import checkpoint as ckpt
from mixelbo_reference.config import TrainConfig
from mixelbo_reference.models import build_discriminator, build_vae

pytestmark = pytest.mark.usefixtures("one_thread")  # small ops: threads only add contention


def _config(tmp_path: Path) -> TrainConfig:
    return TrainConfig.preset("tiny-32", run_dir=str(tmp_path))


def _save(tmp_path: Path, step: int, keep: int = 3) -> tuple[Path, torch.nn.Module]:
    config = _config(tmp_path)
    vae = build_vae(config.model_config).to(memory_format=torch.channels_last)
    path = ckpt.save_checkpoint(
        tmp_path, step, vae=vae, discriminator=build_discriminator(config.model_config),
        state={"epoch": 1, "batch_in_epoch": 2, "rng": [ckpt.capture_rng_state()]},
        config=config, keep=keep,
    )  # fmt: skip
    return path, vae


def test_save_then_load_run_round_trips_the_weights(tmp_path: Path) -> None:
    path, vae = _save(tmp_path, 5)
    assert path.name == "step_00000005"
    assert sorted(p.name for p in path.iterdir()) == [
        "config.toml", "discriminator.safetensors", "state.pt", "vae.safetensors",
    ]  # fmt: skip
    for source in (tmp_path, path, path / "vae.safetensors"):
        loaded, disc, config = ckpt.load_run(source)
        assert config == _config(tmp_path)
        assert disc is not None and not loaded.training
        for (name, a), b in zip(
            vae.state_dict().items(), loaded.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), name
    state = ckpt.load_training_state(path)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (5, 1, 2)


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000004"


def test_a_crash_mid_save_leaves_no_partial_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous, _ = _save(tmp_path, 1)
    seen_during_save: list[list[Path]] = []

    def crash(*args: object, **kwargs: object) -> None:
        # the weights are written already; the new checkpoint must not be visible yet
        seen_during_save.append(ckpt.list_checkpoints(tmp_path))
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 2)
    assert seen_during_save == [[previous]]
    assert ckpt.list_checkpoints(tmp_path) == [previous]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [previous.name]  # no temp
    loaded, _, _ = ckpt.load_run(tmp_path)
    weights = load_file(previous / "vae.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in loaded.state_dict().items())


def test_rng_state_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path, _ = _save(tmp_path, 1)
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.restore_rng_state(ckpt.load_training_state(path)["rng"][0])
    assert random.random() == expected[0]
    assert np.random.rand(3).tolist() == expected[1]
    assert torch.equal(torch.rand(3), expected[2])


def test_bad_paths_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="path must be"):
        ckpt.load_run(tmp_path / "nowhere")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ValueError, match="no checkpoint yet"):
        ckpt.load_run(tmp_path)
    with pytest.raises(ValueError, match="keep"):
        _save(tmp_path, 1, keep=0)
