"""Feature networks for the sample-quality metrics, trained by the project on the training split.

Domain FID uses a network trained on the domain (the usual practice on MNIST): Inception-v3's
ImageNet features say little about 32x32 digits or the embedded procedural images. This module
trains, once per dataset, a small CNN (:class:`FeatureNet`) and caches it:

- ``--data mnist``: a digit classifier (cross-entropy on :attr:`MnistDataset.labels`); its
  quality is the accuracy on the 1000 test digits;
- the embedded procedural dataset: a factor regressor (mean squared error on the standardised
  factors; circular factors as ``(cos, sin)`` of their angle, discrete ones one-hot); its
  quality is the R^2 on the test split, per factor and averaged.

The features are the penultimate layer (:meth:`FeatureNet.features`, 128 ReLU units, scaled to
a mean square of 1 on the training images). Training is seeded and runs on at most
:data:`MAX_TRAIN_IMAGES` images of the training split, unflipped (a flip would change the
procedural factors), for :data:`TRAIN_STEPS` Adam steps on one CPU thread (these small
convolutions only pay OpenMP overhead with more): 12 s to 55 s at 32x32 on a 2-core machine
shared with other jobs; test accuracy 0.981 on MNIST, mean test R^2 0.77 on the procedural
data at 32x32 (0.69 at 64x64). The weights and the quality go into one safetensors file in
``CACHE/features/`` (``CACHE`` is the run's ``--cache-dir``, else ``$MIXELBO_CACHE``, else
``~/.cache/mixelbo``), named by the task, the dataset, the image size and
:data:`FEATURE_NET_VERSION`; it is written to a temporary file and renamed, so an interrupted
training leaves no partial file and the next evaluation trains again.

Example:
    >>> train, test = TrainConfig(data="mnist").datasets()  # doctest: +SKIP
    >>> net, info = load_or_train_feature_net(train, test, cache_dir=tmp)  # doctest: +SKIP
    >>> info.metric, round(info.score, 2)  # doctest: +SKIP
    ('test accuracy', 0.98)
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as torch_f
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from sklearn.metrics import r2_score
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mixelbo_reference.data import fixed_batch, to_unit_range

__all__ = [
    "CIRCULAR_FACTORS",
    "FEATURE_DIM",
    "FEATURE_NET_VERSION",
    "MAX_TRAIN_IMAGES",
    "TRAIN_STEPS",
    "FeatureNet",
    "FeatureNetInfo",
    "dataset_identity",
    "feature_cache_path",
    "iter_images",
    "load_images",
    "load_or_train_feature_net",
    "train_feature_net",
]

FEATURE_NET_VERSION = 1
"""Part of the cache key; bump it whenever the architecture, targets or training change."""
FEATURE_DIM = 128
"""Width of the penultimate layer, the feature space of FID, KID and precision/recall."""
MAX_TRAIN_IMAGES = 4000
"""Training images used (the first ones of the training split)."""
TRAIN_STEPS = 400
"""Adam steps of batch :data:`BATCH_SIZE` (6.4 epochs of the 4000 MNIST training digits)."""
BATCH_SIZE = 64
LEARNING_RATE = 2e-3
TRAIN_SEED = 0

CIRCULAR_FACTORS: dict[str, float] = {
    "object_hue": 1.0,
    "background_hue": 1.0,
    "texture_phase": 2 * math.pi,
}
"""Periods of the embedded dataset's circular factors (used through cos and sin)."""


class FeatureNet(nn.Module):
    """A small CNN: conv stages down to 4x4, a dense feature layer and a linear head.

    Images larger than 32x32 first pass stride-2 3x3 convolutions (16 channels, ReLU) until
    they are at most 32x32: every pixel is still seen, at a quarter of the cost per halving.
    Then each stage is a 3x3 convolution, a ReLU and a 2x2 max-pool, widths 16, 32, 64. The
    4x4 map (adaptive average pooling for sizes that are not 4 times a power of two) is
    flattened, so the features keep where things are, and goes through ``Linear(1024, 128)``
    and a ReLU: :meth:`features`. The head maps the 128 features to ``outputs`` logits or
    regression targets. 0.16 M parameters at 32x32 (0.16 M plus 2.3 k per stem above).

    Args:
        outputs: Classes or regression targets of the head, ``>= 1``.
        image_size: Side of the square input images, ``>= 8``.

    Shape:
        ``x``: ``(B, 3, S, S)`` float in ``[-1, 1]`` -> ``(B, outputs)``.

    Raises:
        ValueError: For ``outputs < 1`` or ``image_size < 8``.
    """

    def __init__(self, outputs: int, image_size: int) -> None:
        super().__init__()
        if outputs < 1:
            raise ValueError(f"outputs must be >= 1; got {outputs}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8; got {image_size}")
        self.outputs, self.image_size = int(outputs), int(image_size)
        layers: list[nn.Module] = []
        channels, size = 3, int(image_size)
        while size > 32:  # stride-2 stems bring large images to 32x32 at little cost
            layers += [nn.Conv2d(channels, 16, 3, stride=2, padding=1), nn.ReLU()]
            channels, size = 16, (size + 1) // 2
        stages = max(1, math.ceil(math.log2(size / 4)))
        for stage in range(stages):
            width = (16, 32, 64)[min(stage, 2)]
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(channels * 16, FEATURE_DIM)]
        layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(FEATURE_DIM, self.outputs)
        self.register_buffer("feature_scale", torch.ones(()))

    def features(self, x: Tensor) -> Tensor:
        """The penultimate layer times :attr:`feature_scale`, ``(B, 3, S, S)`` -> ``(B, 128)``.

        The scale (set after training) gives the training images' features a mean square of 1
        per unit, the range KID's kernel ``(x.y / d + 1)^3`` is made for (Inception's pool
        features are of that order).
        """
        return self.body(x) * self.feature_scale

    def forward(self, x: Tensor) -> Tensor:
        """The head's outputs, ``(B, 3, S, S)`` -> ``(B, outputs)``."""
        return self.head(self.body(x))


@dataclass(frozen=True)
class FeatureNetInfo:
    """What a feature network is, how good it is and where it is cached.

    Attributes:
        task: ``"mnist-classifier"`` or ``"procedural-factor-regressor"``.
        dataset: The dataset identity of the cache key (:func:`dataset_identity`).
        image_size: Side of its input images.
        version: :data:`FEATURE_NET_VERSION` it was trained with.
        metric: ``"test accuracy"`` or ``"test R^2"``.
        score: That metric on the dataset's test split.
        per_target: The R^2 of each factor (regressor; empty for the classifier).
        feature_dim: Width of the features.
        parameters: Trainable parameters.
        train_images: Training images used.
        test_images: Test images scored.
        steps: Adam steps.
        train_seconds: Wall time of the training (when it was trained, not loaded).
        path: The cache file.
        from_cache: Whether this evaluation loaded it rather than trained it.
    """

    task: str
    dataset: str
    image_size: int
    version: int
    metric: str
    score: float
    per_target: dict[str, float]
    feature_dim: int
    parameters: int
    train_images: int
    test_images: int
    steps: int
    train_seconds: float
    path: str
    from_cache: bool = field(default=False)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types, for ``metrics.json``."""
        return asdict(self)


def dataset_identity(dataset: Dataset[Tensor]) -> tuple[str, str] | None:
    """``(task, identity)`` of a dataset the project trains a feature net for, else ``None``.

    The identity names everything that determines the images: ``mnist-split<seed>-n<size>`` for
    ``--data mnist``; ``procedural-g<generator version>-n<size>-seed<seed>`` for a split of the
    embedded dataset. Image folders get ``None`` (Inception-v3 features, with local weights).
    """
    from mixelbo_reference.mnist import SPLIT_SEED, MnistDataset
    from mixelbo_reference.procedural import GENERATOR_VERSION, ProceduralDataset

    if isinstance(dataset, MnistDataset):
        return "mnist-classifier", f"mnist-split{SPLIT_SEED}-n{len(dataset)}"
    if isinstance(dataset, ProceduralDataset):
        identity = f"procedural-g{GENERATOR_VERSION}-n{dataset.size}-seed{dataset.generation_seed}"
        return "procedural-factor-regressor", identity
    return None


def feature_cache_path(
    cache_dir: str | os.PathLike[str] | None, task: str, identity: str, image_size: int
) -> Path:
    """``CACHE/features/<task>-<identity>-s<size>-v<version>.safetensors``.

    ``cache_dir`` ``None`` means ``$MIXELBO_CACHE``, else ``~/.cache/mixelbo``.
    """
    from mixelbo_reference.procedural import default_cache_dir

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = f"{task}-{identity}-s{image_size}-v{FEATURE_NET_VERSION}.safetensors"
    return root / "features" / name


def load_images(
    dataset: Dataset[Tensor], count: int | None = None, *, batch_size: int = 256
) -> Tensor:
    """The first ``count`` images of ``dataset``, unflipped, as float32 ``(N, 3, H, W)`` in [-1, 1].

    Read through :func:`mixelbo_reference.data.fixed_batch` (whatever dtype the items have) on
    a shallow copy with its flips turned off, so the images match the dataset's stored ones
    (and, for the procedural data, its factors).

    Args:
        dataset: Any of the trainer's datasets.
        count: Images to read (default all).
        batch_size: Images stacked per call of ``fixed_batch``.

    Returns:
        The images.

    Raises:
        ValueError: If ``count`` is not in ``[1, len(dataset)]``.
    """
    return torch.cat(list(iter_images(dataset, count, batch_size=batch_size)))


def iter_images(
    dataset: Dataset[Tensor], count: int | None = None, *, batch_size: int = 256
) -> Iterator[Tensor]:
    """The first ``count`` images of ``dataset``, unflipped, in float32 batches in [-1, 1].

    As :func:`load_images`, one batch of at most ``batch_size`` images at a time (so large
    images need not all be in memory).

    Raises:
        ValueError: If ``count`` is not in ``[1, len(dataset)]`` or ``batch_size < 1``.
    """
    total = len(dataset)  # type: ignore[arg-type]
    count = total if count is None else count
    if not 1 <= count <= total:
        raise ValueError(f"count must be in [1, {total}] for this dataset; got {count}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    unflipped = copy.copy(dataset)
    if getattr(unflipped, "flip", False):
        unflipped.flip = False  # type: ignore[attr-defined]
    for start in range(0, count, batch_size):
        yield fixed_batch(unflipped, min(batch_size, count - start), start).float()


def _regression_targets(
    factors: np.ndarray,
    names: list[str],
    kinds: list[str],
    reference: np.ndarray,
) -> tuple[np.ndarray, list[tuple[str, slice]]]:
    """Targets of the factor regressor and the columns of each factor.

    Continuous factors are standardised with ``reference``'s (the training split's) mean and
    sd; circular ones (:data:`CIRCULAR_FACTORS`) become ``(cos, sin)``; discrete ones one-hot
    over the values seen in ``reference``.
    """
    columns: list[np.ndarray] = []
    spans: list[tuple[str, slice]] = []
    width = 0
    for k, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        value, seen = factors[:, k].astype(np.float64), reference[:, k].astype(np.float64)
        if name in CIRCULAR_FACTORS:
            angle = 2 * np.pi * value / CIRCULAR_FACTORS[name]
            block = np.stack([np.cos(angle), np.sin(angle)], axis=1)
        elif kind == "discrete":
            classes = np.unique(seen)
            block = (value[:, None] == classes[None, :]).astype(np.float64)
        else:
            scale = seen.std()
            block = ((value - seen.mean()) / (scale if scale > 0 else 1.0))[:, None]
        columns.append(block)
        spans.append((name, slice(width, width + block.shape[1])))
        width += block.shape[1]
    return np.concatenate(columns, axis=1).astype(np.float32), spans


def _task_data(
    task: str, dataset: Dataset[Tensor], reference: Dataset[Tensor]
) -> tuple[Tensor, list[tuple[str, slice]]]:
    """The targets of ``dataset`` for ``task``: int64 labels or float32 regression targets."""
    if task == "mnist-classifier":
        return torch.as_tensor(np.asarray(dataset.labels), dtype=torch.int64), []  # type: ignore[attr-defined]
    targets, spans = _regression_targets(
        np.asarray(dataset.factors),  # type: ignore[attr-defined]
        list(dataset.factor_names),  # type: ignore[attr-defined]
        list(dataset.factor_kinds),  # type: ignore[attr-defined]
        np.asarray(reference.factors),  # type: ignore[attr-defined]
    )
    return torch.from_numpy(targets), spans


@torch.no_grad()
def _predict(net: FeatureNet, images: Tensor, device: torch.device) -> Tensor:
    net.eval()
    return torch.cat(
        [net(images[i : i + 256].to(device)).float().cpu() for i in range(0, len(images), 256)]
    )


def _score(
    task: str, predicted: Tensor, truth: Tensor, spans: list[tuple[str, slice]]
) -> tuple[str, float, dict[str, float]]:
    """``(metric, score, per-target R^2)`` of a feature net's test predictions."""
    if task == "mnist-classifier":
        return "test accuracy", float((predicted.argmax(1) == truth).double().mean()), {}
    per_target = {
        name: float(
            r2_score(
                truth[:, span].double().numpy(),
                predicted[:, span].double().numpy(),
                multioutput="variance_weighted",
            )
        )
        for name, span in spans
    }
    return "test R^2", float(np.mean(list(per_target.values()))), per_target


def train_feature_net(
    train: Dataset[Tensor],
    test: Dataset[Tensor],
    task: str,
    *,
    steps: int = TRAIN_STEPS,
    max_train_images: int = MAX_TRAIN_IMAGES,
    seed: int = TRAIN_SEED,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[FeatureNet, dict[str, Any]]:
    """Train a :class:`FeatureNet` for ``task`` on ``train`` and score it on ``test``.

    Seeded (the weights, the batches): the same data, seed and machine give the same network.
    Adam (learning rate 2e-3, batch 64) for ``steps`` steps on the first ``max_train_images``
    images of ``train``, unflipped; cross-entropy for the classifier, mean squared error on the
    targets of the regressor.

    Args:
        train, test: The dataset's splits (``MnistDataset`` for ``"mnist-classifier"``, a
            ``ProceduralDataset`` for ``"procedural-factor-regressor"``).
        task: ``"mnist-classifier"`` or ``"procedural-factor-regressor"``.
        steps: Optimizer steps, ``>= 1``.
        max_train_images: Cap on the training images, ``>= 2``.
        seed: Seed of the initialisation and the batch order.
        device: Where to train.
        progress: Show a tqdm progress bar.

    Returns:
        The network (eval mode, on CPU) and its record: ``metric``, ``score``, ``per_target``,
        ``train_images``, ``test_images``, ``steps``, ``parameters``, ``train_seconds``.

    Raises:
        ValueError: On an unknown ``task`` or ``steps`` / ``max_train_images`` out of range.
    """
    if task not in ("mnist-classifier", "procedural-factor-regressor"):
        raise ValueError(
            f"task must be 'mnist-classifier' or 'procedural-factor-regressor'; got {task!r}"
        )
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    if max_train_images < 2:
        raise ValueError(f"max_train_images must be >= 2; got {max_train_images}")
    started = time.perf_counter()
    torch_device = torch.device(device)
    count = min(len(train), max_train_images)  # type: ignore[arg-type]
    # uint8 in memory (a quarter of float32), exact: the images come from uint8
    images = ((load_images(train, count) + 1) * 127.5).round().to(torch.uint8)
    targets, spans = _task_data(task, train, train)
    targets = targets[:count]
    outputs = 10 if task == "mnist-classifier" else targets.shape[1]
    threads = torch.get_num_threads()
    if torch_device.type == "cpu":
        torch.set_num_threads(1)  # tiny convolutions: more threads only add OpenMP overhead
    try:
        net = _fit(task, images, targets, outputs, steps, seed, torch_device, progress)
        predicted = _predict(net, load_images(test), torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    test_targets, _ = _task_data(task, test, train)
    metric, score, per_target = _score(task, predicted, test_targets, spans)
    record = {
        "metric": metric,
        "score": score,
        "per_target": per_target,
        "train_images": count,
        "test_images": len(test),  # type: ignore[arg-type]
        "steps": steps,
        "parameters": sum(p.numel() for p in net.parameters()),
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    return net, record


@torch.enable_grad()  # also when called under no_grad, e.g. from mixelbo-eval
def _fit(
    task: str,
    images: Tensor,
    targets: Tensor,
    outputs: int,
    steps: int,
    seed: int,
    device: torch.device,
    progress: bool,
) -> FeatureNet:
    """The seeded training loop of :func:`train_feature_net`; returns the net on CPU."""
    count = len(images)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet(outputs, images.shape[-1]).to(device)
        order = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
        net.train()
        batch = torch.empty(0, dtype=torch.int64)
        for _ in tqdm(range(steps), desc=f"train {task}", unit="step", disable=not progress):
            if len(batch) < BATCH_SIZE:  # a new epoch's permutation, appended
                batch = torch.cat([batch, torch.randperm(count, generator=order)])
            rows, batch = batch[:BATCH_SIZE], batch[BATCH_SIZE:]
            x = to_unit_range(images[rows].to(device))
            y = targets[rows].to(device)
            out = net(x)
            if task == "mnist-classifier":
                loss = torch_f.cross_entropy(out, y)
            else:
                loss = torch_f.mse_loss(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    net = net.cpu().eval()
    with torch.no_grad():
        mean_square = torch.cat(
            [net.body(to_unit_range(images[i : i + 256])).square() for i in range(0, count, 256)]
        ).mean()
        net.feature_scale.fill_(float(mean_square.clamp_min(1e-12).rsqrt()))
    return net


def _atomic_save_net(path: Path, net: FeatureNet, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, temporary, metadata)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _load_net(path: Path) -> tuple[FeatureNet, dict[str, Any]] | None:
    """The cached network and its record, or ``None`` if the file is unreadable or stale."""
    try:
        with safe_open(str(path), framework="pt") as stream:
            record = json.loads(stream.metadata()["record"])
            state = {key: stream.get_tensor(key) for key in stream.keys()}  # noqa: SIM118
        net = FeatureNet(int(record["outputs"]), int(record["image_size"]))
        net.load_state_dict(state)
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError):
        return None
    return net.eval(), record


def load_or_train_feature_net(
    train: Dataset[Tensor],
    test: Dataset[Tensor],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    steps: int = TRAIN_STEPS,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[FeatureNet, FeatureNetInfo] | None:
    """The dataset's cached feature network, trained first if it is not in the cache.

    Args:
        train, test: The splits of ``--data mnist`` or of the embedded procedural dataset.
        cache_dir: Cache root (``None``: ``$MIXELBO_CACHE``, else ``~/.cache/mixelbo``).
        steps: Optimizer steps if it has to be trained (part of the cache key when not the
            default :data:`TRAIN_STEPS`).
        device: Where to train.
        progress: Show a progress bar while training.

    Returns:
        ``(network, info)``, or ``None`` for a dataset with no project feature network (an
        image folder).
    """
    identity = dataset_identity(train)
    if identity is None:
        return None
    task, name = identity
    image_size = int(load_images(train, 1).shape[-1])
    if steps != TRAIN_STEPS:
        name += f"-steps{steps}"
    path = feature_cache_path(cache_dir, task, name, image_size)
    loaded = _load_net(path) if path.is_file() else None
    if loaded is not None:
        net, record = loaded
        from_cache = True
    else:
        net, record = train_feature_net(
            train, test, task, steps=steps, device=device, progress=progress
        )
        record.update(outputs=net.outputs, image_size=image_size)
        _atomic_save_net(path, net, {"record": json.dumps(record)})
        from_cache = False
    info = FeatureNetInfo(
        task=task,
        dataset=name,
        image_size=image_size,
        version=FEATURE_NET_VERSION,
        metric=str(record["metric"]),
        score=float(record["score"]),
        per_target={k: float(v) for k, v in record["per_target"].items()},
        feature_dim=FEATURE_DIM,
        parameters=int(record["parameters"]),
        train_images=int(record["train_images"]),
        test_images=int(record["test_images"]),
        steps=int(record["steps"]),
        train_seconds=float(record["train_seconds"]),
        path=str(path),
        from_cache=from_cache,
    )
    return net, info
