"""Training checkpoints with Orbax: async saves with the data position, fallback restore, save on SIGTERM.

A checkpoint at step s holds the train state after s steps (`state`) and a small JSON item (`data`) with
the data position (the next global step, i.e. s) and what it depends on (seed, data fingerprint), so a
resumed run continues with exactly the batches it would have seen. Restoring takes the abstract target
state with the *current* shardings, so a checkpoint written on one mesh restores onto another.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, data: dict[str, Any]) -> None:
        """Starts a save (async: returns once the arrays are copied off the devices)."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data))
        self.manager.save(step, args=args, force=True)

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, data) of the newest readable checkpoint, or None if there is none.

        `abstract_state`: a pytree of jax.ShapeDtypeStruct carrying the target shardings. A checkpoint
        that fails to restore is moved aside (never deleted) with a warning and the one before is tried.
        """
        self.manager.reload()
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                args = ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                )
                restored = self.manager.restore(step, args=args)
                return step, restored["state"], dict(restored["data"])
            except Exception as e:  # noqa: BLE001 - any failure to read means "unreadable"
                log.warning(
                    "checkpoint at step %d in %s is unreadable (%s: %s); falling back to the one before",
                    step, self.directory, type(e).__name__, str(e)[:300],
                )
                self._quarantine(step)
        return None

    def _quarantine(self, step: int) -> None:
        # Moved out of the way so later saves at this step do not collide with it.
        if jax.process_index() == 0:
            src = os.path.join(self.directory, str(step))
            if os.path.exists(src):
                dst = os.path.join(os.path.dirname(self.directory), f"unreadable_checkpoint_{step}_{int(time.time())}")
                os.rename(src, dst)
                log.warning("moved unreadable checkpoint to %s", dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"quarantine_{step}")
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
    """Context manager: SIGTERM sets `.requested` instead of killing, so the loop can save and exit."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals, self.requested, self._previous = signals, False, {}

    def _handler(self, signum, frame):
        log.warning("received signal %d: saving a checkpoint and stopping", signum)
        self.requested = True

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
