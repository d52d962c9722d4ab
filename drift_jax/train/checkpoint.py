"""Training checkpoints with Orbax: async saves with the data position, fallback restore, save on SIGTERM.

Restore tells three failures apart. An unreadable checkpoint (corrupt or partial files) is moved aside with
a warning and the one before is tried. A checkpoint of another train state (tree, shapes or dtypes differ
from the target) raises `CheckpointMismatchError` listing what was expected and found. A failure that is
not the checkpoint's (out of memory, a storage error that may pass) raises `CheckpointReadError` and
leaves every checkpoint in place.

A checkpoint at step s holds the train state after s steps (`state`) and a small JSON item (`data`) with
the data position (the next global step, i.e. s) and what it depends on (seed, data fingerprint), so a
resumed run continues with exactly the batches it would have seen. Restoring takes the abstract target
state with the *current* shardings, so a checkpoint written on one mesh restores onto another.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from drift_jax.runtime import files, hosts

log = logging.getLogger(__name__)

# Status codes (tensorstore, XLA) of failures that are not the checkpoint's: retrying may succeed.
_INFRASTRUCTURE = ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "PERMISSION_DENIED", "CANCELLED",
                   "ABORTED", "UNAUTHENTICATED", "Out of memory", "out of memory")
# Orbax's words for a target that does not match what is stored (caught first by `_mismatches`).
_MISMATCH = ("not compatible with the stored shape", "tree structures do not match")
_MISSING_FILE = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR)


class CheckpointMismatchError(ValueError):
    """The checkpoint holds another train state than the one this run builds."""


class CheckpointReadError(RuntimeError):
    """Restoring failed for a reason that is not the checkpoint's (memory, storage); nothing was moved."""


def _names(path: tuple) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _mismatches(stored: Any, abstract_state: Any) -> list[str]:
    """One line per leaf whose presence, shape or dtype differs between the checkpoint and the target."""
    def table(tree):
        return {_names(p): (tuple(x.shape), np.dtype(x.dtype)) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

    found, want = table(stored), table(abstract_state)
    lines = [f"{'/'.join(k)}: expected {want[k][0]} {want[k][1]}, found {found[k][0]} {found[k][1]}"
             for k in want if k in found and found[k] != want[k]]
    lines += [f"{'/'.join(k)}: expected {want[k][0]} {want[k][1]}, not in the checkpoint" for k in want if k not in found]
    lines += [f"{'/'.join(k)}: in the checkpoint {found[k][0]} {found[k][1]}, not expected" for k in found if k not in want]
    return lines


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        self.directory = files.absolute(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def save(self, step: int, state: Any, data: dict[str, Any]) -> None:
        """Starts a save (async: returns once the arrays are copied off the devices)."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data))
        self.manager.save(step, args=args, force=True)

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, data) of the newest readable checkpoint, or None if there is none.

        `abstract_state`: a pytree of jax.ShapeDtypeStruct carrying the target shardings. An unreadable
        checkpoint is moved aside (never deleted) with a warning and the one before is tried; a mismatch
        or an infrastructure error is raised (see the module docstring).
        """
        self.manager.reload()
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                stored = self.manager.item_metadata(step)["state"]
                lines = _mismatches(stored, abstract_state) if stored is not None else []
            except Exception as e:  # noqa: BLE001 - sorted by _unreadable: quarantined or raised
                self._unreadable(step, e)
                continue
            if lines:
                raise CheckpointMismatchError(
                    f"checkpoint at step {step} in {self.directory} holds another train state than this run builds "
                    f"(model or optimizer config changed?); left in place:\n  " + "\n  ".join(lines[:20])
                    + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""))
            try:
                args = ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                )
                restored = self.manager.restore(step, args=args)
                return step, restored["state"], dict(restored["data"])
            except Exception as e:  # noqa: BLE001 - sorted by _unreadable: quarantined or raised
                self._unreadable(step, e)
        return None

    def _unreadable(self, step: int, e: Exception) -> None:
        """Quarantines the checkpoint if `e` says its files are corrupt or partial; raises otherwise."""
        message = f"{type(e).__name__}: {str(e)[:500]}"
        where = f"checkpoint at step {step} in {self.directory}"
        storage = isinstance(e, OSError) and e.errno not in _MISSING_FILE and not isinstance(e, FileNotFoundError)
        if isinstance(e, (MemoryError, TimeoutError, ConnectionError)) or storage or any(
                code in str(e) for code in _INFRASTRUCTURE):
            raise CheckpointReadError(f"restoring the {where} failed, not for a fault of the checkpoint ({message}); "
                                      "it was left in place: free memory or wait for the storage and rerun") from e
        if any(words in str(e) for words in _MISMATCH):
            raise CheckpointMismatchError(f"the {where} does not match the train state this run builds: {message}") from e
        if not isinstance(e, (ValueError, KeyError, EOFError, FileNotFoundError)):
            raise e  # not a known sign of corruption: never move a checkpoint aside on a guess
        log.warning("%s is unreadable (%s); falling back to the one before", where, message[:300])
        self._quarantine(step)

    def _quarantine(self, step: int) -> None:
        # Moved out of the way so later saves at this step do not collide with it.
        if hosts.is_writer():
            src = files.join(self.directory, str(step))
            if files.exists(src):
                dst = files.join(os.path.dirname(self.directory), f"unreadable_checkpoint_{step}_{int(time.time())}")
                files.move(src, dst)
                log.warning("moved unreadable checkpoint to %s", dst)
        hosts.barrier(f"quarantine_{step}")
        self.manager.reload()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def reached_preemption(self, step: int) -> bool:
        return bool(self.manager.reached_preemption(step))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


class PreemptionGuard:
    """Context manager: SIGTERM sets `.requested` instead of killing, so the loop can save and exit. On exit
    a signal that arrived is passed on to the Python handler that was in place before (the pipeline's,
    which stops the run), now that the state is saved."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals, self.requested, self._previous = signals, False, {}
        self._received: list[int] = []

    def _handler(self, signum, frame):
        log.warning("received signal %d: saving a checkpoint and stopping", signum)
        self.requested = True
        self._received.append(signum)

    def __enter__(self) -> PreemptionGuard:
        try:
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handler)
        except ValueError:  # not the main thread: signals cannot be handled here
            self._previous = {}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        for s in dict.fromkeys(self._received):
            if callable(self._previous.get(s)):
                self._previous[s](s, None)
