"""`train(overwrite=True)` loses nothing when the new run fails: the old run is moved aside, not deleted.

The old run's folders are renamed into a hidden folder inside the output folder (same file system: renames only,
nothing is copied) before training, and deleted only once the new run has completed and written its `final/`. A
failed run's folders are removed and the old ones renamed back. Which phase a run is in is told by the hidden
folder's name alone, so a process killed at any point leaves a state `recover_aside` turns back into the old run:

- `MOVING`: the old folders are being moved aside; some may still be in the output folder. Recovery: move back.
- `ASIDE`: every old folder is aside, the new run is training. Recovery: delete the new run's folders, rename
  `ASIDE` to `MOVING`, move back (so a recovery killed half way never deletes an old folder).
- `DONE`: the new run completed. Recovery: delete it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from .errors import OutputDirError

ASIDE = ".partial-overwritten"  # a staging name: Trainer's "checkpoint-*" globs never see it
MOVING = ASIDE + "-moving"
DONE = ASIDE + "-done"
NAMES = (ASIDE, MOVING, DONE)

RunParts = Callable[[Path], list[Path]]  # a run's folders in an output folder (`checkpoints.run_parts`)


def set_aside(folder: Path, run_parts: RunParts) -> None:
    """Move the run in `folder` (its `run_parts`) into `ASIDE`; nothing happens when it holds none."""
    parts = run_parts(folder)
    if not parts:
        return
    moving = folder / MOVING
    try:
        moving.mkdir()  # `recover_aside` ran first: no earlier one is left
        for part in parts:
            part.rename(moving / part.name)
        moving.rename(folder / ASIDE)
    except OSError as err:  # (train() then moves what was moved back)
        raise OutputDirError(
            f"cannot move the run in {folder} aside to overwrite it: {err.strerror or err} ({err.filename}); "
            "nothing was deleted"
        ) from err


def discard(folder: Path) -> None:
    """The new run completed: delete the old one for good."""
    aside = folder / ASIDE
    if _real(aside):
        aside.rename(folder / DONE)
    _delete(folder / DONE)


def recover_aside(folder: Path, run_parts: RunParts) -> None:
    """Put back the old run an overwrite set aside, removing what the new run wrote; delete it if the new run
    completed. Also what a failed `train()` does before it raises."""
    _delete(folder / DONE)
    aside, moving = folder / ASIDE, folder / MOVING
    if _real(aside):
        for part in run_parts(folder):  # the failed run's folders; the old ones are all aside
            shutil.rmtree(part)
        aside.rename(moving)
    if _real(moving):
        for part in sorted(moving.iterdir()):
            if not (folder / part.name).exists():
                part.rename(folder / part.name)
        kept = sorted(part.name for part in moving.iterdir())  # names taken meanwhile (by a user's own folders)
        if kept:
            raise OutputDirError(
                f"the run an earlier overwrite set aside is kept in {moving}: {', '.join(kept)} could not be put "
                f"back because {folder} holds folders of the same names; move one of each pair away, then run again"
            )
        moving.rmdir()


def _real(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _delete(path: Path) -> None:
    if _real(path):
        shutil.rmtree(path)
