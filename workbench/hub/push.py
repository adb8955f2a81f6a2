"""Sharing adapters: `model.push_adapter_to_hub` and `model.push_adapter_setup_to_hub` (AdapterHub's API).

Everything goes through `huggingface_hub`: `create_repo` (exist_ok, `private`), `create_branch` for a `revision`,
and one `create_commit` with the files that were written (so an adapter and its card arrive in one commit, or a
pull request with `create_pr`). The card (README.md) carries the metadata the Hub derives its tags and filters from:
`library_name: adapter-transformers`, `base_model`, the tags `adapter-transformers`, `adapters`, the model type and
`base_model:adapter:<model>`, a `pipeline_tag` from the head, `datasets`, `language`, `license` and `metrics`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx2
from huggingface_hub import CommitOperationAdd, HfApi, ModelCardData
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalTokenNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from ..core.errors import AdapterConfigError, AdapterError
from ..core.peft_format import is_peft_folder
from ..core.setups import fuse_blocks, head_names
from .hf import ADAPTERHUB_LIBRARY, PEFT_LIBRARY, hub_api

# The head types' Hub tasks, as AdapterHub's migration to the Hub chose them.
PIPELINE_TAGS = {
    "classification": "text-classification",
    "multilabel_classification": "text-classification",
    "tagging": "token-classification",
    "multiple_choice": "multiple-choice",
    "question_answering": "question-answering",
    "masked_lm": "fill-mask",
    "causal_lm": "text-generation",
}
CARD_KEYS = ("tags", "language", "license", "metrics", "architecture_training", "results", "citation", "base_model")
DEFAULT_TEXT = "<!-- Add some description here -->"


class HubPushError(AdapterError, OSError):
    """An upload that the Hub refused or that could not reach it; the message names the repo and the reason."""


def push_to_hub(
    model,
    repo_id: str,
    *,
    adapter_name: str | None = None,
    adapter_setup=None,
    head_setup=None,
    datasets_tag: str | None = None,
    local_path: str | os.PathLike | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    overwrite_adapter_card: bool = False,
    create_pr: bool = False,
    revision: str | None = None,
    commit_description: str | None = None,
    adapter_card_kwargs: dict | None = None,
):
    """Save an adapter (or a setup) and upload it with a card; the model's methods call this (see `core/setups.py`).

    Returns huggingface_hub's `CommitInfo` (a str: the commit URL; `.pr_url` with `create_pr`)."""
    _check_repo_id(repo_id)
    card_kwargs = dict(adapter_card_kwargs or {})
    unknown = sorted(set(card_kwargs) - set(CARD_KEYS))
    if unknown:
        raise AdapterConfigError(f"adapter_card_kwargs: unknown key(s) {unknown}; known: {', '.join(CARD_KEYS)}")
    if create_pr and revision is not None and revision.startswith("refs/pr/"):
        raise AdapterConfigError(
            f"create_pr=True opens a new pull request; revision={revision!r} names an existing one"
        )
    folder = Path(local_path).expanduser() if local_path is not None else None
    if folder is not None and folder.exists() and not folder.is_dir():
        raise AdapterConfigError(f"local_path={str(local_path)!r} is a file; name a folder to save the upload in")
    api = hub_api()
    what = f"adapter {adapter_name!r}" if adapter_name is not None else f"adapter setup {adapter_setup}"
    url = _call(
        f"creating repo {repo_id!r}",
        repo_id,
        api,
        api.create_repo,
        repo_id,
        private=private,
        token=token,
        exist_ok=True,
    )
    repo_id = url.repo_id  # a bare "name" lands in the token owner's namespace

    def save(folder: Path) -> None:
        if adapter_name is not None:
            model.save_adapter(folder, adapter_name)
        else:
            model.save_adapter_setup(folder, adapter_setup, head_setup=head_setup)

    def card(folder: Path) -> str:
        subject = {"adapter_name": adapter_name, "adapter_setup": adapter_setup, "head_setup": head_setup}
        peft = adapter_name is not None and is_peft_folder(folder)
        return adapter_card(model, repo_id, **subject, datasets_tag=datasets_tag, peft=peft, **card_kwargs)

    commit = {
        "commit_message": commit_message or f"Upload {what}",
        "commit_description": commit_description,
        "token": token,
        "create_pr": create_pr,
        "revision": revision,
    }
    upload = _Upload(api, repo_id, what, save, card, overwrite_adapter_card, commit)
    if folder is not None:  # the folder the user named is the working copy, and kept
        folder.mkdir(parents=True, exist_ok=True)
        return upload.run(folder)
    with tempfile.TemporaryDirectory(prefix="workbench-push-") as work_dir:
        return upload.run(Path(work_dir))


@dataclass
class _Upload:
    """One push: save into a working folder, add a card unless one is kept, commit what the save wrote."""

    api: HfApi
    repo_id: str
    what: str
    save: Callable[[Path], None]
    card: Callable[[Path], str]
    overwrite_card: bool
    commit: dict

    def run(self, folder: Path):
        api, repo_id, token, revision = self.api, self.repo_id, self.commit["token"], self.commit["revision"]
        before = _file_stamps(folder)
        self.save(folder)
        readme = folder / "README.md"
        if self.overwrite_card or not (readme.exists() or _remote_card_exists(api, repo_id, revision, token)):
            readme.write_text(self.card(folder), encoding="utf-8")
        after = _file_stamps(folder)
        changed = sorted(path for path, stamp in after.items() if before.get(path) != stamp)
        operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(folder / path)) for path in changed]
        if revision is not None and not revision.startswith("refs/pr/"):
            doing = f"creating branch {revision!r} of {repo_id!r}"
            _call(doing, repo_id, api, api.create_branch, repo_id, branch=revision, token=token, exist_ok=True)
        doing = f"uploading {self.what} to {repo_id!r}"
        return _call(doing, repo_id, api, api.create_commit, repo_id, operations=operations, **self.commit)


def adapter_card(
    model,
    repo_id: str,
    *,
    adapter_name: str | None = None,
    adapter_setup=None,
    head_setup=None,
    datasets_tag: str | None = None,
    peft: bool = False,
    tags=None,
    language=None,
    license=None,
    metrics=None,
    architecture_training: str = DEFAULT_TEXT,
    results: str = DEFAULT_TEXT,
    citation: str = DEFAULT_TEXT,
    base_model: str | None = None,
) -> str:
    """The README.md of an adapter repo: YAML metadata (the Hub's tags and filters), what it is, how to load it."""
    config = model._engine.base.config
    model_name = getattr(config, "name_or_path", "") or ""
    base_model = base_model or (model_name if _is_hub_id(model_name) else None)
    head_types = _head_types(model, adapter_name, head_setup)
    pipeline_tag = PIPELINE_TAGS.get(head_types[0]) if len(set(head_types)) == 1 else None
    library = PEFT_LIBRARY if peft else ADAPTERHUB_LIBRARY
    all_tags = [library, "adapters", config.model_type]
    if base_model:
        all_tags.append(f"base_model:adapter:{base_model}")
    all_tags += [tags] if isinstance(tags, str) else list(tags or [])
    metadata = ModelCardData(
        library_name=library,
        base_model=base_model,
        tags=list(dict.fromkeys(all_tags)),
        pipeline_tag=pipeline_tag,
        datasets=[datasets_tag] if datasets_tag else None,
        language=language,
        license=license,
        metrics=[metrics] if isinstance(metrics, str) else metrics,
    )
    if base_model:
        metadata.base_model_relation = "adapter"
    shown_model = base_model or model_name or config.model_type
    dataset = f" that was trained on the [{datasets_tag}](https://huggingface.co/datasets/{datasets_tag}) dataset"
    trained_on = dataset if datasets_tag else ""
    if adapter_name is not None:
        kind = "A PEFT adapter" if peft else "An [adapter](https://adapterhub.ml)"
        title = f"# Adapter `{repo_id}` for {shown_model}"
        head = f" It includes a prediction head for {head_types[0].replace('_', ' ')}." if head_types else ""
        intro = f"{kind} for the `{shown_model}` model{trained_on}.{head}"
        load = f'adapter_name = model.load_adapter("{repo_id}", source="hf", set_active=True)'
        ah_load = f'adapter_name = model.load_adapter("{repo_id}", set_active=True)'
    else:
        title = f"# Adapter setup `{repo_id}` for {shown_model}"
        fusions = [n for n in model.adapter_fusions if n in {f.name for f in fuse_blocks(adapter_setup)}]
        parts = [f"adapters {', '.join(f'`{n}`' for n in adapter_setup.names())}"]
        parts += [f"AdapterFusion `{n}`" for n in fusions]
        if head_setup:
            parts.append(f"heads `{head_setup}`")
        intro = f"An adapter setup, `{adapter_setup}`, for the `{shown_model}` model{trained_on}: {'; '.join(parts)}."
        load = f'adapter_setup, head_setup = model.load_adapter_setup("{repo_id}", source="hf", set_active=True)'
        ah_load = f'adapter_setup, head_setup = model.load_adapter_setup("{repo_id}", set_active=True)'
    sections = [
        title,
        intro,
        "## Usage",
        "With Adapter Workbench (`adapter-workbench`, on transformers 5):",
        _code(
            f'from workbench import AutoAdapterModel\n\nmodel = AutoAdapterModel.from_pretrained("{shown_model}")\n'
            + load
        ),
        "With the AdapterHub **[Adapters](https://github.com/Adapter-Hub/adapters)** library "
        "(`pip install -U adapters`):",
        _code(
            f'from adapters import AutoAdapterModel\n\nmodel = AutoAdapterModel.from_pretrained("{shown_model}")\n'
            + ah_load
        ),
        "## Architecture & Training",
        architecture_training,
        "## Evaluation results",
        results,
        "## Citation",
        citation,
    ]
    return f"---\n{metadata.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"


def _code(text: str) -> str:
    return f"```python\n{text}\n```"


def _head_types(model, adapter_name: str | None, head_setup) -> list[str]:
    heads = getattr(model, "heads", None) or {}
    names = [adapter_name] if adapter_name is not None else head_names(head_setup)
    return [heads[n].config.get("head_type", "") for n in names if n in heads]


def _is_hub_id(name: str) -> bool:
    """A model name that can be a Hub repo (`bert-base-uncased`, `org/name`), not a local folder."""
    if not name or name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _check_repo_id(repo_id) -> None:
    if not isinstance(repo_id, str) or not repo_id:
        raise AdapterConfigError(f"repo_id={repo_id!r}: use a Hub repo id such as 'your-name/my-adapter'")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise AdapterConfigError(f"repo_id={repo_id!r} is not a valid Hub repo id: {err}") from None


def _remote_card_exists(api, repo_id: str, revision: str | None, token) -> bool:
    doing = f"looking for the card of {repo_id!r}"
    return _call(doing, repo_id, api, api.file_exists, repo_id, "README.md", revision=revision, token=token)


def _file_stamps(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Relative path -> (inode, mtime_ns, size) of every file under `folder`: what a save changed (saves write a
    new file and rename it, so a rewritten file has a new inode even where the clock is coarse)."""
    stamps = {}
    for path in folder.rglob("*"):
        if path.is_file():
            stat = path.stat()
            stamps[path.relative_to(folder).as_posix()] = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    return stamps


def _call(doing: str, repo_id: str, api, function, *args, **kwargs):
    """Run a huggingface_hub call; its failures become a `HubPushError` that says what was being done and why."""
    where = f"{doing} on {api.endpoint}"
    try:
        return function(*args, **kwargs)
    except RevisionNotFoundError as err:
        raise HubPushError(f"{where}: the branch does not exist ({_first_line(err)})") from None
    except RepositoryNotFoundError as err:
        raise HubPushError(
            f"{where}: repo {repo_id!r} was not found or this token may not access it; a private repo needs "
            f"token= (or HF_TOKEN) of an account that can read it ({_first_line(err)})"
        ) from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise HubPushError(
                f"{where}: the Hub refused the credentials (HTTP {status}); pass token= (or set HF_TOKEN) with write "
                f"access to {repo_id.split('/')[0]!r} ({_first_line(err)})"
            ) from None
        raise HubPushError(f"{where}: the Hub answered HTTP {status} ({_first_line(err)})") from None
    except LocalTokenNotFoundError:
        raise HubPushError(f"{where}: token=True, but no token is stored: run `hf auth login` or pass token=") from None
    except (httpx2.HTTPError, OSError) as err:
        raise HubPushError(f"{where}: could not reach the Hub ({type(err).__name__}: {err})") from None
    except ValueError as err:  # e.g. card metadata the Hub rejects
        raise HubPushError(f"{where}: {err}") from None


def _first_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:3]) if lines else type(err).__name__


__all__ = ["HubPushError", "PIPELINE_TAGS", "adapter_card", "push_to_hub"]
