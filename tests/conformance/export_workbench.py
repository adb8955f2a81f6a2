"""Export files SAVED BY WORKBENCH, for the reverse conformance check (workbench -> adapters library).

Runs in the project venv (transformers 5, imports workbench). For each selected manifest case it rebuilds
the case exactly as tests/test_conformance.py does (its `build`, `model_inputs`, `flatten_outputs`), changes
nothing, and writes with workbench's own writers:

  <out>/cases/<id>/<adapter>/        model.save_adapter(dir, name, with_head=..., use_safetensors=...)
  <out>/cases/<id>/fusion_<a>_<b>/   model.save_adapter_fusion(dir, "a,b", use_safetensors=...)
  <out>/cases/<id>/workbench.safetensors   workbench outputs on the fixed batch (fixture output names)
  <out>/manifest.json                cases (fixture entries + `roundtrip` info) and skipped cases

Derived adapters (`setup.average`) are saved too; the checker loads them from the file instead of
recomputing them, so the averaged weights written by workbench are exercised as well.
Then run check_workbench_files.py in .venv-adapters (see `make -C tests/conformance roundtrip`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/ -> `import test_conformance`
sys.path.insert(0, str(HERE.parents[1]))  # repo root -> `import workbench` without installing

import test_conformance as tc  # noqa: E402

# Methods still being implemented in workbench: failures there are reported as skipped, not as errors.
IN_PROGRESS = ("lora", "ia3", "prefix", "prompt", "mam", "unipelt")


def selected(case: dict) -> bool:
    """Selection: every case that saves something (all adapter methods x all architectures, config variants,
    heads, fusions, compositions); the `<arch>-base` cases have nothing to save. All of them take ~1 min."""
    return bool(case["adapters"] or case["fusions"])


def skip_kind(case: dict) -> str:
    """How an export failure is reported: a case that tests/test_conformance.py marks as failing today (its forward
    or loading disagrees with the library, e.g. BatchSplit heads), a method still in progress, or unexpected."""
    if case["id"] in tc.DELIBERATE_DIFFERENCES:
        return "deliberate difference: " + tc.DELIBERATE_DIFFERENCES[case["id"]]
    return "in-progress method" if in_progress(case) else "UNEXPECTED"


def in_progress(case: dict) -> bool:
    specs = " ".join(a["config"] or "" for a in case["adapters"]) + " " + case["id"]
    return any(m in specs for m in IN_PROGRESS)


def export_case(case: dict, out: Path) -> dict:
    model = tc.build(case)
    case_dir = out / "cases" / case["id"]
    st = case["safetensors"]
    entry = json.loads(json.dumps(case))  # deep copy of the fixture entry
    for adapter in entry["adapters"]:
        folder = case_dir / adapter["name"]
        model.save_adapter(str(folder), adapter["name"], with_head=adapter["with_head"], use_safetensors=st)
        adapter["dir"] = str(folder.relative_to(out))
        adapter["fixture_dir"] = next(a["dir"] for a in case["adapters"] if a["name"] == adapter["name"])
    for fusion in entry["fusions"]:
        folder = case_dir / Path(fusion["dir"]).name
        with_head = {"with_head": fusion["with_head"]} if fusion["with_head"] else {}  # the head's name, as the library
        model.save_adapter_fusion(str(folder), fusion["name"], use_safetensors=st, **with_head)
        fusion["fixture_dir"] = fusion["dir"]
        fusion["dir"] = str(folder.relative_to(out))

    inputs = tc.model_inputs(case)  # the batch plus forward kwargs (`head=`) and labels
    outputs = {}
    with torch.no_grad():
        if case["setup"]["merge"]:
            flat = tc.flatten_outputs(model(**inputs))
            outputs.update({f"unmerged.{k}": v for k, v in flat.items()})
            model.merge_adapter(case["setup"]["merge"])
        outputs.update(tc.flatten_outputs(model(**inputs)))

    # Keep the output names the fixture records (the checker compares exactly those).
    expected = tc.load_file(str(tc.FIXTURES / case["expected"]))
    keep, lib_diff = {}, 0.0
    for key, want in expected.items():
        got = outputs.get(key)
        if got is None:
            raise KeyError(f"workbench produced no output {key!r}")
        keep[key] = got.detach().float().contiguous()
        lib_diff = max(lib_diff, (keep[key] - want.float()).abs().max().item())
    save_file(keep, str(case_dir / "workbench.safetensors"))
    entry["workbench_outputs"] = str((case_dir / "workbench.safetensors").relative_to(out))
    entry["fixture_model"] = entry["model"]
    entry["roundtrip"] = {"workbench_vs_library_fixture": lib_diff}
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / ".roundtrip")
    parser.add_argument("--only", help="substring filter on case ids (for debugging; prints tracebacks)")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    import transformers

    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars of transformers 5

    entries, skipped = [], []
    for case in tc.MANIFEST["cases"]:
        if not selected(case) or (args.only and args.only not in case["id"]):
            continue
        torch.manual_seed(0)
        try:
            entries.append(export_case(case, out))
            status = "exported"
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            lines = str(exc).strip().splitlines() or [""]
            error = f"{type(exc).__name__}: {lines[0][:300]}"
            kind = skip_kind(case)
            skipped.append({"id": case["id"], "error": error, "kind": kind})
            shutil.rmtree(out / "cases" / case["id"], ignore_errors=True)
            status = f"skipped ({kind}): {error}"
            if args.only:
                traceback.print_exc()
        print(f"{case['id']:45s} {status}")

    manifest = {
        "fixtures": os.path.relpath(tc.FIXTURES, out),
        "inputs": "inputs.json",
        "tolerance": tc.TOLERANCE,
        "cases": entries,
        "skipped": skipped,
    }
    shutil.copy(tc.FIXTURES / "inputs.json", out / "inputs.json")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    unexpected = [s for s in skipped if s["kind"] == "UNEXPECTED"]
    deliberate = [s for s in skipped if s["kind"].startswith("deliberate difference")]
    print(
        f"\nexported {len(entries)} case(s) to {out}; skipped {len(skipped)} "
        f"({len(skipped) - len(unexpected) - len(deliberate)} in-progress methods, {len(deliberate)} deliberate "
        f"differences (test_conformance.DELIBERATE_DIFFERENCES), {len(unexpected)} unexpected)"
    )


if __name__ == "__main__":
    main()
