"""Run folders and checkpoints: safetensors weights, training state beside them, atomic writes.

Layout of a run folder::

    RUN/.lock                             the lock of the trainer using it (run_folder.RunLock)
    RUN/config.toml                       resolved TrainConfig
    RUN/config_changes.jsonl              what each --resume changed, once one did
    RUN/metrics.jsonl                     logged loss terms, one JSON object per logged step
    RUN/tensorboard/                      TensorBoard events
    RUN/checkpoints/step_00001000/
        vae.safetensors                   the (unwrapped) VAE's state_dict
        discriminator.safetensors         the discriminator's, when the run has one
        state.pt                          optimizers, GradScaler, step, data position, RNG states
        config.toml                       the run's config, so a checkpoint is self-contained

A checkpoint is written into a hidden temporary folder in ``checkpoints/`` and renamed into
place with one ``os.replace``: a reader sees either the whole checkpoint or none of it, and a
crash mid-save leaves the previous checkpoints untouched. The files are serialized in memory
and written with plain file writes, so a full disk raises ``OSError`` (``ENOSPC``) like any
other write; a failed save removes its temporary folder. The folder is synced before the older
checkpoints are deleted, so a power loss cannot lose both. Only the newest ``keep`` are kept.
A temporary folder left by a killed save is removed by :func:`remove_partial_checkpoints`.
"""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from mixelbo_reference.config import TrainConfig, load_toml, save_toml
from mixelbo_reference.models import ResNetVAE, build_discriminator, build_vae

__all__ = [
    "capture_rng_state",
    "checkpoint_step",
    "latest_checkpoint",
    "list_checkpoints",
    "load_run",
    "load_training_state",
    "remove_partial_checkpoints",
    "resolve_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

_STEP_DIR = re.compile(r"^step_(\d+)$")
_TEMPORARY_DIR = re.compile(r"^\.step_\d+\..*\.tmp$")


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The complete checkpoints of a run, oldest first (temporary folders are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(checkpoint: str | os.PathLike[str]) -> int:
    """The step a checkpoint folder was written at (from its name ``step_NNNNNNNN``)."""
    match = _STEP_DIR.match(Path(checkpoint).name)
    if match is None:
        raise ValueError(f"not a checkpoint folder name (step_NNNNNNNN): {str(checkpoint)!r}")
    return int(match.group(1))


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of a run, or ``None``."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint folder from a run folder (its latest checkpoint) or a checkpoint path.

    Accepts a run folder, a ``step_*`` folder, or a file inside one (e.g. its
    ``vae.safetensors``).

    Raises:
        ValueError: if ``path`` is none of these or the run has no checkpoint yet.
    """
    path = Path(path)
    if path.is_file() and _STEP_DIR.match(path.parent.name):
        return path.parent
    if path.is_dir() and _STEP_DIR.match(path.name) and (path / "vae.safetensors").is_file():
        return path
    if path.is_dir() and (path / "checkpoints").is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise ValueError(f"run folder {str(path)!r} has no checkpoint yet")
        return latest
    raise ValueError(
        f"path must be a run folder, a checkpoint folder or a file in one, got {str(path)!r}"
    )


def capture_rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch CPU and CUDA generator states (plain types for torch.load)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]  # noqa: NPY002
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA only where present)."""
    random.setstate(_as_python_state(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    legacy = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    np.random.set_state(legacy)  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def _as_python_state(state: Any) -> Any:
    """``random.setstate`` needs tuples; serialization may have produced lists."""
    return tuple(_as_python_state(s) for s in state) if isinstance(state, list | tuple) else state


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A contiguous CPU copy of the state_dict (safetensors stores dense tensors only)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def _fsync(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _fsync_folder(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX; a folder cannot be opened on Windows)."""
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` with Python's file I/O, so a full disk raises ``OSError(ENOSPC)``."""
    with open(path, "wb") as file:
        file.write(data)


def remove_partial_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary folders of saves that never finished (a trainer killed mid-save).

    Call it only while holding the run folder's lock: a running save's folder looks the same.

    Returns:
        The folders deleted.
    """
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.is_dir() and _TEMPORARY_DIR.match(p.name)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    *,
    vae: nn.Module,
    discriminator: nn.Module | None,
    state: dict[str, Any],
    config: TrainConfig,
    keep: int,
) -> Path:
    """Write ``RUN/checkpoints/step_<step>`` atomically and keep only the newest ``keep``.

    Args:
        run_dir: the run folder.
        step: optimizer steps completed.
        vae, discriminator: the unwrapped networks (not DDP / compiled wrappers).
        state: everything else needed to resume (optimizers, scaler, data position, RNG).
        config: the run's config, stored beside the weights.
        keep: how many checkpoints to keep (>= 1).

    Returns:
        The checkpoint folder.

    Raises:
        ValueError: if ``keep < 1`` or a checkpoint for ``step`` already exists.
        OSError: if a write fails (e.g. ``ENOSPC``); the partial checkpoint is removed and the
            previous ones are untouched.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    if final.exists():
        raise ValueError(f"checkpoint {str(final)!r} already exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        metadata = {"step": str(step), "model": config.model}
        _write_bytes(tmp / "vae.safetensors", safetensors_bytes(_tensors(vae), metadata))
        if discriminator is not None:
            weights = safetensors_bytes(_tensors(discriminator), metadata)
            _write_bytes(tmp / "discriminator.safetensors", weights)
        buffer = io.BytesIO()
        torch.save({"step": step, **state}, buffer)
        _write_bytes(tmp / "state.pt", buffer.getbuffer())
        save_toml(config, tmp / "config.toml")
        for file in tmp.iterdir():
            _fsync(file)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_folder(root)  # the rename is on disk before an older checkpoint goes
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_state(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``state.pt`` of a checkpoint (optimizers, scaler, step, data position, RNG)."""
    state: dict[str, Any] = torch.load(
        resolve_checkpoint(checkpoint) / "state.pt", map_location="cpu", weights_only=True
    )
    return state


def load_run(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[ResNetVAE, nn.Module | None, TrainConfig]:
    """The trained networks and config of a run folder (latest checkpoint) or a checkpoint.

    Returns:
        ``(vae, discriminator_or_None, config)``, both networks in eval mode on
        ``map_location``.

    Raises:
        ValueError: if ``path`` holds no checkpoint.

    Example (a trained run folder)::

        vae, disc, config = load_run("runs/my-run")
        x_hat = vae.decode(torch.randn(4, vae.latent_dim))
    """
    checkpoint = resolve_checkpoint(path)
    config = TrainConfig.from_dict(load_toml(checkpoint / "config.toml"))
    device = str(map_location)
    vae = build_vae(config.model_config)
    vae.load_state_dict(load_file(checkpoint / "vae.safetensors", device=device))
    vae.to(map_location).eval()
    discriminator: nn.Module | None = None
    if (checkpoint / "discriminator.safetensors").is_file():
        discriminator = build_discriminator(config.model_config, **config.discriminator_options)
        state = load_file(checkpoint / "discriminator.safetensors", device=device)
        discriminator.load_state_dict(state)
        discriminator.to(map_location).eval()
    return vae, discriminator, config
