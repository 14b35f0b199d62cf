"""The project's feature networks: seeded training, the cache, and their reported quality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mixelbo_reference.features import (
    FEATURE_DIM,
    FeatureNet,
    dataset_identity,
    feature_cache_path,
    load_images,
    load_or_train_feature_net,
    train_feature_net,
)
from mixelbo_reference.procedural import FACTOR_NAMES, ProceduralDataset


@pytest.fixture(scope="module")
def procedural(tmp_path_factory: pytest.TempPathFactory) -> tuple[ProceduralDataset, ...]:
    cache = tmp_path_factory.mktemp("procedural")
    return (
        ProceduralDataset("train", size=96, image_size=32, cache_dir=cache, flip=True),
        ProceduralDataset("test", size=40, image_size=32, cache_dir=cache),
    )


def test_feature_net_shapes_at_several_sizes() -> None:
    for size in (16, 32, 48, 64):
        net = FeatureNet(5, size)
        x = torch.rand(2, 3, size, size) * 2 - 1
        assert net(x).shape == (2, 5) and net.features(x).shape == (2, FEATURE_DIM)
    assert 0.15e6 < sum(p.numel() for p in FeatureNet(10, 32).parameters()) < 0.17e6
    with pytest.raises(ValueError, match="image_size must be >= 8"):
        FeatureNet(3, 4)


def test_load_images_are_the_stored_images_unflipped(procedural) -> None:
    train, _ = procedural
    assert train.flip  # the training split flips; the feature net must see the stored images
    expected = torch.from_numpy(np.array(train.images[:10])).permute(0, 3, 1, 2) / 127.5 - 1
    assert torch.equal(load_images(train, 10, batch_size=3), expected)
    assert train.flip  # the dataset itself is unchanged
    with pytest.raises(ValueError, match=r"count must be in \[1, 96\]"):
        load_images(train, 97)


def test_training_is_seeded(procedural) -> None:
    train, test = procedural
    task = "procedural-factor-regressor"
    first, record = train_feature_net(train, test, task, steps=4, progress=False)
    second, _ = train_feature_net(train, test, task, steps=4, progress=False)
    other, _ = train_feature_net(train, test, task, steps=4, seed=1, progress=False)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name])
    assert not torch.equal(first.head.weight, other.head.weight)
    assert record["train_images"] == 96 and record["test_images"] == 40
    assert set(record["per_target"]) == set(FACTOR_NAMES)
    assert record["score"] == pytest.approx(np.mean(list(record["per_target"].values())))


def test_features_have_unit_mean_square_on_the_training_images(procedural) -> None:
    train, test = procedural
    net, _ = train_feature_net(train, test, "procedural-factor-regressor", steps=4, progress=False)
    with torch.no_grad():
        features = net.features(load_images(train))
    assert features.square().mean().item() == pytest.approx(1.0, rel=1e-4)


def test_regressor_r2_agrees_with_an_explicit_computation(procedural) -> None:
    train, test = procedural
    net, record = train_feature_net(
        train, test, "procedural-factor-regressor", steps=30, progress=False
    )
    with torch.no_grad():
        predicted = net(load_images(test)).double().numpy()
    # targets in factor order: shape one-hot over its 4 values, then x standardised (column 4)
    column = FACTOR_NAMES.index("x")
    x_train, x_test = train.factors[:, column].astype(np.float64), test.factors[:, column]
    truth = (x_test - x_train.mean()) / x_train.std()
    r2 = 1 - ((truth - predicted[:, 4]) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    assert record["per_target"]["x"] == pytest.approx(r2, abs=1e-6)


def test_cache_is_written_atomically_and_reused(procedural, tmp_path: Path) -> None:
    train, test = procedural
    trained = load_or_train_feature_net(train, test, cache_dir=tmp_path, steps=3, progress=False)
    assert trained is not None
    net, info = trained
    assert not info.from_cache and info.train_images == 96
    task, identity = dataset_identity(train)  # type: ignore[misc]
    path = feature_cache_path(tmp_path, task, identity + "-steps3", 32)
    assert info.path == str(path) and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    loaded = load_or_train_feature_net(train, test, cache_dir=tmp_path, steps=3, progress=False)
    assert loaded is not None
    again, again_info = loaded
    assert again_info.from_cache and again_info.score == info.score
    for name, value in net.state_dict().items():
        assert torch.equal(value, again.state_dict()[name])
    path.write_bytes(b"not a safetensors file")  # unreadable: trained again
    retrained = load_or_train_feature_net(train, test, cache_dir=tmp_path, steps=3, progress=False)
    assert retrained is not None and not retrained[1].from_cache


def test_image_folders_get_no_project_network(tmp_path: Path) -> None:
    from PIL import Image

    from mixelbo_reference.data import ImageFolderDataset

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    folder = ImageFolderDataset([tmp_path / "a.png"], 16, flip=False, seed=0)
    assert dataset_identity(folder) is None
    assert load_or_train_feature_net(folder, folder, cache_dir=tmp_path) is None


def test_training_rejects_bad_arguments(procedural) -> None:
    train, test = procedural
    with pytest.raises(ValueError, match="task must be"):
        train_feature_net(train, test, "inception")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train_feature_net(train, test, "procedural-factor-regressor", steps=0)
