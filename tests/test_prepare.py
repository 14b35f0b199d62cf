"""Tests of mixelbo-prepare (mixelbo_reference.prepare) and reading its output (PackedDataset)."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixelbo_reference import prepare
from mixelbo_reference.data import (
    CorruptImageWarning,
    ImageFolderDataset,
    PackedDataset,
    build_datasets,
    list_images,
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Five readable images of several sizes and formats, one subfolder, one corrupt file."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    shapes = {"a.png": (16, 16), "b.png": (20, 16), "d.webp": (16, 24), "sub/e.png": (40, 40)}
    for name, (height, width) in shapes.items():
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / name, lossless=True)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "f.jpg")
    (root / "c.jpg").write_bytes(b"\xff\xd8 definitely not a whole jpeg")
    return root


def test_round_trip_equals_the_folder_dataset_and_counts_the_corrupt_file(
    folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "packed"
    with pytest.warns(CorruptImageWarning, match=r"c\.jpg"):
        status = prepare.main([str(folder), str(out), "--size", "16", "--workers", "0"])
    assert status == 0
    index = json.loads((out / "index.json").read_text())
    assert index["files"] == ["a.png", "b.png", "c.jpg", "d.webp", "f.jpg", "sub/e.png"]
    assert [entry["file"] for entry in index["skipped"]] == ["c.jpg"]
    assert index["image_size"] == 16

    array = np.load(out / "images.npy", mmap_mode="r")
    assert isinstance(array, np.memmap) and array.dtype == np.uint8
    assert array.shape == (6, 16, 16, 3)
    assert not array[2].any()  # the skipped file's row is zeros

    with pytest.warns(CorruptImageWarning, match="1 of 6 files"):
        packed = PackedDataset(out)
    assert isinstance(packed.array, np.memmap)  # memory-mapped, not loaded
    assert packed.skipped == 1 and packed.skipped_files == ["c.jpg"]
    good = [f for f in list_images(folder) if f.name != "c.jpg"]
    decoded = ImageFolderDataset(good, image_size=16)
    assert len(packed) == len(decoded) == 5
    for i in range(5):
        image = packed[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 16, 16)
        assert torch.equal(image, decoded[i])
    # Independent check of one row: a 16x16 PNG is stored unchanged.
    original = np.asarray(Image.open(folder / "a.png").convert("RGB"))
    assert np.array_equal(array[0], original)


def test_worker_processes_give_the_same_array(folder: Path, tmp_path: Path) -> None:
    with pytest.warns(CorruptImageWarning):
        prepare.pack_folder(folder, tmp_path / "serial", 12, workers=0, progress=False)
        prepare.pack_folder(folder, tmp_path / "parallel", 12, workers=2, progress=False)
    serial = np.load(tmp_path / "serial" / "images.npy")
    parallel = np.load(tmp_path / "parallel" / "images.npy")
    assert np.array_equal(serial, parallel)


def test_packed_split_matches_the_folder_split(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "packed"
    with pytest.warns(CorruptImageWarning):
        prepare.pack_folder(folder, out, 16, progress=False)
        train, test = build_datasets(str(out), image_size=16, train=3, seed=1)
    folder_train, folder_test = build_datasets(str(folder), image_size=16, train=3, seed=1)
    assert isinstance(train, PackedDataset) and isinstance(test, PackedDataset)
    # Same positions of the same sorted list; the corrupt c.jpg (position 2) is left out of train.
    assert [Path(f).name for f in folder_train.files] == ["a.png", "b.png", "c.jpg"]
    assert train.files == ["a.png", "b.png"] and train.skipped == 1
    assert test.files == ["d.webp", "f.jpg", "sub/e.png"] and test.skipped == 0
    assert train.flip and not test.flip
    for i in range(3):
        assert torch.equal(test[i], folder_test[i])
    for epoch in range(2):
        train.set_epoch(epoch)
        folder_train.set_epoch(epoch)
        for i in range(2):
            assert torch.equal(train[i], folder_train[i])  # same flips, same pixels
    with pytest.raises(ValueError, match="packed at 16x16 but image_size is 32"):
        build_datasets(str(out), image_size=32, train=3, seed=1)
    with pytest.raises(ValueError, match="indices must lie in"):
        PackedDataset(out, indices=[6])


def test_pickling_sends_the_path_not_the_array(folder: Path, tmp_path: Path) -> None:
    import pickle

    with pytest.warns(CorruptImageWarning):
        prepare.pack_folder(folder, tmp_path / "packed", 16, progress=False)
        packed = PackedDataset(tmp_path / "packed")
    expected = packed[0]
    payload = pickle.dumps(packed)
    assert len(payload) < 16 * 16 * 3 * 5  # smaller than the images themselves
    assert torch.equal(pickle.loads(payload)[0], expected)


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("PATH", "OUT", "--size", "--workers", "--overwrite", "--help"):
        assert option in text
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("mixelbo-prepare") == "mixelbo_reference.prepare:main"


def test_existing_output_is_protected(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        prepare.main([str(folder), str(precious), "--workers", "0"])
    assert exit_info.value.code == 2
    assert "exists and is not a packed folder" in capsys.readouterr().err
    assert (precious / "keep.txt").read_text() == "mine"

    out = tmp_path / "packed"
    with pytest.warns(CorruptImageWarning):
        prepare.pack_folder(folder, out, 8, progress=False)
    with pytest.raises(ValueError, match="pass --overwrite"):
        prepare.pack_folder(folder, out, 16, progress=False)
    with pytest.warns(CorruptImageWarning):
        prepare.pack_folder(folder, out, 16, overwrite=True, progress=False)
    assert np.load(out / "images.npy", mmap_mode="r").shape == (6, 16, 16, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "packed", "precious"]


def test_bad_arguments_exit_with_a_message(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([str(empty), str(tmp_path / "o1")], "contains no image"),
        ([str(folder), str(tmp_path / "o2"), "--size", "0"], "--size) must be an integer >= 1"),
        ([str(folder), str(tmp_path / "o3"), "--workers", "-1"], "--workers) must be an integer"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            prepare.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "images"]


def test_an_interrupted_run_leaves_nothing_behind(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def interrupted(path: str, image_size: int) -> np.ndarray:
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return np.zeros((image_size, image_size, 3), dtype=np.uint8)

    monkeypatch.setattr(prepare, "load_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare.pack_folder(folder, tmp_path / "packed", 8, workers=0, progress=False)
    assert len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]
