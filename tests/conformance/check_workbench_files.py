"""Load files SAVED BY WORKBENCH with the real AdapterHub `adapters` library and match workbench's outputs.

Runs in .venv-adapters (adapters 1.3.0, transformers 4.57.6), after export_workbench.py has written
<dir>/manifest.json (default tests/conformance/.roundtrip). For every exported case it:

  1. loads the base model from the fixtures (`adapters.init(AutoModel)` or `AutoAdapterModel`, same
     attn_implementation), then every adapter (derived/averaged ones too: from their files), head and fusion
     from the workbench-written folders with the library's own loaders;
  2. checks the load was complete: the library's loaders only *log* missing / unexpected keys, so the
     `adapters` loggers are captured (any "could not be found" / "could not be loaded" fails the case), and
     independently every parameter the library added must come from a workbench file (or the fixture's
     `unsaved_parameters`), every key of a workbench file must land in the model, with the same values;
  3. activates the same setup/head, runs the fixed batch (and `merge_adapter` for merge cases) and compares
     with workbench's outputs to the tolerance (1e-4).

It also diffs each workbench folder against the library-written fixture folder (json fields, weight file
names, key names and shapes) and prints the differences. Exit status 1 on any failed case.

Cases whose workbench forward already disagrees with the library fixture (a workbench forward bug, covered
by tests/test_conformance.py) are counted as `files-ok` when the library output on workbench's files matches
the library fixture instead: the files are right, the forward is not.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
import warnings
from pathlib import Path

import torch
import transformers
from adapters.composition import AdapterCompositionBlock
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from generate import call_kwargs, collect_outputs, load_base, model_inputs, provide_stochastic_depth  # noqa: E402  (same venv and helpers)

IGNORED_JSON_FIELDS = {"model_name"}  # path of the base model; differs by construction
MAX_LINES = 8  # load problems printed per case


class Capture(logging.Handler):
    """Collects the `adapters` loaders' reports of missing / unexpected keys."""

    PATTERNS = ("could not be found in loaded weights file", "could not be loaded into model")

    def __init__(self):
        super().__init__(logging.INFO)
        self.problems: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if any(p in message for p in self.PATTERNS):
            self.problems.append(message[:400])


def read_weights(path: Path) -> dict:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".bin", ".safetensors"))


def load_model(case: dict, fixtures: Path):
    return load_base(case["model_class"], fixtures / case["fixture_model"], case["attn_implementation"])


def model_key(key: str, own: dict, prefix: str) -> str | None:
    """The model key a saved key lands on (the library adds / strips the base-model prefix as needed)."""
    stripped = key[len(prefix) + 1 :] if key.startswith(prefix + ".") else None
    for candidate in (key, f"{prefix}.{key}", stripped):
        if candidate is not None and candidate in own:
            return candidate
    return None


def check_case(case: dict, root: Path, fixtures: Path, inputs: dict, tol: float, capture: Capture) -> dict:
    capture.problems.clear()
    model = load_model(case, fixtures)
    base_keys = set(model.state_dict())
    st = case["safetensors"]
    for ad in case["adapters"]:
        kwargs = {"with_head": ad["with_head"]} if case["model_class"] == "adapter_model" else {}
        model.load_adapter(str(root / ad["dir"]), load_as=ad["name"], use_safetensors=st, **kwargs)
    for fusion in case["fusions"]:
        model.load_adapter_fusion(str(root / fusion["dir"]), use_safetensors=st)

    # Completeness of the load, independent of the library's logging (before unsaved_parameters are applied,
    # so that they cannot mask a value that did not load).
    problems = list(capture.problems)
    own = model.state_dict()
    prefix = model.base_model_prefix
    covered = set()
    folders = [root / a["dir"] for a in case["adapters"]] + [root / f["dir"] for f in case["fusions"]]
    for folder in folders:
        for path in weight_files(folder):
            for key, value in read_weights(path).items():
                target = model_key(key, own, prefix)
                if target is None:
                    problems.append(f"{path.relative_to(root)}: key {key!r} is not in the adapters model")
                    continue
                covered.add(target)
                if not torch.equal(own[target].float(), value.float()):
                    diff = (own[target].float() - value.float()).abs().max().item()
                    problems.append(f"{path.relative_to(root)}: {key!r} not loaded (differs by {diff:.2e})")
    if case["unsaved_parameters"]:
        # Parameters the library never writes for this case (fixture quirk); only fill what no file provided.
        unsaved = load_file(str(fixtures / case["unsaved_parameters"]))
        unsaved = {k: v for k, v in unsaved.items() if k not in covered}
        model.load_state_dict(unsaved, strict=False)
        covered |= set(unsaved)
    for key in sorted(set(own) - base_keys - covered):
        problems.append(f"model parameter {key!r} is in no workbench file (kept its init value)")

    setup = case["setup"]
    if setup["head_before"]:
        model.active_head = setup["head_before"]
    if setup["active"]:
        model.set_active_adapters(AdapterCompositionBlock.from_dict(setup["active"]))
    if setup["head"]:
        model.active_head = setup["head"]
    model.eval()
    got = {}
    with torch.no_grad():
        batch = model_inputs(inputs, case["input_layout"])
        if case["labels"] is not None:
            batch["labels"] = torch.tensor(case["labels"])
        if setup["merge"]:
            unmerged = collect_outputs(model(**call_kwargs(batch, case["forward_kwargs"])))
            got.update({f"unmerged.{k}": v for k, v in unmerged.items()})
            model.merge_adapter(setup["merge"])
        got.update(collect_outputs(model(**call_kwargs(batch, case["forward_kwargs"]))))

    def max_diff(reference: dict) -> float:
        worst = 0.0
        for key, want in reference.items():
            if key not in got:
                problems.append(f"adapters produced no output {key!r}")
                return float("inf")
            if tuple(got[key].shape) != tuple(want.shape):
                problems.append(f"{key}: shape {tuple(got[key].shape)} != {tuple(want.shape)}")
                return float("inf")
            worst = max(worst, (got[key] - want.float()).abs().max().item())
        return worst

    diff = max_diff(load_file(str(root / case["workbench_outputs"])))
    lib_diff = max_diff(load_file(str(fixtures / case["expected"])))
    wb_vs_lib = case["roundtrip"]["workbench_vs_library_fixture"]
    load_ok = not problems
    if load_ok and diff <= tol:
        status = "ok"
    elif load_ok and wb_vs_lib > tol and lib_diff <= tol:
        status = "files-ok"  # the library on workbench files reproduces the fixture; workbench's forward not
    elif load_ok and not case.get("library_roundtrip", {}).get("ok", True):
        # The library cannot reproduce the fixture from its own files either (DiReFT: it never keeps
        # `subtract_projection`), so it cannot from ours: a limit of the library, not of workbench's files.
        status = "library-limited"
    else:
        status = "FAIL"
    return {"diff": diff, "lib_diff": lib_diff, "status": status, "problems": problems}


def flat_json(data, prefix="") -> dict:
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out.update(flat_json(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def file_differences(case: dict, root: Path, fixtures: Path) -> list[str]:
    """Differences between the workbench-written folders and the library-written fixture folders."""
    notes = []
    for item in case["adapters"] + case["fusions"]:
        mine, theirs = root / item["dir"], fixtures / item["fixture_dir"]
        label = Path(item["dir"]).name
        names_mine = {p.name for p in mine.iterdir()}
        names_theirs = {p.name for p in theirs.iterdir()}
        if names_mine != names_theirs:
            notes.append(f"{label}: files {sorted(names_mine)} vs library {sorted(names_theirs)}")
        for name in sorted(names_mine & names_theirs):
            a, b = mine / name, theirs / name
            if a.suffix == ".json":
                fa, fb = flat_json(json.loads(a.read_text())), flat_json(json.loads(b.read_text()))
                for key in sorted(set(fa) | set(fb)):
                    if key.split(".")[-1] in IGNORED_JSON_FIELDS:
                        continue
                    if fa.get(key, "<absent>") != fb.get(key, "<absent>"):
                        notes.append(
                            f"{label}/{name}: {key} = {fa.get(key, '<absent>')!r}, library {fb.get(key, '<absent>')!r}"
                        )
            elif a.suffix in (".bin", ".safetensors"):
                ka = {k: tuple(v.shape) for k, v in read_weights(a).items()}
                kb = {k: tuple(v.shape) for k, v in read_weights(b).items()}
                only_a, only_b = sorted(set(ka) - set(kb)), sorted(set(kb) - set(ka))
                if only_a:
                    notes.append(f"{label}/{name}: {len(only_a)} key(s) only in ours, e.g. {only_a[:2]}")
                if only_b:
                    notes.append(f"{label}/{name}: {len(only_b)} key(s) only in library's, e.g. {only_b[:2]}")
                shapes = [k for k in set(ka) & set(kb) if ka[k] != kb[k]]
                if shapes:
                    k = sorted(shapes)[0]
                    notes.append(f"{label}/{name}: {len(shapes)} shape diff(s), e.g. {k}: {ka[k]} vs {kb[k]}")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=HERE / ".roundtrip")
    parser.add_argument(
        "--fixtures",
        type=Path,
        default=None,
        help="the library fixtures (default: the manifest's `fixtures`, relative to --dir)",
    )
    parser.add_argument("--only", help="substring filter on case ids (prints tracebacks)")
    parser.add_argument("--quiet-files", action="store_true", help="do not print file differences")
    args = parser.parse_args()
    root = args.dir.resolve()
    manifest = json.loads((root / "manifest.json").read_text())
    fixtures = (args.fixtures or root / manifest["fixtures"]).resolve()
    inputs = json.loads((root / manifest["inputs"]).read_text())
    tol = manifest["tolerance"]

    torch.set_num_threads(2)
    provide_stochastic_depth()  # AdapterPlus configs need it to load without torchvision (see generate.py)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    capture = Capture()
    adapters_logger = logging.getLogger("adapters")
    adapters_logger.setLevel(logging.INFO)
    adapters_logger.propagate = False  # keep "Loading module weights from ..." noise off the console
    adapters_logger.addHandler(capture)

    rows, details, failed = [], {}, 0
    for case in manifest["cases"]:
        if args.only and args.only not in case["id"]:
            continue
        try:
            result = check_case(case, root, fixtures, inputs, tol, capture)
        except Exception as exc:  # noqa: BLE001
            lines = str(exc).strip().splitlines() or [""]
            result = {
                "diff": float("nan"),
                "lib_diff": float("nan"),
                "status": "FAIL",
                "problems": [f"{type(exc).__name__}: {lines[0][:300]}"],
            }
            if args.only:
                traceback.print_exc()
        try:
            notes = file_differences(case, root, fixtures)
        except Exception as exc:  # noqa: BLE001 - informational only
            notes = [f"could not diff against the fixture files: {type(exc).__name__}: {exc}"]
        failed += result["status"] == "FAIL"
        rows.append((case["id"], result))
        if result["problems"] or notes:
            details[case["id"]] = (result["problems"], notes)

    print(f"{'case':45s} {'max diff':>10s} {'vs library':>10s}  status")
    for case_id, r in rows:
        print(f"{case_id:45s} {r['diff']:10.2e} {r['lib_diff']:10.2e}  {r['status']}")
    if details:
        print("\nDetails (load problems fail a case; differences from the library's own files are notes):")
        for case_id, (problems, notes) in details.items():
            for p in problems[:MAX_LINES]:
                print(f"  {case_id}: LOAD: {p}")
            if len(problems) > MAX_LINES:
                print(f"  {case_id}: LOAD: ... and {len(problems) - MAX_LINES} more")
            if not args.quiet_files:
                for n in notes:
                    print(f"  {case_id}: file: {n}")
    counts = {s: sum(r["status"] == s for _, r in rows) for s in ("ok", "files-ok", "library-limited", "FAIL")}
    print(
        f"\n{len(rows)} case(s): {counts['ok']} ok, {counts['files-ok']} files-ok (workbench forward "
        f"differs from the fixture, files load correctly), {counts['library-limited']} library-limited (the "
        f"library does not reproduce the fixture from its own files either), {counts['FAIL']} FAIL; "
        f"{len(manifest['skipped'])} not exported by workbench:"
    )
    for skip in manifest["skipped"]:
        print(f"  {skip['id']}: {skip['error']} ({skip['kind']})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
