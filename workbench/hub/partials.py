"""Leftovers of killed downloads in the shared Hugging Face cache.

huggingface_hub writes each file to `blobs/<etag>.<random>.incomplete` while it holds `locks/.../<etag>.lock`, and
deletes that file itself when a download fails. Only a killed process leaves one behind, under a name no later
download reuses. The next download of the same file removes it, but never a partial file whose lock a live
process holds: the cache is shared by every notebook and script on the machine.
"""

from __future__ import annotations

from pathlib import Path


def drop_stale_partials(repo_id: str, repo_type: str = "model") -> list[Path]:
    """Remove the partial files of `repo_id` whose blob is complete now and that no live download writes to.

    Returns the removed paths. Call it after a download of the repo: its complete blobs are the files that
    download fetched (or found), so only leftovers of those files are touched.
    """
    from filelock import FileLock, Timeout
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    blobs = Path(constants.HF_HUB_CACHE) / folder / "blobs"
    locks = Path(constants.HF_HUB_CACHE) / ".locks" / folder
    removed = []
    for partial in sorted(blobs.glob("*.incomplete")):
        etag = partial.name.split(".", 1)[0]
        if not (blobs / etag).is_file():
            continue  # not a file this download completed
        lock = FileLock(locks / f"{etag}.lock", mode=0o664)
        try:
            lock.acquire(timeout=0)
        except (Timeout, OSError):
            continue  # a live download of this file holds the lock: its partial file is in use
        try:
            partial.unlink(missing_ok=True)
            removed.append(partial)
        except OSError:  # another user's file in a shared cache: leaving it is harmless, failing the load is not
            pass
        finally:
            lock.release()
    return removed
