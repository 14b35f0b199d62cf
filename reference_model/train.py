"""Train the paper's ResNetV2 VAE-GAN with mixelbo: Algorithm 1 of "How to train your VAE".

One readable loop, top to bottom. Each step:

1. encode x, sample z = mu + sigma * eps, decode x_hat, score x_hat with the discriminator;
2. a VAE (generator) step on ELBO_reg (eq. 22, :class:`mixelbo.RegularizedELBO`);
3. a discriminator step on eq. 23 (:meth:`mixelbo.RegularizedELBO.discriminator_loss`).

No step waits for the device: batches arrive as uint8 and are scaled to [-1, 1] on the device
(:func:`mixelbo_reference.data.to_unit_range`), and each loss term is checked for NaN / inf on
the device, which records the first step each term was non-finite. The record is read back (and,
under DDP, reduced over the ranks) only at log, image and checkpoint steps, before anything is
written, so a run stops there with :class:`NonFiniteLossError` naming the terms and the step they
first went non-finite, and no metric, image or checkpoint from after that step exists.

Usage::

    mixelbo-train                                  # cpu-64 on the embedded procedural dataset
    mixelbo-train --config paper-256 --data ~/celeba_hq --train-split 24000
    mixelbo-train --run-dir runs/x --resume --steps 4000   # continue a run exactly
    torchrun --nproc-per-node 8 -m mixelbo_reference.train --config paper-256 --data ...

The run folder is owned by one trainer at a time, a full disk stops the run with one line and
the last good checkpoint intact, and ``--resume`` refuses options that differ from the run's
config unless ``--override-config`` (:mod:`mixelbo_reference.run_folder`).

Exact resume: the data order is a per-epoch permutation drawn from a generator seeded by
(seed, epoch), the flips are a function of (seed, epoch, index), and a checkpoint stores the
optimizers, the GradScaler, the data position and every RNG state; on CPU with a fixed seed the
losses after ``--resume`` equal those of an uninterrupted run bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from timm.layers import convert_sync_batchnorm
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from mixelbo import functional as MF
from mixelbo_reference.checkpoint import (
    capture_rng_state,
    checkpoint_step,
    latest_checkpoint,
    load_training_state,
    remove_partial_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from mixelbo_reference.config import (
    TrainConfig,
    _merge_defaults,
    config_from_args,
    load_toml,
    save_toml,
)
from mixelbo_reference.data import fixed_batch, to_unit_range
from mixelbo_reference.models import build_discriminator, build_vae, count_parameters
from mixelbo_reference.objectives import build_objective, world_size
from mixelbo_reference.run_folder import (
    DiskFullError,
    RunFolderError,
    RunFolderInUseError,
    RunLock,
    describe_changes,
    is_disk_full,
    resume_changes,
    stop_on_full_disk,
)

__all__ = ["EpochBatchSampler", "NonFiniteLossError", "train"]


_NEVER = torch.iinfo(torch.int64).max
"""The first non-finite step of a term that has always been finite."""


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the message names the term(s) and the step."""


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of a seeded per-epoch permutation, from a given batch on, sharded over ranks.

    Epoch ``e``'s order is ``torch.randperm(n)`` from a generator seeded with
    ``(seed, e)``; global batch ``b`` is ``perm[b * B:(b + 1) * B]`` and rank ``r`` of ``W``
    takes its ``r``-th contiguous slice of ``B / W``. Incomplete last batches are dropped (the
    batch moments of eqs. 17-18 need a full batch). Starting at batch ``start`` gives exactly
    the batches an uninterrupted epoch would have given from there.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, epoch: int, start: int = 0,
        rank: int = 0, world_size: int = 1,
    ) -> None:  # fmt: skip
        if batch_size % world_size:
            raise ValueError(
                f"batch_size must be divisible by the world size {world_size}, got {batch_size}"
            )
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.start, self.rank, self.world_size = start, rank, world_size

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        local = self.batch_size // self.world_size
        for batch in range(self.start, self.batches_per_epoch):
            first = batch * self.batch_size + self.rank * local
            yield order[first : first + local]


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _default_run_dir(config: TrainConfig) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(config.out_dir) / f"{config.model}-{config.objective}-{stamp}"


def _check_finite(
    first_bad: Tensor, names: list[str], world: int, last_checkpoint: Path | None
) -> None:
    """Read back the first non-finite step of each term (the minimum over ranks); raise if any.

    ``first_bad`` is the loop's device-side record (``_NEVER`` for a term finite so far);
    reading it is one host-device synchronisation, done only at log, image and checkpoint steps.
    """
    if world > 1:
        dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
    bad = {k: s for k, s in zip(names, first_bad.tolist(), strict=True) if s != _NEVER}
    if bad:
        where = last_checkpoint or "none (no checkpoint was written yet)"
        raise NonFiniteLossError(
            f"non-finite loss at step {min(bad.values())}: "
            + ", ".join(f"{k} (non-finite from step {s})" for k, s in bad.items())
            + f"; stopping. The last good checkpoint is {where}"
        )


def _to_image(x: Tensor) -> Tensor:
    """[-1, 1] images to [0, 1] for TensorBoard."""
    return (x.float().clamp(-1, 1) + 1) / 2


def train(config: TrainConfig) -> Path:
    """Train a VAE-GAN as ``config`` says; returns the run folder.

    The run folder is locked for the whole run (under DDP by rank 0), before anything is
    written into it.

    Raises:
        NonFiniteLossError: when a loss term is NaN or infinite, at the next log, image or
            checkpoint step (nothing is logged or saved from the non-finite step on; the last
            good checkpoint stays on disk).
        RunFolderInUseError: if another trainer holds the run folder (nothing was written).
        RunFolderError: on a resume whose options differ from the run's config (see
            :func:`mixelbo_reference.run_folder.resume_changes`), a resume without a
            checkpoint, or a new run in a folder that has checkpoints (a ``ValueError``).
        DiskFullError: when a write into the run folder fails for lack of space or quota (the
            last good checkpoint stays on disk, complete).
        ValueError: on an inconsistent config.
    """
    if config.override_config and not config.resume:
        raise RunFolderError("--override-config applies to --resume only")
    # ---- processes and device (torchrun sets WORLD_SIZE, RANK, LOCAL_RANK) ----------------
    started_group = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and config.device != "cpu"
        dist.init_process_group("nccl" if use_nccl else "gloo")
        started_group = True
    try:
        world, rank = world_size(), dist.get_rank() if world_size() > 1 else 0
        device = _resolve_device(config.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        run_dir = Path(config.run_dir) if config.run_dir else _default_run_dir(config)
        if world > 1:  # every rank must use rank 0's folder (the default name has a timestamp)
            shared = [str(run_dir)]
            dist.broadcast_object_list(shared, src=0)
            run_dir = Path(shared[0])
        if config.resume and not run_dir.is_dir():
            raise RunFolderError(f"--resume: run folder {str(run_dir)!r} does not exist")
        lock = _lock_run_folder(run_dir, rank, world)
        try:
            with _quiet_full_disk_in_writer_threads():
                return _train(
                    config, run_dir, device, world, rank, locked=bool(lock and lock.locked)
                )
        finally:
            if lock is not None:
                lock.release()
    finally:
        if started_group:
            dist.destroy_process_group()


def _command_name() -> str:
    """How a lock names its holder: ``mixelbo-compare`` etc. when one of those called train."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name.startswith("mixelbo-") else "mixelbo-train"


def _lock_run_folder(run_dir: Path, rank: int, world: int) -> RunLock | None:
    """Rank 0 locks the run folder; every rank raises if it could not, with rank 0's reason."""
    lock, failure = None, None
    refusal: tuple[bool, str] | None = None  # (in use?, message)
    if rank == 0:
        try:
            with stop_on_full_disk(run_dir / ".lock"):
                lock = RunLock.acquire(run_dir, command=_command_name())
        except Exception as error:  # every rank must hear of it, or the others would hang
            failure = error
            refusal = (isinstance(error, RunFolderInUseError), str(error))
    if world > 1:
        shared = [refusal]
        dist.broadcast_object_list(shared, src=0)
        refusal = shared[0]
    if failure is not None:
        raise failure
    if refusal is not None:  # ranks > 0
        in_use, message = refusal
        if in_use:
            raise RunFolderInUseError(message)
        raise RunFolderError(f"rank 0 could not lock the run folder: {message}")
    return lock


@contextmanager
def _quiet_full_disk_in_writer_threads() -> Iterator[None]:
    """Keep TensorBoard's writer thread from printing a traceback on a full disk.

    Its error is raised again in the training thread at the next TensorBoard call, where
    :func:`stop_on_full_disk` turns it into one line.
    """
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (
            is_disk_full(args.exc_value) and type(args.thread).__name__ == "_AsyncWriterThread"
        ):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def _logged_step(line: str) -> float:
    """The step of a ``metrics.jsonl`` line; infinite for a torn line (a killed write)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def _train(
    config: TrainConfig, run_dir: Path, device: torch.device, world: int, rank: int, locked: bool
) -> Path:
    """:func:`train` once the processes are up and the run folder is locked."""
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    # ---- run folder ----------------------------------------------------------------------
    is_main = rank == 0
    last_checkpoint = latest_checkpoint(run_dir)

    def writing(path: Path | None) -> Any:
        """A full disk while writing ``path`` stops the run with one line (DiskFullError)."""
        return stop_on_full_disk(path, lambda: last_checkpoint)

    resume_from = last_checkpoint if config.resume else None
    changes: dict[str, tuple[Any, Any]] = {}
    if config.resume:
        if resume_from is None:
            raise RunFolderError(f"--resume: run folder {str(run_dir)!r} has no checkpoint")
        saved_path = run_dir / "config.toml"  # the run's options, as last accepted
        if not saved_path.is_file():
            saved_path = resume_from / "config.toml"
        saved = TrainConfig.from_dict(_merge_defaults(load_toml(saved_path)))
        changes = resume_changes(saved, config, checkpoint_step(resume_from))
    elif last_checkpoint is not None:
        raise RunFolderError(
            f"run_dir {str(run_dir)!r} already has checkpoints; pass --resume to continue it "
            "or choose another --run-dir"
        )
    recorded = config.replace(override_config=False)  # a later resume must ask again
    if is_main:
        if locked:  # no other trainer: what a killed one left half-written can go
            remove_partial_checkpoints(run_dir)
            for stale in run_dir.glob(".*.tmp-*"):
                stale.unlink(missing_ok=True)
        with writing(run_dir / "config.toml"):
            save_toml(recorded, run_dir / "config.toml")
        if changes:
            with (
                writing(run_dir / "config_changes.jsonl"),
                open(run_dir / "config_changes.jsonl", "a") as record,
            ):
                record.write(json.dumps({
                    "step": checkpoint_step(resume_from) if resume_from else 0,
                    "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "override_config": config.override_config,
                    "changes": {k: list(v) for k, v in changes.items()},
                }) + "\n")  # fmt: skip

    # ---- data (flips and order are functions of the seed; see EpochBatchSampler) ---------
    random.seed(config.seed)
    np.random.seed(config.seed)  # noqa: NPY002 (the legacy global RNG, saved in checkpoints)
    torch.manual_seed(config.seed)
    model_config = config.model_config
    with writing(None):  # the procedural dataset's cache may be written on first use
        train_ds, test_ds = config.datasets()
    batches_per_epoch = len(train_ds) // config.batch_size
    if batches_per_epoch == 0:
        raise ValueError(
            f"the training split has {len(train_ds)} images, fewer than batch_size "
            f"{config.batch_size}"
        )
    total_steps = (
        math.ceil(config.epochs * batches_per_epoch) if config.epochs is not None else config.steps
    )
    num_workers = config.num_workers
    if num_workers < 0:
        num_workers = min(8, (os.cpu_count() or 2) - 1) if device.type == "cuda" else 0
    eval_count = min(config.eval_images, len(test_ds))
    eval_batch = fixed_batch(test_ds, eval_count) if eval_count >= 2 else None

    # ---- networks, objective, optimizers --------------------------------------------------
    vae = build_vae(model_config).to(device, memory_format=memory_format)
    disc = build_discriminator(model_config, **config.discriminator_options)
    disc = disc.to(device, memory_format=memory_format)
    disc = disc if config.gan else None
    if world > 1 and rank > 0:  # different sampling noise and dropout per rank
        torch.manual_seed(config.seed + 1_000_003 * rank)
    vae_model: nn.Module = vae
    disc_model: nn.Module | None = disc
    if world > 1 and config.sync_batchnorm:
        if device.type != "cuda":
            raise ValueError("sync_batchnorm needs CUDA devices; got device " + str(device))
        vae = convert_sync_batchnorm(vae)
        disc = convert_sync_batchnorm(disc) if disc is not None else None
        vae_model, disc_model = vae, disc
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        vae_model = DistributedDataParallel(vae, device_ids=ids)
        disc_model = DistributedDataParallel(disc, device_ids=ids) if disc is not None else None
    if config.compile:
        vae_model = torch.compile(vae_model)  # type: ignore[assignment]
        disc_model = torch.compile(disc_model) if disc_model is not None else None  # type: ignore[assignment]
    objective = build_objective(config, disc_model).to(device)
    fused = {"fused": True} if device.type == "cuda" else {}
    betas = (config.adam_beta1, config.adam_beta2)
    opt_vae = torch.optim.Adam(vae.parameters(), lr=config.lr, betas=betas, **fused)
    opt_disc = (
        torch.optim.Adam(disc.parameters(), lr=config.disc_lr or config.lr, betas=betas, **fused)
        if disc is not None
        else None
    )

    # ---- resume ----------------------------------------------------------------------------
    step, epoch, batch_in_epoch = 0, 0, 0
    if resume_from is not None:
        from safetensors.torch import load_file

        vae.load_state_dict(load_file(resume_from / "vae.safetensors", device=str(device)))
        if disc is not None and opt_disc is not None:
            state_d = load_file(resume_from / "discriminator.safetensors", device=str(device))
            disc.load_state_dict(state_d)
        state = load_training_state(resume_from)
        opt_vae.load_state_dict(state["optimizer_vae"])
        if opt_disc is not None:
            opt_disc.load_state_dict(state["optimizer_disc"])
        scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        restore_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])

    writer = None
    metrics_file = None
    tensorboard_dir, metrics_path = run_dir / "tensorboard", run_dir / "metrics.jsonl"
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        with writing(tensorboard_dir):
            writer = SummaryWriter(str(tensorboard_dir), purge_step=step if step else None)
        if step and metrics_path.is_file():  # drop lines logged after the checkpoint
            lines = metrics_path.read_text().splitlines(keepends=True)
            # (and a torn last line, written when a trainer was killed)
            kept = [line for line in lines if _logged_step(line) <= step]
            kept = [line if line.endswith("\n") else line + "\n" for line in kept]
            partial = metrics_path.with_name(f".{metrics_path.name}.tmp-{os.getpid()}")
            with writing(metrics_path):
                partial.write_text("".join(kept))
                os.replace(partial, metrics_path)
        with writing(metrics_path):  # a new run starts a new file
            metrics_file = open(metrics_path, "a" if step else "w")  # noqa: SIM115 (closed below)
        disc_params = count_parameters(disc) if disc is not None else 0
        print(
            f"mixelbo-train: {config.model} ({count_parameters(vae) / 1e6:.2f} M VAE, "
            f"{disc_params / 1e6:.2f} M discriminator parameters), objective {config.objective}"
            f"{'' if disc is not None else ' without GAN'}, {len(train_ds)} train / "
            f"{len(test_ds)} test images, {device}, {precision}, world size {world}; "
            f"run folder {run_dir}"
            + (f"; resuming at step {step}" if step else "")
            + (f" with changed options: {describe_changes(changes)}" if changes else ""),
            file=sys.stderr,
        )

    def checkpoint() -> Path:
        """Every rank's RNG state, gathered; rank 0 writes (the networks are identical)."""
        rng = [capture_rng_state()]
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        path = run_dir / "checkpoints" / f"step_{step:08d}"
        if is_main:
            state = {
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "optimizer_vae": opt_vae.state_dict(),
                "optimizer_disc": opt_disc.state_dict() if opt_disc is not None else None,
                "scaler": scaler.state_dict(),
                "rng": rng,
                "world_size": world,
            }
            path = save_checkpoint(
                run_dir, step, vae=vae, discriminator=disc, state=state, config=recorded,
                keep=config.keep_checkpoints,
            )  # fmt: skip
        if world > 1:
            dist.barrier()
        return path

    @torch.no_grad()
    def log_images_and_diagnostics() -> None:
        """Test-split KL diagnostics and image grids; uses mu and a private RNG (exact resume)."""
        if writer is None or eval_batch is None:
            return
        from torchvision.utils import make_grid

        vae.eval()
        x = eval_batch.to(device, memory_format=memory_format)
        with autocast:
            mu, logvar = vae.encode(x)
            reconstruction = vae.decode(mu)
            prior = torch.randn(
                min(16, len(x)), vae.latent_dim, generator=torch.Generator().manual_seed(0)
            )
            samples = vae.decode(prior.to(device))
        vae.train()
        mu, logvar = mu.float(), logvar.float()
        kl_dims = MF.kl_per_dim(mu, logvar)
        writer.add_scalar("test/l1", (x - reconstruction).abs().float().mean().item(), step)
        writer.add_scalar("test/active_units", MF.active_units(mu).item(), step)
        writer.add_scalar("test/mean_posterior_sigma", MF.mean_posterior_sigma(logvar).item(), step)
        writer.add_scalar(
            "test/kl_g_mixture", MF.mixture_kl(mu, logvar, None, variance="mixture").item(), step
        )
        writer.add_histogram("test/kl_per_dim", kl_dims.cpu(), step)
        shown = min(8, len(x))
        pairs = torch.cat([x[:shown], reconstruction[:shown]]).float()
        writer.add_image("images/test_and_reconstruction", make_grid(_to_image(pairs), shown), step)
        writer.add_image("images/prior_samples", make_grid(_to_image(samples.float()), 4), step)

    # ---- the loop (Algorithm 1) -------------------------------------------------------------
    progress = tqdm(
        total=total_steps * config.batch_size, initial=step * config.batch_size, unit="img",
        unit_scale=True, dynamic_ncols=True, disable=not (config.progress and is_main),
        desc=f"{config.model} {config.objective}",
    )  # fmt: skip
    tic, tic_step = time.perf_counter(), step
    failed = False
    # the first step each loss term was non-finite, on the device (a scalar until step 1)
    first_bad = torch.full((), _NEVER, dtype=torch.int64, device=device)
    last_layer = {"last_layer": vae.last_layer} if config.adaptive_weight else {}
    # The sampler runs in this process, so one loader with persistent workers serves every
    # epoch: set the sampler's epoch and start batch, and the dataset's epoch (its flips).
    sampler = EpochBatchSampler(len(train_ds), config.batch_size, config.seed, 0, 0, rank, world)
    loader = DataLoader(
        train_ds, batch_sampler=sampler, num_workers=num_workers, pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(config.seed),  # leaves the global RNG alone
    )  # fmt: skip
    try:
        while step < total_steps:
            train_ds.set_epoch(epoch)
            sampler.epoch, sampler.start = epoch, batch_in_epoch
            for x in loader:
                x = to_unit_range(x.to(device, non_blocking=True, memory_format=memory_format))

                # 1. encode, sample, decode; score x_hat; ELBO_reg (eq. 22)
                with autocast:
                    x_hat, mu, logvar, z = vae_model(x)
                    terms = objective(x, x_hat, mu, logvar, z, step=step, **last_layer)
                # 2. VAE (generator) step
                opt_vae.zero_grad(set_to_none=True)
                scaler.scale(terms.total).backward()
                scaler.step(opt_vae)
                # 3. discriminator step on eq. 23 (x_hat detached inside)
                losses = terms._asdict()
                if opt_disc is not None:
                    with autocast:
                        disc_loss = objective.discriminator_loss(x, x_hat, step=step)
                    opt_disc.zero_grad(set_to_none=True)  # drops grads left by step 2
                    scaler.scale(disc_loss).backward()
                    scaler.step(opt_disc)
                    losses["discriminator"] = disc_loss
                scaler.update()
                step += 1
                batch_in_epoch += 1
                if batch_in_epoch == batches_per_epoch:
                    epoch, batch_in_epoch = epoch + 1, 0

                # 4. check every term on the device, no sync: keep the first non-finite step
                values = torch.stack([v.detach().float() for v in losses.values()])
                first_bad = torch.minimum(first_bad, torch.where(values.isfinite(), _NEVER, step))
                progress.update(config.batch_size)

                # 5. logs, images, checkpoints, each after reading the check back (one sync)
                log_now = step % config.log_every == 0 or step == total_steps
                images_now = step % config.image_every == 0 or step == total_steps
                checkpoint_now = step % config.checkpoint_every == 0 or step == total_steps
                if log_now or images_now or checkpoint_now:
                    _check_finite(first_bad, list(losses), world, last_checkpoint)
                if log_now and world > 1:  # the logged terms are the means over the ranks
                    dist.all_reduce(values)
                    values /= world
                if log_now and is_main:
                    assert writer is not None and metrics_file is not None
                    named = dict(zip(losses, values.tolist(), strict=True))
                    elapsed = time.perf_counter() - tic
                    rate = (step - tic_step) * config.batch_size / max(elapsed, 1e-9)
                    tic, tic_step = time.perf_counter(), step
                    mu_f, logvar_f = mu.detach().float(), logvar.detach().float()
                    named["kl_per_dim_mean"] = MF.kl_per_dim(mu_f, logvar_f).mean().item()
                    named["mean_posterior_sigma"] = MF.mean_posterior_sigma(logvar_f).item()
                    named["active_units_batch"] = float(MF.active_units(mu_f).item())
                    with writing(tensorboard_dir):
                        for key, value in named.items():
                            writer.add_scalar(f"train/{key}", value, step)
                        writer.add_scalar("speed/images_per_s", rate, step)
                    with writing(metrics_path):
                        line = json.dumps({"step": step, "epoch": epoch, **named})
                        metrics_file.write(line + "\n")
                        metrics_file.flush()
                    progress.set_postfix(loss=f"{named['total']:.4g}", step=step, refresh=False)
                if images_now:
                    with writing(tensorboard_dir):
                        log_images_and_diagnostics()
                if checkpoint_now:
                    with writing(run_dir / "checkpoints" / f"step_{step:08d}"):
                        last_checkpoint = checkpoint()
                if step >= total_steps:
                    break
    except BaseException:
        failed = True
        raise
    finally:
        progress.close()
        # after a failure, closing may fail again (a full disk): the first error is the one
        closing: list[Exception] = []
        for path, handle in ((tensorboard_dir, writer), (metrics_path, metrics_file)):
            try:
                if handle is not None:
                    with writing(path):
                        handle.close()
            except Exception as error:
                closing.append(error)
        if closing and not failed:
            raise closing[0]
    return run_dir


def main(argv: list[str] | None = None) -> int:
    """The ``mixelbo-train`` command; returns the exit status.

    Returns:
        0 when the run finished; 2 for a usage error or a run folder that cannot be used as
        asked (in use, a mismatched resume); 1 when the run stopped on a non-finite loss or a
        full disk. Each error is one line on stderr, without a traceback.
    """
    try:
        config = config_from_args(argv)
    except ValueError as error:
        print(f"mixelbo-train: error: {error}", file=sys.stderr)
        return 2
    rank = int(os.environ.get("RANK", "0"))
    try:
        run_dir = train(config)
    except RunFolderError as error:
        if rank == 0:  # every rank raises it, with the same message
            print(f"mixelbo-train: error: {error}", file=sys.stderr)
        return 2
    except DiskFullError as error:
        print(f"mixelbo-train: error: {error}", file=sys.stderr)
        return 1
    except NonFiniteLossError as error:
        print(f"mixelbo-train: {error}", file=sys.stderr)
        return 1
    if rank == 0:
        print(f"mixelbo-train: done; run folder {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
