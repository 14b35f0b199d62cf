"""What a run folder guarantees: one trainer at a time, kill -9 safety, full disks, resume checks.

The behaviours about processes are tested with real processes: two ``mixelbo-train`` on one
folder, a trainer killed with SIGKILL (while it writes a checkpoint, if the test catches one in
the act) and resumed, two gloo ranks, a forked child, and a real full file system (a small
tmpfs, where the test may mount one). The full-disk paths are also tested in-process by making
a write fail with ``ENOSPC`` halfway through a checkpoint, a log line and an image.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from mixelbo_reference import checkpoint as ckpt
from mixelbo_reference import train as train_module
from mixelbo_reference.checkpoint import latest_checkpoint, list_checkpoints, load_run
from mixelbo_reference.config import TrainConfig, load_toml
from mixelbo_reference.run_folder import (
    RESUME_FREE_OPTIONS,
    RunFolderError,
    RunFolderInUseError,
    RunLock,
    lock_holder,
    resume_changes,
)

pytestmark = pytest.mark.usefixtures("one_thread")

_POSIX_ONLY = pytest.mark.skipif(os.name != "posix", reason="flock and fork are POSIX")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    cache = str(tmp_path_factory.mktemp("procedural-cache"))
    _tiny_config(Path(cache) / "unused", cache).datasets()  # generated once, before any trainer
    return cache


def _tiny_config(run_dir: Path, cache_dir: str, **overrides: Any) -> TrainConfig:
    settings: dict[str, Any] = dict(
        procedural_size=40, train_split=32, run_dir=str(run_dir), cache_dir=cache_dir,
        progress=False, log_every=1, image_every=1000, checkpoint_every=2, device="cpu",
    )  # fmt: skip
    return TrainConfig.preset("tiny-32", **(settings | overrides))


def _argv(run_dir: Path, cache_dir: str, *extra: str) -> list[str]:
    """A tiny-32 run on 40 procedural images, a checkpoint every 2 steps."""
    return [
        "--config", "tiny-32", "--run-dir", str(run_dir), "--procedural-size", "40",
        "--train-split", "32", "--cache-dir", cache_dir, "--no-progress", "--device", "cpu",
        "--log-every", "1", "--image-every", "1000", "--checkpoint-every", "2", *extra,
    ]  # fmt: skip


def _steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def _errors(err: str) -> list[str]:
    """The trainer's error lines (its stderr also has the start-up line)."""
    return [line for line in err.splitlines() if line.startswith("mixelbo-train: error:")]


def _assert_one_line_error(err: str, *parts: str) -> str:
    assert "Traceback" not in err, err
    errors = _errors(err)
    assert len(errors) == 1, err
    for part in parts:
        assert part in errors[0], (part, errors[0])
    return errors[0]


# ---- one trainer per run folder --------------------------------------------------------------


@_POSIX_ONLY
def test_a_locked_folder_refuses_a_second_lock_naming_the_holder(tmp_path: Path) -> None:
    with RunLock.acquire(tmp_path / "run", command="mixelbo-train") as lock:
        assert lock.locked
        holder = lock_holder(tmp_path / "run")
        assert holder is not None and holder["pid"] == os.getpid()
        assert holder["host"] == socket.gethostname() and holder["command"] == "mixelbo-train"
        with pytest.raises(RunFolderInUseError) as refused:  # another open file: refused
            RunLock.acquire(tmp_path / "run")
        message = str(refused.value)
        assert repr(str(tmp_path / "run")) in message
        assert f"mixelbo-train pid {os.getpid()} on host {socket.gethostname()}" in message
    assert lock_holder(tmp_path / "run") is None  # the record is cleared on release
    RunLock.acquire(tmp_path / "run").release()  # and the folder is free again


@_POSIX_ONLY
def test_train_refuses_a_folder_in_use_before_writing_anything(
    tmp_path: Path, cache_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    with RunLock.acquire(run_dir, command="mixelbo-train"):
        assert train_module.main(_argv(run_dir, cache_dir, "--steps", "2")) == 2
    _assert_one_line_error(
        capsys.readouterr().err, f"run folder {str(run_dir)!r} is in use", f"pid {os.getpid()}"
    )
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # no config, log or events
    with RunLock.acquire(run_dir), pytest.raises(RunFolderInUseError):  # so does train()
        train_module.train(_tiny_config(run_dir, cache_dir, steps=2))
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]


@_POSIX_ONLY
def test_a_forked_child_does_not_keep_the_lock_of_a_dead_trainer(tmp_path: Path) -> None:
    # DataLoader workers are forked children of the trainer; when the trainer dies (kill -9)
    # its lock must go with it, even while a worker lives on for a few seconds.
    lock = RunLock.acquire(tmp_path)
    ready, started = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child: its at-fork handlers ran before fork returned)
        os.write(started, b"x")
        time.sleep(60)
        os._exit(0)
    try:
        assert os.read(ready, 1) == b"x"
        lock._forget()  # the trainer's own file descriptor closes, as when it dies
        RunLock.acquire(tmp_path).release()  # free although the child still runs
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(ready)
        os.close(started)


def _start(argv: list[str]) -> subprocess.Popen[str]:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "mixelbo_reference.train", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def _wait_for(condition: Any, timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Trainer subprocesses, killed at the end of the test whatever happens."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.slow
@_POSIX_ONLY
def test_two_trainers_then_kill_9_mid_write_then_resume(
    tmp_path: Path, cache_dir: str, processes: list[subprocess.Popen[str]]
) -> None:
    run_dir = tmp_path / "r1"
    argv = _argv(run_dir, cache_dir, "--steps", "100000", "--num-workers", "1")
    first = _start(argv)
    processes.append(first)
    holds = lambda: (lock_holder(run_dir) or {}).get("pid") == first.pid  # noqa: E731
    _wait_for(lambda: holds() or first.poll() is not None, 300, "the first trainer's lock")
    assert first.poll() is None, first.communicate()

    # a second trainer on the same folder: refused while the first runs, nothing written
    second = _start(argv)
    processes.append(second)
    _, err = second.communicate(timeout=300)
    assert first.poll() is None  # refused while the first one trains, not at its end
    assert second.returncode == 2, err
    _assert_one_line_error(err, f"run folder {str(run_dir)!r} is in use", f"pid {first.pid}")
    events = list((run_dir / "tensorboard").iterdir())
    assert len(events) == 1 and events[0].name.split(".")[-2] == str(first.pid)

    # kill -9 the first, if possible while it writes a checkpoint
    root = run_dir / "checkpoints"
    _wait_for(lambda: len(list_checkpoints(run_dir)) >= 1, 300, "a first checkpoint")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(p.name.endswith(".tmp") for p in root.iterdir()):
        time.sleep(0.002)  # a checkpoint is being written while its temporary folder exists
    first.send_signal(signal.SIGKILL)
    first.communicate()
    partial = [p.name for p in root.iterdir() if p.name.endswith(".tmp")]
    print(f"killed with temporary folders {partial}")  # usually one, mid-write
    latest = latest_checkpoint(run_dir)
    assert latest is not None

    # the next start is not blocked by the dead trainer and resumes from its last checkpoint
    resumed_step = ckpt.checkpoint_step(latest)
    third = _start(["--run-dir", str(run_dir), "--resume", "--steps", str(resumed_step + 2)])
    processes.append(third)
    _, err = third.communicate(timeout=300)
    assert third.returncode == 0, err
    assert f"resuming at step {resumed_step}" in err
    assert not any(p.name.endswith(".tmp") for p in root.iterdir())  # the killed save's is gone
    assert ckpt.checkpoint_step(latest_checkpoint(run_dir) or root) == resumed_step + 2
    assert _steps(run_dir) == list(range(1, resumed_step + 3))  # no line of the killed tail
    load_run(run_dir)


def _ddp_worker(rank: int, port: int, config: TrainConfig, out: str) -> None:
    """One of two gloo ranks; records its outcome and whether it tried to lock the folder."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    real_acquire = RunLock.acquire.__func__  # type: ignore[attr-defined]

    def acquire(cls: type[RunLock], *args: Any, **kwargs: Any) -> RunLock:
        Path(out, f"locked-by-rank{rank}").touch()
        lock: RunLock = real_acquire(cls, *args, **kwargs)
        return lock

    train_module.RunLock.acquire = classmethod(acquire)  # type: ignore[method-assign,assignment]
    try:
        train_module.train(config)
        outcome = "finished"
    except RunFolderError as error:
        outcome = f"{type(error).__name__}: {error}"
    Path(out, f"rank{rank}.txt").write_text(outcome)


@pytest.mark.slow
@pytest.mark.distributed
@_POSIX_ONLY
def test_under_ddp_only_rank_0_locks_and_every_rank_is_refused(
    tmp_path: Path, cache_dir: str
) -> None:
    config = _tiny_config(tmp_path / "run", cache_dir, steps=2)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with RunLock.acquire(tmp_path / "run", command="mixelbo-train"):
        mp.spawn(_ddp_worker, args=(port, config, str(tmp_path)), nprocs=2, join=True)
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert outcomes[0] == outcomes[1]
    assert outcomes[0].startswith("RunFolderInUseError: run folder ")
    assert f"pid {os.getpid()}" in outcomes[0]
    assert [p.name for p in tmp_path.glob("locked-by-rank*")] == ["locked-by-rank0"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]


# ---- a full disk -----------------------------------------------------------------------------


def _no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _finish_after_freeing_space(run_dir: Path, cache_dir: str, steps: int) -> None:
    argv = ["--run-dir", str(run_dir), "--resume", "--steps", str(steps)]
    assert train_module.main(argv) == 0
    assert _steps(run_dir) == list(range(1, steps + 1))
    assert ckpt.checkpoint_step(latest_checkpoint(run_dir) or run_dir) == steps


def test_a_full_disk_mid_checkpoint_stops_with_one_line_and_keeps_the_last_one(
    tmp_path: Path,
    cache_dir: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_dir = tmp_path / "run"
    real_save_toml = ckpt.save_toml

    def save_toml(config: TrainConfig, path: Path) -> None:
        # the second checkpoint: its weights and state are written, its config.toml is not
        if path.parent.name.startswith(".step_00000004."):
            path.write_text("model = ")  # half a file, then the disk is full
            raise _no_space()
        real_save_toml(config, path)

    monkeypatch.setattr(ckpt, "save_toml", save_toml)
    assert train_module.main(_argv(run_dir, cache_dir, "--steps", "6")) == 1
    step_2, step_4 = (str(run_dir / "checkpoints" / f"step_0000000{s}") for s in (2, 4))
    _assert_one_line_error(
        capsys.readouterr().err,
        f"no space left on device writing {step_4!r} (",
        " free there); the run stopped, ",
        f"its last good checkpoint is {step_2!r}: free some space, then continue the run with "
        "--resume",
    )
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_00000002"]  # no temp
    monkeypatch.undo()
    _finish_after_freeing_space(run_dir, cache_dir, 6)


class _FailingFile:
    """A text file whose ``write`` fails with ENOSPC from its ``fail_at``-th call on."""

    def __init__(self, path: Path, mode: str, fail_at: int) -> None:
        self._file = open(path, mode)  # noqa: SIM115 (closed by close)
        self._calls, self._fail_at = 0, fail_at

    def write(self, text: str) -> int:
        self._calls += 1
        if self._calls >= self._fail_at:
            self._file.write(text[: len(text) // 2])  # a torn line
            self._file.flush()
            raise _no_space()
        return self._file.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def test_a_full_disk_while_logging_stops_with_one_line_and_the_resume_drops_the_torn_line(
    tmp_path: Path,
    cache_dir: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_dir = tmp_path / "run"

    def fake_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if Path(path).name == "metrics.jsonl":
            return _FailingFile(Path(path), mode, fail_at=5)  # the log line of step 5
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(train_module, "open", fake_open, raising=False)
    assert train_module.main(_argv(run_dir, cache_dir, "--steps", "6")) == 1
    _assert_one_line_error(
        capsys.readouterr().err,
        f"no space left on device writing {str(run_dir / 'metrics.jsonl')!r}",
        f"last good checkpoint is {str(run_dir / 'checkpoints' / 'step_00000004')!r}",
    )
    assert (run_dir / "metrics.jsonl").read_text().splitlines()[-1].startswith('{"step": 5')
    monkeypatch.undo()
    _finish_after_freeing_space(run_dir, cache_dir, 6)


def test_a_full_disk_while_writing_images_stops_with_one_line_and_no_thread_traceback(
    tmp_path: Path,
    cache_dir: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tensorboard.summary.writer.record_writer import RecordWriter

    real_write = RecordWriter.write

    def write(self: RecordWriter, data: bytes) -> None:
        if b"\x89PNG" in data:  # an image grid; TensorBoard writes in its own thread
            raise _no_space()
        real_write(self, data)

    monkeypatch.setattr(RecordWriter, "write", write)
    run_dir = tmp_path / "run"
    argv = _argv(run_dir, cache_dir, "--steps", "6", "--image-every", "3")
    assert train_module.main(argv) == 1
    err = capsys.readouterr().err
    line = _assert_one_line_error(
        err, f"no space left on device writing {str(run_dir / 'tensorboard')!r}"
    )
    assert "Exception in thread" not in err
    kept = list_checkpoints(run_dir)
    assert kept and f"last good checkpoint is {str(kept[-1])!r}" in line
    monkeypatch.undo()
    _finish_after_freeing_space(run_dir, cache_dir, 6)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 700 kB tmpfs (a real full disk); skipped where mounting is not permitted."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_real_full_disk_stops_the_trainer_process_with_one_line(
    small_tmpfs: Path, cache_dir: str
) -> None:
    # A checkpoint of tiny-32 takes ~420 kB: the first fits in 700 kB, the second cannot
    # (the first is deleted only once the second is complete).
    run_dir = small_tmpfs / "run"
    argv = _argv(run_dir, cache_dir, "--steps", "6", "--keep-checkpoints", "1")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mixelbo_reference.train"]
    done = subprocess.run([*command, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    _assert_one_line_error(
        done.stderr,
        "no space left on device writing ",
        f"its last good checkpoint is {str(run_dir / 'checkpoints' / 'step_00000002')!r}",
    )
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_00000002"]
    load_run(run_dir)  # complete
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_tmpfs)], check=True)
    resume = [*command, "--run-dir", str(run_dir), "--resume"]
    done = subprocess.run(resume, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _steps(run_dir) == list(range(1, 7))


# ---- resume with other options ---------------------------------------------------------------


@pytest.fixture
def two_steps(tmp_path: Path, cache_dir: str) -> Path:
    """A finished 2-step run (one checkpoint, at step 2)."""
    run_dir = tmp_path / "run"
    assert train_module.main(_argv(run_dir, cache_dir, "--steps", "2")) == 0
    return run_dir


def test_resume_refuses_differing_options_naming_each(
    two_steps: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p: p.read_bytes() for p in two_steps.rglob("*") if p.is_file()}
    capsys.readouterr()
    argv = ["--run-dir", str(two_steps), "--resume", "--steps", "4"]
    assert train_module.main([*argv, "--gan-loss", "hinge", "--lr", "0.01", "--seed", "3"]) == 2
    _assert_one_line_error(
        capsys.readouterr().err,
        "--gan-loss: saved 'bce', given 'hinge'; --lr: saved 0.0001, given 0.01; "
        "--seed: saved 0, given 3.",
        "--override-config",
    )
    assert {p: p.read_bytes() for p in two_steps.rglob("*") if p.is_file()} == before
    assert train_module.main([*argv, "--model", "cpu-32", "--override-config"]) == 2
    _assert_one_line_error(
        capsys.readouterr().err, "not even with --override-config", "--model: saved 'tiny-32'"
    )
    assert train_module.main([*argv[:-1], "1"]) == 2  # before the checkpoint: nothing to do
    _assert_one_line_error(capsys.readouterr().err, "--steps 1 is before", "(step 2)")
    assert {p: p.read_bytes() for p in two_steps.rglob("*") if p.is_file()} == before


def test_resume_accepts_free_options_and_records_overridden_ones(
    two_steps: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--run-dir", str(two_steps), "--resume"]
    # the length, logging and checkpoint options may change without asking
    assert train_module.main([*argv, "--steps", "4", "--log-every", "2"]) == 0
    assert _steps(two_steps) == [1, 2, 4]
    # the rest with --override-config, recorded (the flag itself is not: a later resume asks)
    assert train_module.main([*argv, "--steps", "6", "--lr", "0.01", "--override-config"]) == 0
    assert "with changed options: --steps 4 -> 6, --lr 0.0001 -> 0.01" in capsys.readouterr().err
    saved = load_toml(two_steps / "config.toml")
    assert (saved["lr"], saved["steps"], saved["override_config"]) == (0.01, 6, False)
    assert load_run(two_steps)[2].lr == 0.01  # and in the checkpoint's config
    records = [json.loads(line) for line in (two_steps / "config_changes.jsonl").open()]
    assert [(r["step"], r["override_config"], r["changes"]) for r in records] == [
        (2, False, {"steps": [2, 4], "log_every": [1, 2]}),
        (4, True, {"steps": [4, 6], "lr": [0.0001, 0.01]}),
    ]
    assert train_module.main([*argv, "--steps", "6"]) == 0  # the new lr is the run's now
    assert train_module.main(["--run-dir", str(two_steps), "--override-config"]) == 2
    _assert_one_line_error(capsys.readouterr().err, "--override-config applies to --resume only")


def test_resume_removes_a_killed_save_and_a_torn_log_line(
    two_steps: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # what a trainer killed while writing leaves: a temporary checkpoint, half a log line
    partial = two_steps / "checkpoints" / ".step_00000003.k1ll3d.tmp"
    partial.mkdir()
    (partial / "vae.safetensors").write_bytes(b"\x00" * 10)
    with open(two_steps / "metrics.jsonl", "a") as log:
        log.write('{"step": 3, "epo')
    assert train_module.main(["--run-dir", str(two_steps), "--resume", "--steps", "4"]) == 0
    assert not partial.exists()
    assert _steps(two_steps) == [1, 2, 3, 4]


def test_resume_changes_classifies_every_option() -> None:
    saved = TrainConfig.preset("tiny-32")
    assert resume_changes(saved, saved.replace(resume=True), 2) == {}
    free = {"steps": 40, "log_every": 5, "keep_checkpoints": 1, "num_workers": 2}
    assert set(free) <= RESUME_FREE_OPTIONS
    changes = resume_changes(saved, saved.replace(resume=True, **free), 2)
    assert changes == {k: (getattr(saved, k), v) for k, v in free.items()}
    for trajectory in ({"objective": "vae"}, {"batch_size": 4}, {"r1_gamma": 1.0}):
        with pytest.raises(RunFolderError, match="would change the trajectory"):
            resume_changes(saved, saved.replace(resume=True, **trajectory), 2)
        resume_changes(saved, saved.replace(resume=True, override_config=True, **trajectory), 2)
    for networks in ({"gan": False}, {"disc_scales": 2}, {"model": "cpu-32"}):
        with pytest.raises(RunFolderError, match="not even with --override-config"):
            resume_changes(saved, saved.replace(resume=True, override_config=True, **networks), 2)
