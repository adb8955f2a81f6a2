"""Runs the `adapters` library's own tests against the real library (reference) or workbench, and reports parity.

    python parity/run.py reference --python .venv-parity-ref/bin/python   # adapters 1.3.0 on transformers 4.57.6
    python parity/run.py workbench --python .venv/bin/python              # the same tests through parity/alias
    python parity/run.py report                                           # writes parity/RESULTS.md

The parity figure counts the tests that pass in the reference run and asks how many of them pass on workbench.
Every one that does not is listed with its error; parity/KNOWN.md gives the reason for those left on purpose.
"""

from __future__ import annotations

import argparse
import collections
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
# The seven architectures the issue measures, the custom-interface tests and the library-wide tests.
TEST_PATHS = [
    *(f"tests/test_methods/test_on_{arch}.py" for arch in
      ("bert", "roberta", "xlm_roberta", "distilbert", "gpt2", "llama", "mistral")),
    "tests/test_methods/test_on_custom_interface.py",
    "tests/test_misc",
]


def run(kind: str, python: str, only: list[str]) -> int:
    if not (TESTS / ".commit").exists():
        sys.exit(f"no tests in {TESTS}: run parity/fetch_tests.sh first (make parity does)")
    paths = [str(HERE)] + ([str(HERE / "alias")] if kind == "workbench" else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    # a run of some tests only (`only`) is kept beside the whole run and overrides its outcomes in the report
    xml = RESULTS / (f"{kind}.xml" if not only else f"{kind}-update-{len(list(RESULTS.glob(kind + '-update-*')))}.xml")
    if not only:  # a whole run supersedes the partial ones
        for old in RESULTS.glob(f"{kind}-update-*.xml"):
            old.unlink()
    cmd = [
        str(Path(python).absolute()), "-m", "pytest", "-p", "adapters_offline", "-q", "-p", "no:cacheprovider",
        "--continue-on-collection-errors", f"--junitxml={xml}", "-o", "junit_family=xunit1", *(only or TEST_PATHS),
    ]
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=TESTS, env=env)


def outcomes(xml: Path) -> dict[str, tuple[str, str]]:
    """test id -> (outcome, first line of the error)."""
    result = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        module, _, cls = case.get("classname", "").rpartition(".")  # e.g. tests.test_methods.test_on_bert, Dora
        test_id = f"{module.replace('.', '/')}.py::{cls}::{case.get('name')}"
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
    """The whole run's outcomes, updated by later runs of some of its tests (oldest first)."""
    result = outcomes(RESULTS / f"{kind}.xml")
    for update in sorted(RESULTS.glob(f"{kind}-update-*.xml"), key=lambda p: p.stat().st_mtime):
        result.update(outcomes(update))
    return result


def report() -> str:
    reference, workbench = merged("reference"), merged("workbench")
    counted = sorted(t for t, (o, _) in reference.items() if o == "passed")
    passing = [t for t in counted if workbench.get(t, ("missing", ""))[0] == "passed"]
    failing = [t for t in counted if t not in set(passing)]
    rules = known_reasons()
    by_file = collections.defaultdict(lambda: [0, 0])
    for t in counted:
        by_file[t.split("::")[0]][0] += 1
        by_file[t.split("::")[0]][1] += t in set(passing)
    lines = [
        "# Parity with the adapters library's own tests",
        "",
        f"Reference: adapters 1.3.0 on transformers 4.57.6 passes **{len(counted)}** of {len(reference)} tests "
        "collected in these files (the rest fail or skip offline for the library too).",
        f"Workbench through the alias package passes **{len(passing)}** of those: "
        f"**{100 * len(passing) / max(len(counted), 1):.1f}%**.",
        "",
        "| test file | reference passes | workbench passes |",
        "|---|---|---|",
        *(f"| {f} | {n} | {p} |" for f, (n, p) in sorted(by_file.items())),
        "",
        "## Remaining failures",
        "",
    ]
    groups = collections.defaultdict(list)
    for t in failing:
        outcome, message = workbench.get(t, ("missing", "not collected"))
        reason = next((r for p, r in rules if p.search(t) or p.search(message)), None)
        groups[reason or f"unexplained: {_shape(message)}"].append(t)
    for reason, tests in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"### {reason} ({len(tests)})")
        lines += [f"- `{t}`" for t in tests] + [""]
    return "\n".join(lines)


def _shape(message: str) -> str:
    """An error message with its numbers and quoted names blanked, so failures of one cause group together."""
    return re.sub(r"'[^']*'|\"[^\"]*\"|\d+(\.\d+)?", "…", message)[:160]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("reference", "workbench", "report"))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("only", nargs="*", help="test paths or ids instead of the whole set")
    args = parser.parse_intermixed_args()
    if args.kind == "report":
        (HERE / "RESULTS.md").write_text(report() + "\n")
        print((HERE / "RESULTS.md").read_text().split("## Remaining")[0])
    else:
        RESULTS.mkdir(exist_ok=True)
        run(args.kind, args.python, args.only)


if __name__ == "__main__":
    main()
