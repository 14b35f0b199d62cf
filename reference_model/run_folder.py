"""What a run folder guarantees: one trainer at a time, clear stops on a full disk, checked resumes.

- **One trainer per folder.** :class:`RunLock` holds an exclusive ``flock`` on ``RUN/.lock``
  for as long as a trainer runs (under torchrun, rank 0 only) and records its holder there
  (pid, host, start time, command). A second trainer is refused with
  :class:`RunFolderInUseError` naming the holder, before it writes anything into the folder.
  The kernel drops the lock when the holder's process ends, however it ends (``kill -9``,
  a crash), so a lock is never stale; DataLoader workers forked by the holder close their copy
  of the lock file at fork, so they do not keep it after the trainer is killed. Where the OS
  has no ``flock`` (Windows) or the file system refuses it, the trainer warns and runs
  unprotected.
- **Full disk.** :func:`stop_on_full_disk` turns an ``ENOSPC`` / ``EDQUOT`` error while writing
  into :class:`DiskFullError`: one line naming the path, the space left there and the last
  good checkpoint (checkpoints are written atomically, so that one is intact).
- **Resume.** :func:`resume_changes` compares the options of a ``--resume`` with the run's
  saved config: it refuses options that change the trajectory unless ``--override-config`` is
  given, and options that change the networks always.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import socket
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None  # type: ignore[assignment]

from mixelbo_reference.config import TrainConfig

__all__ = [
    "LOCK_NAME",
    "RESUME_FREE_OPTIONS",
    "DiskFullError",
    "RunFolderError",
    "RunFolderInUseError",
    "RunLock",
    "describe_changes",
    "is_disk_full",
    "lock_holder",
    "resume_changes",
    "stop_on_full_disk",
]

LOCK_NAME = ".lock"
"""The lock file of a run folder (``RUN/.lock``); it stays in the folder, unlocked, after a run."""

RESUME_FREE_OPTIONS = frozenset({
    "steps", "epochs",  # how long: extend a run (never below its checkpoint)
    "run_dir", "out_dir", "resume", "override_config", "progress", "num_workers", "cache_dir",
    "log_every", "image_every", "eval_images", "checkpoint_every", "keep_checkpoints",
})  # fmt: skip
"""Options a ``--resume`` may change freely: the run's length, where it runs from and what it
records. None of them changes the trajectory (the batches do not depend on the loader workers,
the diagnostics use a private RNG)."""

_NOT_RECORDED = frozenset({"resume", "override_config"})
"""Differences that are the resume itself, not a change of the run."""

_DISK_FULL = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)

# flock errors that mean "this file system cannot lock", not "someone holds the lock"
_NO_LOCKING = frozenset(
    e
    for e in (errno.ENOLCK, errno.EINVAL, errno.ENOSYS, getattr(errno, "EOPNOTSUPP", None))
    if e is not None
)


class RunFolderError(ValueError):
    """A run folder cannot be used as asked (in use, a mismatched resume, ...).

    ``mixelbo-train`` prints it as one line, ``mixelbo-train: error: ...``, and exits with 2.
    """


class RunFolderInUseError(RunFolderError):
    """Another trainer holds the run folder's lock; the message names it."""


class DiskFullError(RuntimeError):
    """Writing into the run folder failed for lack of space (``ENOSPC``) or quota (``EDQUOT``).

    Attributes:
        path: what was being written.
        free: the bytes free on that file system then (``None`` if it could not be read).
    """

    def __init__(self, message: str, path: Path, free: int | None) -> None:
        super().__init__(message)
        self.path, self.free = path, free


# ---- the lock ------------------------------------------------------------------------------

_HELD: weakref.WeakSet[RunLock] = weakref.WeakSet()


def _forget_locks_in_child() -> None:
    """After ``fork``: close the child's copies of held lock files.

    A ``flock`` lives as long as any copy of its file descriptor; without this a DataLoader
    worker would keep a killed trainer's folder locked until it noticed its parent was gone.
    """
    for lock in list(_HELD):
        lock._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)


class RunLock:
    """An exclusive lock on a run folder, held by one trainer process.

    Use :meth:`acquire`; :meth:`release` (or leaving the ``with`` block) unlocks. The lock file
    ``RUN/.lock`` is never deleted (deleting it would let two processes lock two different
    files); its content, the holder's JSON record, is cleared on release.

    Attributes:
        path: the lock file.
        locked: ``False`` when the OS or file system cannot lock (a warning said so).
    """

    def __init__(self, path: Path, fd: int | None, locked: bool) -> None:
        self.path, self._fd, self.locked = path, fd, locked
        if fd is not None:
            _HELD.add(self)

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike[str], command: str | None = None) -> RunLock:
        """Lock ``run_dir`` (created if missing) for this process, without waiting.

        Args:
            run_dir: the run folder.
            command: how the holder is named in a refusal (default: the program's name).

        Returns:
            The held lock.

        Raises:
            RunFolderInUseError: if another process holds it; the message names the folder and
                the holder (pid, host, since when, command).
            OSError: if the folder or the lock file cannot be created or written.
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_NAME
        if fcntl is None:  # pragma: no cover (Windows)
            warnings.warn(
                f"run folder {str(run_dir)!r} is not locked (no fcntl.flock on this OS): "
                "nothing stops a second trainer from writing into it",
                RuntimeWarning,
                stacklevel=2,
            )
            return cls(path, None, locked=False)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderInUseError(_in_use_message(run_dir)) from None
        except OSError as error:
            os.close(fd)
            if error.errno not in _NO_LOCKING:
                raise
            warnings.warn(
                f"run folder {str(run_dir)!r} is not locked (its file system refuses flock: "
                f"{error.strerror}): nothing stops a second trainer from writing into it",
                RuntimeWarning,
                stacklevel=2,
            )
            return cls(path, None, locked=False)
        lock = cls(path, fd, locked=True)
        try:
            holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                "command": command or Path(sys.argv[0] if sys.argv else "python").name,
            }
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(holder) + "\n").encode())
        except BaseException:
            lock.release()
            raise
        return lock

    def release(self) -> None:
        """Clear the holder record and unlock (idempotent)."""
        fd, self._fd = self._fd, None
        _HELD.discard(self)
        if fd is None:
            return
        try:
            with suppress(OSError):
                os.ftruncate(fd, 0)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _forget(self) -> None:
        """Close this process's copy of the file without unlocking (a forked child's)."""
        fd, self._fd = self._fd, None
        _HELD.discard(self)
        if fd is not None:
            with suppress(OSError):
                os.close(fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The holder record in ``RUN/.lock`` (pid, host, since, command), or ``None``.

    The record is meaningful only while the lock is held: a killed holder leaves its record
    behind, unlocked, until the next trainer replaces it.
    """
    try:
        text = (Path(run_dir) / LOCK_NAME).read_text()
        holder = json.loads(text)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _in_use_message(run_dir: Path) -> str:
    holder = None
    for _ in range(20):  # the holder writes its record right after locking: wait up to ~1 s
        holder = lock_holder(run_dir)
        if holder is not None:
            break
        time.sleep(0.05)
    who = (
        f"{holder.get('command', '?')} pid {holder.get('pid', '?')} on host "
        f"{holder.get('host', '?')} since {holder.get('since', '?')}"
        if holder is not None
        else "another process (which has not recorded its pid yet)"
    )
    return (
        f"run folder {str(run_dir)!r} is in use by {who}; wait for that run to end (or stop "
        "it), or choose another --run-dir"
    )


# ---- full disk -----------------------------------------------------------------------------


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is an ``OSError`` for lack of space (``ENOSPC``) or quota (``EDQUOT``)."""
    return isinstance(error, OSError) and error.errno in _DISK_FULL


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.absolute().parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def _format_bytes(count: int | None) -> str:
    if count is None:
        return "unknown space"
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


@contextmanager
def stop_on_full_disk(
    path: str | os.PathLike[str] | None, last_checkpoint: Callable[[], Path | None] | None = None
) -> Iterator[None]:
    """Turn an ``ENOSPC`` / ``EDQUOT`` ``OSError`` raised inside the block into
    :class:`DiskFullError`; other errors pass unchanged.

    Args:
        path: what the block writes (named in the message; its file system's free space too);
            ``None``: the file named by the error.
        last_checkpoint: returns the run's last good checkpoint at the time of the error.

    Raises:
        DiskFullError: one line: the path, the free space there, the last good checkpoint and
            that ``--resume`` continues from it once space is freed.
    """
    try:
        yield
    except OSError as error:
        if not is_disk_full(error):
            raise
        if path is None:
            path = error.filename if isinstance(error.filename, str) else "."
        path = Path(path)
        free = _free_bytes(path)
        reason = os.strerror(error.errno or errno.ENOSPC)
        reason = reason[:1].lower() + reason[1:]
        checkpoint = last_checkpoint() if last_checkpoint is not None else None
        then = (
            f"its last good checkpoint is {str(checkpoint)!r}: free some space, then continue "
            "the run with --resume"
            if checkpoint is not None
            else "no checkpoint was written yet"
        )
        raise DiskFullError(
            f"{reason} writing {str(path)!r} ({_format_bytes(free)} free there); the run "
            f"stopped, {then}",
            path,
            free,
        ) from error


# ---- resume --------------------------------------------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value: Any) -> str:
    return "unset" if value is None else repr(value) if isinstance(value, str) else str(value)


def _listed(changes: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(
        f"{_flag(k)}: saved {_shown(old)}, given {_shown(new)}" for k, (old, new) in changes.items()
    )


def resume_changes(
    saved: TrainConfig, given: TrainConfig, checkpoint_step: int
) -> dict[str, tuple[Any, Any]]:
    """Check a resume's options against the run's saved config; returns what changes.

    Options in :data:`RESUME_FREE_OPTIONS` may change. Any other change is refused unless
    ``given.override_config``; a change of the networks (``model``, ``gan``, the
    discriminator's layers, anything else that changes the architecture) is refused always,
    since the checkpoint's weights would not load.

    Args:
        saved: the run's config (its ``config.toml``).
        given: the config of the resume.
        checkpoint_step: the step of the checkpoint resumed from.

    Returns:
        ``{field: (saved value, given value)}`` of every change (``resume`` and
        ``override_config`` left out), to record.

    Raises:
        RunFolderError: naming each refused option as ``--lr: saved 0.0001, given 0.001``; or
            if ``given.steps`` is below ``checkpoint_step`` (without ``epochs``).
    """
    changes = {
        f.name: (getattr(saved, f.name), getattr(given, f.name))
        for f in dataclasses.fields(TrainConfig)
        if getattr(saved, f.name) != getattr(given, f.name) and f.name not in _NOT_RECORDED
    }
    changed_networks = (
        saved.model_config != given.model_config
        or saved.gan != given.gan
        or saved.discriminator_options != given.discriminator_options
    )
    trajectory = {k: v for k, v in changes.items() if k not in RESUME_FREE_OPTIONS}
    if changed_networks:
        raise RunFolderError(
            "--resume: the checkpoint's networks do not fit these options, not even with "
            f"--override-config: {_listed(trajectory)}. Resume with the run's own options "
            "or start a new run in another --run-dir"
        )
    if trajectory and not given.override_config:
        raise RunFolderError(
            "--resume: these options differ from the run's config.toml and would change the "
            f"trajectory: {_listed(trajectory)}. Give only the options to change (--steps, "
            "logging, checkpoints: the rest is read from config.toml), or pass "
            "--override-config to continue with the new values (recorded in the run folder)"
        )
    if given.epochs is None and given.steps < checkpoint_step:
        raise RunFolderError(
            f"--resume: --steps {given.steps} is before the run's latest checkpoint (step "
            f"{checkpoint_step}); give --steps {checkpoint_step} or more"
        )
    return changes


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """``--steps 400 -> 800, --lr 0.0001 -> 0.001``: the changes of a resume, for its log."""
    return ", ".join(
        f"{_flag(k)} {_shown(old)} -> {_shown(new)}" for k, (old, new) in changes.items()
    )
