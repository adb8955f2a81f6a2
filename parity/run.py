"""Runs the `adapters` library's own tests against the real library (reference) or workbench, and reports parity.

    python parity/run.py reference --python .venv-parity-ref/bin/python   # adapters 1.3.0 on transformers 4.57.6
    python parity/run.py workbench --python .venv/bin/python              # the same tests through parity/alias
    python parity/run.py workbench --set architectures                    # one set of test files only
    python parity/run.py workbench tests/test_methods/test_on_bart.py     # some test files or ids
    python parity/run.py report                                           # writes parity/RESULTS.md

The tests come in sets (TEST_SETS): `core`, the files the parity issue measured, and `architectures`, the other
model families (issue 12). A run of a set, or of some of its files, runs the files one by one, each into
`.parity/<kind>/<file>.xml`, so a stopped run keeps the files it finished; `--resume` skips files whose result was
made with the same tests and harness. A run of other paths or test ids writes `.parity/<kind>-update-<n>.xml`.
The report reads every result of a kind oldest first, so the newest outcome of each test counts
(`.parity/<kind>.xml`, one file for the whole `core` set as earlier versions wrote it, is read too).

The parity figure counts the tests that pass in the reference run and asks how many of them pass on workbench,
per set and per file. Every one that does not is listed with its error, grouped by cause; parity/KNOWN.md gives the
reason for those left on purpose.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TESTS = ROOT / ".parity" / "adapters"
RESULTS = ROOT / ".parity"
TEST_SETS = {
    # the parity issue: seven architectures, the custom-interface tests and the library-wide tests
    "core": [
        *(f"tests/test_methods/test_on_{arch}.py" for arch in
          ("bert", "roberta", "xlm_roberta", "distilbert", "gpt2", "llama", "mistral")),
        "tests/test_methods/test_on_custom_interface.py",
        "tests/test_misc",
    ],
    # issue 12: every other family the library supports, CLIP's five model classes and the plugin-interface models
    "architectures": [
        *(f"tests/test_methods/test_on_{arch}.py" for arch in
          ("albert", "bart", "beit", "bert_generation", "deberta", "debertaV2", "electra", "encoder_decoder",
           "mbart", "mt5", "plbart", "t5", "vit", "whisper", "xmod")),
        *(f"tests/test_methods/test_on_clip/test_{name}.py" for name in
          ("model", "textmodel", "textwithprojectionmodel", "visionmodel", "visionwithprojectionmodel")),
        "tests/test_methods/test_all_custom_interfaces.py",
    ],
}
# a test file's result is stale (--resume runs it again) when these differ from the ones it was made with
INPUTS = [HERE / "adapters_offline.py", TESTS / ".commit"]


def inputs_digest() -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in INPUTS if p.exists())).hexdigest()[:16]


def pytest(kind: str, python: str, tests: list[str], xml: Path) -> int:
    # workbench: this checkout's, not the one the venv's editable install points to (a git worktree shares the venv)
    paths = [str(HERE)] + ([str(HERE / "alias"), str(ROOT)] if kind == "workbench" else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    cmd = [
        str(Path(python).absolute()), "-m", "pytest", "-p", "adapters_offline", "-q", "-p", "no:cacheprovider",
        "--continue-on-collection-errors", f"--junitxml={xml}", "-o", "junit_family=xunit1", *tests,
    ]
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=TESTS, env=env)


def run(kind: str, python: str, only: list[str], sets: list[str], resume: bool) -> int:
    if not (TESTS / ".commit").exists():
        sys.exit(f"no tests in {TESTS}: run parity/fetch_tests.sh first (make parity does)")
    files = [p for s in TEST_SETS.values() for p in s]
    if only and not set(only) <= set(files):  # some tests: their outcomes update the whole files' results
        return pytest(kind, python, only, RESULTS / f"{kind}-update-{len(list(RESULTS.glob(kind + '-update-*')))}.xml")
    (RESULTS / kind).mkdir(parents=True, exist_ok=True)
    digest = inputs_digest()
    status = 0
    for path in only or [p for s in sets for p in TEST_SETS[s]]:
        xml = RESULTS / kind / (path.removesuffix(".py").replace("/", "__") + ".xml")
        made_with = xml.with_suffix(".inputs")  # the digest of the inputs the result was made with
        if resume and xml.exists() and made_with.exists() and made_with.read_text() == digest:
            print(f"{path}: kept {xml.relative_to(ROOT)}", flush=True)
            continue
        made_with.unlink(missing_ok=True)
        status = max(status, pytest(kind, python, [path], xml))
        if xml.exists():  # not when pytest was killed
            made_with.write_text(digest)
    return status


def outcomes(xml: Path) -> dict[str, tuple[str, str]]:
    """test id -> (outcome, first line of the error)."""
    result = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        module, _, cls = case.get("classname", "").rpartition(".")  # e.g. tests.test_methods.test_on_bert, Dora
        test_id = f"{module.replace('.', '/')}.py::{cls}::{case.get('name')}"
        if not case.get("classname"):  # a file that could not be collected
            test_id = f"{case.get('name', '').replace('.', '/')}.py::(collection)"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "skipped" if child.tag == "skipped" else "failed"
                message = (child.get("message") or child.text or "").strip().splitlines()[0:1]
                message = message[0][:300] if message else ""
        result[test_id] = (outcome, message)
    return result


def known_reasons() -> list[tuple[re.Pattern, str]]:
    """parity/KNOWN.md: lines `- <regex on test id or error> : <reason>`."""
    path = HERE / "KNOWN.md"
    rules = []
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("- `") and "`: " in line:
            pattern, reason = line[3:].split("`: ", 1)
            rules.append((re.compile(pattern), reason.strip()))
    return rules


def merged(kind: str) -> dict[str, tuple[str, str]]:
    """Every result of a kind, oldest first: the newest outcome of each test counts."""
    sources = [RESULTS / f"{kind}.xml", *(RESULTS / kind).glob("*.xml"), *RESULTS.glob(f"{kind}-update-*.xml")]
    result = {}
    for xml in sorted((p for p in sources if p.exists()), key=lambda p: p.stat().st_mtime):
        result.update(outcomes(xml))
    return result


def set_of(test_id: str) -> str | None:
    file = test_id.split("::")[0]
    return next((s for s, paths in TEST_SETS.items() if any(file == p or file.startswith(p + "/") for p in paths)),
                None)


def report() -> str:
    reference, workbench = merged("reference"), merged("workbench")
    rules = known_reasons()
    lines = ["# Parity with the adapters library's own tests", ""]
    totals = [0, 0]
    sections = []
    for name in TEST_SETS:
        tests = sorted(t for t in reference if set_of(t) == name)
        counted = [t for t in tests if reference[t][0] == "passed"]
        passing = {t for t in counted if workbench.get(t, ("missing", ""))[0] == "passed"}
        totals[0] += len(counted)
        totals[1] += len(passing)
        sections += _section(name, tests, counted, passing, reference, workbench, rules)
    lines += [
        "Reference: adapters 1.3.0 on transformers 4.57.6, offline. Parity: the share of the tests the reference "
        "passes that also pass on workbench through the alias package.",
        "",
        f"**All sets: {totals[1]} of {totals[0]} ({100 * totals[1] / max(totals[0], 1):.1f}%).**",
        "",
        *sections,
    ]
    return "\n".join(lines)


def _section(name, tests, counted, passing, reference, workbench, rules) -> list[str]:
    def counts(results, ids):
        c = collections.Counter(results[t][0] for t in ids if t in results)
        if not c:
            return "not run yet | | |"
        return f"{sum(c.values())} | {c['passed']} | {c['failed']} | {c['skipped']}"

    files = sorted({t.split("::")[0] for t in tests} | {p for p in TEST_SETS[name] if p.endswith(".py")})
    in_file = {f: [t for t in tests if t.split("::")[0] == f] for f in files}
    wb_ids = {f: [t for t in workbench if t.split("::")[0] == f] for f in files}
    lines = [
        f"## Set `{name}`",
        "",
        f"Reference passes **{len(counted)}** of {len(tests)} tests collected in these files (the rest fail or skip "
        f"offline for the library too). Workbench passes **{len(passing)}** of those: "
        f"**{100 * len(passing) / max(len(counted), 1):.1f}%**.",
        "",
        "| test file | reference: collected | passed | failed | skipped | workbench: collected | passed | failed | "
        "skipped | parity |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in files:
        if not in_file[f]:
            lines.append(f"| {f} | not run yet |||||||| |")
            continue
        n = sum(reference[t][0] == "passed" for t in in_file[f])
        p = sum(t in passing for t in in_file[f])
        lines.append(f"| {f} | {counts(reference, in_file[f])} | {counts(workbench, wb_ids[f])} | "
                     f"{p}/{n} |")
    lines += ["", f"### Remaining failures in `{name}`", ""]
    groups = collections.defaultdict(list)
    for t in counted:
        if t in passing:
            continue
        file = t.split("::")[0]
        not_collected = workbench.get(f"{file}::(collection)", ("", "not collected"))[1] or "not collected"
        outcome, message = workbench.get(t, ("missing", not_collected))
        reason = next((r for p, r in rules if p.search(t) or p.search(message)), None)
        groups[reason or f"unexplained: {_shape(message)}"].append(t)
    for reason, ids in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"#### {reason} ({len(ids)})")
        if len(ids) <= 20:
            lines += [f"- `{t}`" for t in ids]
        else:  # a large group: how many in each file, and a few of them
            per_file = collections.Counter(t.split("::")[0] for t in ids)
            lines.append("- " + ", ".join(f"{Path(f).stem}: {n}" for f, n in sorted(per_file.items())))
            lines += [f"- e.g. `{t}`" for t in ids[:: max(len(ids) // 3, 1)][:3]]
        lines.append("")
    return lines


def _shape(message: str) -> str:
    """An error message with its numbers and quoted names blanked, so failures of one cause group together."""
    return re.sub(r"'[^']*'|\"[^\"]*\"|\d+(\.\d+)?", "…", message)[:160]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("reference", "workbench", "report"))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--set", choices=(*TEST_SETS, "all"), default="all", help="the set of test files to run")
    parser.add_argument("--resume", action="store_true", help="skip files whose result is up to date")
    parser.add_argument("only", nargs="*", help="test paths or ids instead of whole sets")
    args = parser.parse_intermixed_args()
    if args.kind == "report":
        (HERE / "RESULTS.md").write_text(report() + "\n")
        print(re.sub(r"### Remaining.*?(?=## Set|\Z)", "", (HERE / "RESULTS.md").read_text(), flags=re.S))
    else:
        RESULTS.mkdir(exist_ok=True)
        sets = list(TEST_SETS) if args.set == "all" else [args.set]
        sys.exit(run(args.kind, args.python, args.only, sets, args.resume))


if __name__ == "__main__":
    main()
