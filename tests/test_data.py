"""Tests of mixelbo_reference.data: listing, the CelebA-HQ split, decoding, flips, bad files."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mixelbo_reference.data import (
    CorruptImageWarning,
    ImageFolderDataset,
    PackedDataset,
    build_datasets,
    fixed_batch,
    flip_decision,
    list_images,
    split_files,
    to_channels_first,
    to_unit_range,
)
from mixelbo_reference.procedural import ProceduralDataset


def _save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _random_pixels(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _expected(pixels: np.ndarray) -> torch.Tensor:
    """The pixels channels first, as uint8."""
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


def _float_path(pixels: np.ndarray) -> np.ndarray:
    """The float32 scaling ``u / 127.5 - 1`` in numpy (the datasets' former item values)."""
    return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def test_list_images_is_recursive_filtered_and_string_sorted(tmp_path: Path) -> None:
    names = [
        "b.png",
        "a.JPG",
        "Z.png",
        "2.png",
        "10.png",
        "sub/c.webp",
        "sub/a.jpeg",
        "sub/deeper/z.PNG",
        "dir.png/inner.png",
        "notes.txt",
        "anim.gif",
        "sub/raw.tiff",
        "jpg",
    ]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == [
        "10.png",
        "2.png",
        "Z.png",
        "a.JPG",
        "b.png",
        "dir.png/inner.png",
        "sub/a.jpeg",
        "sub/c.webp",
        "sub/deeper/z.PNG",
    ]
    assert all(p.is_absolute() == tmp_path.is_absolute() for p in list_images(tmp_path))


def test_list_images_rejects_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"root must be an existing folder.*missing"):
        list_images(tmp_path / "missing")


def test_celeba_hq_split_takes_the_first_24000_sorted_files(tmp_path: Path) -> None:
    names = [f"{i:05d}.jpg" for i in range(30_000)]
    shuffled = list(names)
    random.Random(0).shuffle(shuffled)  # creation order must not matter
    for name in shuffled:
        (tmp_path / name).touch()
    train, test = split_files(list_images(tmp_path), 24_000)
    assert [p.name for p in train] == names[:24_000]
    assert [p.name for p in test] == names[24_000:]

    # The trainer's entry point gives the same split; nothing is decoded to build it.
    train_set, test_set = build_datasets(str(tmp_path), image_size=256, train=24_000, seed=0)
    assert isinstance(train_set, ImageFolderDataset) and isinstance(test_set, ImageFolderDataset)
    assert (len(train_set), len(test_set)) == (24_000, 6_000)
    assert train_set.files[-1].name == "23999.jpg" and test_set.files[0].name == "24000.jpg"
    assert train_set.flip and not test_set.flip


def test_fraction_split_and_bad_train_values() -> None:
    items = list(range(10))
    assert split_files(items, 0.8) == ([0, 1, 2, 3, 4, 5, 6, 7], [8, 9])
    assert split_files(items, 0.25) == ([0, 1, 2], [3, 4, 5, 6, 7, 8, 9])  # 2.5 rounds up
    assert split_files(items, 1) == ([0], [1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert split_files(items, 9) == ([0, 1, 2, 3, 4, 5, 6, 7, 8], [9])
    for bad in (0, 10, -1, 0.0, 1.0, 1.5, -0.2, 0.01, 0.99, float("nan"), True, "5", None):
        with pytest.raises(ValueError, match="train") as error:
            split_files(items, bad)  # type: ignore[arg-type]
        assert str(bad) in str(error.value) or repr(bad) in str(error.value)


def test_images_are_uint8_pixels_channels_first(tmp_path: Path) -> None:
    square = _random_pixels(1, 16, 16)
    tall = np.full((24, 16, 3), 255, dtype=np.uint8)  # white margins are cropped away
    tall[4:20] = _random_pixels(2, 16, 16)
    wide = np.zeros((16, 20, 3), dtype=np.uint8)
    wide[:, 2:18] = _random_pixels(3, 16, 16)
    files = [
        _save(tmp_path / "a.png", square),
        _save(tmp_path / "b.png", tall),
        _save(tmp_path / "c.png", wide),
    ]
    dataset = ImageFolderDataset(files, image_size=16)
    for i, center in enumerate([square, tall[4:20], wide[:, 2:18]]):
        image = dataset[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 16, 16)
        assert image.is_contiguous()
        assert torch.equal(image, _expected(center))
    extremes = np.zeros((8, 8, 3), dtype=np.uint8)
    extremes[:, 4:] = 255
    dataset = ImageFolderDataset([_save(tmp_path / "e.png", extremes)], image_size=8)
    assert set(dataset[0].unique().tolist()) == {0, 255}
    assert set(to_unit_range(dataset[0]).unique().tolist()) == {-1.0, 1.0}


def _all_byte_values(memory_format: torch.memory_format) -> torch.Tensor:
    """(2, 3, 16, 16) uint8 holding every value 0..255 in each channel, in ``memory_format``."""
    values = torch.arange(256, dtype=torch.uint8).view(16, 16)
    batch = torch.stack([values, values.flip(0), values.t()]).expand(2, 3, 16, 16)
    return batch.contiguous(memory_format=memory_format)


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)], ids=["cpu", "cuda"]
)
@pytest.mark.parametrize(
    "memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"]
)
def test_to_unit_range_is_bit_equal_to_the_float_path(
    device: str, memory_format: torch.memory_format
) -> None:
    batch = _all_byte_values(memory_format)
    scaled = to_unit_range(batch.to(device))
    assert scaled.dtype == torch.float32 and scaled.device.type == device
    assert scaled.is_contiguous(memory_format=memory_format)
    expected = torch.from_numpy(_float_path(batch.numpy()))
    # bit patterns, not values: a result one ulp off (e.g. u * (1 / 127.5)) fails
    assert torch.equal(scaled.cpu().view(torch.int32), expected.view(torch.int32))
    assert scaled.min() == -1 and scaled.max() == 1
    with pytest.raises(ValueError, match=r"must be a uint8 tensor, got torch\.float32"):
        to_unit_range(expected)


def test_to_channels_first_copies_any_uint8_layout() -> None:
    pixels = _random_pixels(9, 5, 7)
    mirrored = pixels[:, ::-1]  # negative strides, as a flip gives
    read_only = pixels.copy()
    read_only.flags.writeable = False  # as a memory-mapped row is
    for source in (pixels, mirrored, read_only):
        original = source.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch warns when it wraps a read-only array
            image = to_channels_first(source)
        assert image.dtype == torch.uint8 and image.is_contiguous()
        assert torch.equal(image, _expected(original))
        image.add_(1)  # a copy: writing to it leaves the source alone
        assert np.array_equal(source, original)
    batch = np.stack([pixels, pixels[::-1]])
    assert torch.equal(to_channels_first(batch)[1], _expected(pixels[::-1]))
    with pytest.raises(ValueError, match=r"uint8 array of shape \(\.\.\., H, W, 3\)"):
        to_channels_first(pixels.astype(np.float32))


def test_resizing_keeps_a_constant_colour_and_uses_a_center_crop(tmp_path: Path) -> None:
    colour = (200, 30, 90)
    image = np.empty((45, 60, 3), dtype=np.uint8)
    image[:] = colour
    dataset = ImageFolderDataset([_save(tmp_path / "flat.png", image)], image_size=32)
    expected = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1)
    assert torch.equal(dataset[0], expected.expand(3, 32, 32))


def test_corrupt_images_are_skipped_with_a_warning_and_counted(tmp_path: Path) -> None:
    first = _random_pixels(4, 8, 8)
    last = _random_pixels(5, 8, 8)
    _save(tmp_path / "a.png", first)
    (tmp_path / "b.jpg").write_bytes(b"this is not a jpeg" * 10)
    _save(tmp_path / "c.png", last)
    good = tmp_path / "good.jpg"
    Image.fromarray(_random_pixels(6, 64, 64)).save(good, quality=95)
    (tmp_path / "d_truncated.jpg").write_bytes(good.read_bytes()[:300])
    good.unlink()
    files = list_images(tmp_path)
    assert [f.name for f in files] == ["a.png", "b.jpg", "c.png", "d_truncated.jpg"]
    dataset = ImageFolderDataset(files, image_size=8)

    with pytest.warns(CorruptImageWarning, match=r"b\.jpg"):
        substitute = dataset[1]
    assert torch.equal(substitute, _expected(last))
    assert dataset.skipped == 1 and dataset.skipped_files == [tmp_path / "b.jpg"]

    with pytest.warns(CorruptImageWarning, match="truncated"):
        wrapped = dataset[3]  # the last file is bad: wraps around to the first
    assert torch.equal(wrapped, _expected(first))
    assert dataset.skipped == 2

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known bad file is not re-read or re-reported
        assert torch.equal(dataset[1], substitute)
    assert dataset.skipped == 2


def test_corrupt_images_found_in_dataloader_workers_are_counted(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", _random_pixels(7, 8, 8))
    (tmp_path / "b.jpg").write_bytes(b"\x00" * 100)
    _save(tmp_path / "c.png", _random_pixels(8, 8, 8))
    dataset = ImageFolderDataset(list_images(tmp_path), image_size=8)
    loader = DataLoader(dataset, batch_size=3, num_workers=1)
    (batch,) = list(loader)
    assert batch.shape == (3, 3, 8, 8)
    assert dataset.skipped == 1 and [f.name for f in dataset.skipped_files] == ["b.jpg"]


def test_all_files_unreadable_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"junk")
    dataset = ImageFolderDataset([tmp_path / "a.jpg"], image_size=8)
    with pytest.warns(CorruptImageWarning), pytest.raises(RuntimeError, match="none of the 1"):
        dataset[0]


def _asymmetric_folder(tmp_path: Path, count: int) -> list[Path]:
    return [_save(tmp_path / f"{i:02d}.png", _random_pixels(100 + i, 8, 8)) for i in range(count)]


def test_flips_are_deterministic_in_seed_epoch_index_and_train_only(tmp_path: Path) -> None:
    files = _asymmetric_folder(tmp_path, 24)
    plain = ImageFolderDataset(files, image_size=8, flip=False, seed=3)
    originals = [plain[i] for i in range(len(files))]

    def pattern(dataset: ImageFolderDataset, order: list[int]) -> dict[int, bool]:
        flipped = {}
        for i in order:
            image = dataset[i]
            if torch.equal(image, originals[i]):
                flipped[i] = False
            else:  # otherwise it must be the exact mirror image
                assert torch.equal(image, originals[i].flip(-1))
                flipped[i] = True
        return flipped

    first = ImageFolderDataset(files, image_size=8, flip=True, seed=3)
    second = ImageFolderDataset(files, image_size=8, flip=True, seed=3)
    forward, backward = list(range(24)), list(reversed(range(24)))
    patterns = {}
    for epoch in range(3):
        first.set_epoch(epoch)
        second.set_epoch(epoch)
        patterns[epoch] = pattern(first, forward)
        assert pattern(second, backward) == patterns[epoch]  # order of access is irrelevant
        assert patterns[epoch] == {i: first.is_flipped(i) for i in forward}
        assert 0 < sum(patterns[epoch].values()) < 24
    assert patterns[0] != patterns[1] != patterns[2]
    other_seed = ImageFolderDataset(files, image_size=8, flip=True, seed=4)
    assert pattern(other_seed, forward) != patterns[0]
    for epoch in range(3):
        plain.set_epoch(epoch)
        assert not any(pattern(plain, forward).values())


def test_flip_decision_is_a_fair_coin() -> None:
    decisions = [
        flip_decision(seed, epoch, i)
        for seed in range(2)
        for epoch in range(2)
        for i in range(1000)
    ]
    # Binomial(4000, 1/2): sd 31.6; 4000 fixed draws, so this is deterministic.
    assert abs(sum(decisions) - 2000) < 130
    for bad in ((-1, 0, 0), (0, -1, 0), (0, 0, 1.5)):
        with pytest.raises(ValueError, match="must be an integer >= 0"):
            flip_decision(*bad)  # type: ignore[arg-type]


def test_set_epoch_reaches_persistent_dataloader_workers(tmp_path: Path) -> None:
    files = _asymmetric_folder(tmp_path, 16)
    dataset = ImageFolderDataset(files, image_size=8, flip=True, seed=11)
    loader = DataLoader(dataset, batch_size=16, num_workers=1, persistent_workers=True)
    for epoch in range(2):
        dataset.set_epoch(epoch)
        (batch,) = list(loader)
        assert torch.equal(batch, torch.stack([dataset[i] for i in range(16)]))
    with pytest.raises(ValueError, match="epoch must be an integer >= 0, got -1"):
        dataset.set_epoch(-1)


def test_indexing_protocol_and_fixed_batch(tmp_path: Path) -> None:
    files = _asymmetric_folder(tmp_path, 3)
    dataset = ImageFolderDataset(files, image_size=8)
    assert torch.equal(dataset[-1], dataset[2])
    with pytest.raises(IndexError):
        dataset[3]
    assert len(list(iter(dataset[i] for i in range(len(dataset))))) == 3
    batch = fixed_batch(dataset, 2, start=1)
    assert batch.shape == (2, 3, 8, 8) and batch.dtype == torch.float32
    stacked = np.stack([dataset[1].numpy(), dataset[2].numpy()])
    assert torch.equal(batch, torch.from_numpy(_float_path(stacked)))  # in [-1, 1], as before
    with pytest.raises(ValueError, match="count=4"):
        fixed_batch(dataset, 4)


def test_bad_constructor_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="files must contain"):
        ImageFolderDataset([], image_size=8)
    with pytest.raises(ValueError, match="image_size must be >= 1, got 0"):
        ImageFolderDataset([tmp_path / "a.png"], image_size=0)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -2"):
        ImageFolderDataset([tmp_path / "a.png"], image_size=8, seed=-2)
    with pytest.raises(ValueError, match="path must be a folder written by mixelbo-prepare"):
        PackedDataset(tmp_path)


def test_build_datasets_dispatch_and_errors(tmp_path: Path) -> None:
    train, test = build_datasets(
        None, image_size=32, train=0.75, seed=5, procedural_size=40, cache_dir=tmp_path / "c"
    )
    assert isinstance(train, ProceduralDataset) and isinstance(test, ProceduralDataset)
    assert (len(train), len(test)) == (30, 10)
    assert (train.split, test.split) == ("train", "test")
    assert train.flip and train.seed == 5 and not test.flip
    assert train[0].shape == (3, 32, 32)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="contains no image"):
        build_datasets(str(empty), image_size=32, train=0.5, seed=0)
    with pytest.raises(ValueError, match="data must be None, a folder"):
        build_datasets(str(tmp_path / "nothing-here"), image_size=32, train=0.5, seed=0)
    files = _asymmetric_folder(tmp_path / "few", 3)
    with pytest.raises(ValueError, match="train must be a count in \\[1, 2\\] for 3 files"):
        build_datasets(str(files[0].parent), image_size=8, train=3, seed=0)
