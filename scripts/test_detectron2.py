#!/usr/bin/env python
"""Run detectron2 v0.6's own CPU test suite against the installed (patched) detectron2.

The suite is not in the sdist we build from, and its repository cannot be reached from every
machine, so it comes from a checkout the user supplies (``tests/`` of detectron2 at tag v0.6)::

    D2_TESTS=/path/to/detectron2/tests .venv/bin/python scripts/test_detectron2.py
    .venv/bin/python scripts/test_detectron2.py --tests /path/to/detectron2/tests -- -k roi_heads
    .venv/bin/python scripts/test_detectron2.py --list      # the expected failures and why

How it runs: the tests are copied to a temporary folder (so the checkout's own ``detectron2/``
source tree can never shadow the installed build) and run with pytest on the CPU only
(``CUDA_VISIBLE_DEVICES=""``); a small pytest plugin records every test's outcome. Then:

* a failure listed in :data:`EXPECTED_FAILURES` is reported with its reason and tolerated;
* any other failure (or collection error) fails the run: a fix-up broke something, or the
  stack moved on (triage it: fix it in ``scripts/build_detectron2.py`` or list it with a reason);
* an entry that names tests which now all pass fails the run too ("stale"), so the list never
  hides a fixed test; entries keyed on an error text only (a missing optional package, no
  network) cannot go stale;
* the run also fails if the tests imported a ``detectron2`` other than the installed one.

Exit status: 0 as expected, 1 unexpected failures or stale entries, 2 usage errors.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Expected:
    """A known failure: which tests (and/or which error), and why.

    Args:
        nodes: glob over pytest node ids relative to ``tests/`` (case-insensitive), e.g.
            ``"modeling/test_rpn.py::*rrpn*"``; ``"*"`` with ``error`` for a cause, not a test.
        reason: why it fails here and why that is acceptable.
        error: if set, the failure's text must contain it (the cause, not just the test).
    """

    nodes: str
    reason: str
    error: str | None = None

    def matches(self, node: str, text: str) -> bool:
        if not fnmatch.fnmatchcase(node.lower(), self.nodes.lower()):
            return False
        return self.error is None or self.error in text

    @property
    def can_go_stale(self) -> bool:
        return self.error is None


_NO_C = "needs detectron2's compiled _C, which our pure-Python build lacks ({})"
_WEIGHTS = "downloads model-zoo weights and a COCO image (no network here)"

#: The failures v0.6's CPU tests are known to have on our build, each with its reason. Node names
#: are those of the v0.6 tests; a rename upstream shows up as an unexpected failure plus a stale
#: entry, never as a silently tolerated one.
EXPECTED_FAILURES: tuple[Expected, ...] = (
    # Rotated-box ops and the fast COCOeval are C++/CUDA code in _C. At v0.6 the pairwise-IoU
    # tests of TestRotatedBoxesStructure call _C.box_iou_rotated on the CPU too (7 tests).
    Expected("layers/test_nms_rotated.py::*", _NO_C.format("nms_rotated")),
    Expected("layers/test_roi_align_rotated.py::*", _NO_C.format("roi_align_rotated")),
    Expected(
        "structures/test_rotated_boxes.py::TestRotatedBoxesLayer::*",
        _NO_C.format("box_iou_rotated"),
    ),
    Expected(
        "structures/test_rotated_boxes.py::TestRotatedBoxesStructure::test_pairwise_iou_*",
        _NO_C.format("box_iou_rotated"),
    ),
    Expected("modeling/test_roi_pooler.py::*rotated*", _NO_C.format("roi_align_rotated")),
    Expected("modeling/test_rpn.py::*rrpn*", _NO_C.format("nms_rotated, in RRPN")),
    Expected("modeling/test_roi_heads.py::*rroi_heads*", _NO_C.format("RROIHeads' rotated ops")),
    Expected("data/test_coco_evaluation.py::*test_fast_eval", _NO_C.format("COCOeval_opt")),
    # Tests that download weights or read COCO from disk.
    Expected("test_export_torchscript.py::TestScripting::test*", _WEIGHTS),
    Expected("test_export_torchscript.py::TestTracing::test*RCNN*", _WEIGHTS),
    Expected("test_export_torchscript.py::TestTracing::testRetinaNet*", _WEIGHTS),
    Expected(
        "data/test_coco_evaluation.py::*test_unknown_category",
        "reads COCO's val2017 annotations from datasets/coco (not on this machine)",
    ),
    Expected(
        "*",
        "reads COCO files from datasets/coco (not on this machine)",
        error="datasets/coco",
    ),
    Expected("*", "downloads from the internet (no network here)", error="urlopen error"),
    Expected("*", "downloads from the internet (no network here)", error="Network is unreachable"),
    Expected("*", "downloads from the internet (no network here)", error="name resolution"),
    # Optional packages we do not install.
    Expected(
        "config/test_lazy_config.py::*test_to_py",
        "LazyConfig.to_py formats with black, which is not installed (setup.py pin dropped)",
        error="black",
    ),
    Expected("*", "needs black, which is not installed", error="No module named 'black'"),
    Expected("*", "needs shapely, which is not installed", error="No module named 'shapely'"),
    # caffe2 is gone from torch: its exporter cannot run (fix-up 9 keeps the TorchScript parts).
    Expected("test_export_caffe2.py*", "caffe2 export: caffe2 is no longer part of torch"),
    Expected(
        "*", "caffe2 export: caffe2 is no longer part of torch", error="No module named 'caffe2"
    ),
)

_PLUGIN = '''
"""pytest plugin of scripts/test_detectron2.py: every test's outcome, as JSON."""
import json
import os

_OUTCOMES = {}


def _record(nodeid, outcome, text=""):
    previous = _OUTCOMES.get(nodeid)
    if previous is None or previous[0] != "failed":  # a failure in any phase sticks
        _OUTCOMES[nodeid] = (outcome, text)


def pytest_collectreport(report):
    if report.failed:
        _record(report.nodeid, "failed", report.longreprtext)


def pytest_runtest_logreport(report):
    if report.failed:
        _record(report.nodeid, "failed", report.longreprtext)
    elif report.skipped:
        _record(report.nodeid, "skipped")
    elif report.when == "call":
        _record(report.nodeid, "passed")


def pytest_sessionfinish(session):
    import detectron2

    with open(os.environ["UWM_D2_OUTCOMES"], "w") as handle:
        json.dump({"detectron2": detectron2.__file__, "outcomes": _OUTCOMES}, handle)
'''


def expected_for(node: str, text: str) -> Expected | None:
    return next((entry for entry in EXPECTED_FAILURES if entry.matches(node, text)), None)


def run_suite(tests: Path, pytest_args: Sequence[str], timeout: float) -> dict:
    """Copy ``tests`` aside, run it with the recording plugin, return the recorded outcomes."""
    with tempfile.TemporaryDirectory(prefix="d2-tests-") as tmp:
        root = Path(tmp) / "tests"
        shutil.copytree(tests, root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        plugin_dir = Path(tmp) / "plugin"
        plugin_dir.mkdir()
        (plugin_dir / "uwm_d2_outcomes.py").write_text(_PLUGIN)
        outcomes = Path(tmp) / "outcomes.json"
        env = {
            **os.environ,
            "CUDA_VISIBLE_DEVICES": "",  # the CPU tests only, on any machine
            "PYTHONPATH": str(plugin_dir),  # the plugin, and no checkout on the path
            "UWM_D2_OUTCOMES": str(outcomes),
        }
        command = [
            sys.executable, "-m", "pytest", str(root),
            "-p", "uwm_d2_outcomes", "-p", "no:cacheprovider",
            "--rootdir", str(root), "-o", "addopts=", "-q", "-rN",
            # a module that cannot import (e.g. caffe2 export) must not stop the other modules
            "--continue-on-collection-errors", *pytest_args,
        ]  # fmt: skip
        print("test-detectron2: " + " ".join(command), flush=True)
        subprocess.run(command, cwd=tmp, env=env, timeout=timeout, check=False)
        if not outcomes.is_file():
            raise SystemExit("error: pytest ended without recording any outcome (see above)")
        return json.loads(outcomes.read_text())


def judge(recorded: dict, checkout: Path) -> int:
    """Print the verdict; 0 when every failure is expected and no entry is stale."""
    installed = Path(recorded["detectron2"]).resolve()
    if checkout.resolve().parent in installed.parents:
        print(f"error: the tests imported detectron2 from the checkout ({installed})")
        return 1
    outcomes: dict[str, tuple[str, str]] = recorded["outcomes"]
    unexpected: list[tuple[str, str]] = []
    tolerated: dict[Expected, list[str]] = {}
    for node, (outcome, text) in sorted(outcomes.items()):
        if outcome != "failed":
            continue
        entry = expected_for(node, text)
        if entry is None:
            unexpected.append((node, text))
        else:
            tolerated.setdefault(entry, []).append(node)
    stale = [
        entry
        for entry in EXPECTED_FAILURES
        if entry.can_go_stale
        and entry not in tolerated
        and any(
            outcome == "passed" and fnmatch.fnmatchcase(node.lower(), entry.nodes.lower())
            for node, (outcome, _) in outcomes.items()
        )
    ]
    counts = {kind: 0 for kind in ("passed", "failed", "skipped")}
    for outcome, _ in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    print(f"\ntest-detectron2: detectron2 from {installed.parent}")
    print(
        f"test-detectron2: {counts['passed']} passed, {counts['skipped']} skipped, "
        f"{counts['failed']} failed ({sum(map(len, tolerated.values()))} expected)"
    )
    for entry, nodes in tolerated.items():
        print(f"  expected ({entry.reason}): {len(nodes)} x {entry.nodes}")
    for entry in stale:
        print(f"STALE: every test of {entry.nodes!r} passes now; drop it ({entry.reason})")
    for node, text in unexpected:
        errors = [line for line in text.splitlines() if line.startswith("E ")]
        last = (errors or text.strip().splitlines() or [""])[-1].removeprefix("E").strip()
        print(f"UNEXPECTED: {node}: {last[:200]}")
    return 1 if unexpected or stale else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Arguments after -- go to pytest (e.g. -- -k roi_heads -x).",
    )
    parser.add_argument(
        "--tests",
        type=Path,
        default=os.environ.get("D2_TESTS") or None,
        help="tests/ of a detectron2 v0.6 checkout (default: $D2_TESTS)",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for the whole run")
    parser.add_argument("--list", action="store_true", help="print the expected failures, exit")
    args, pytest_args = parser.parse_known_args()
    pytest_args = [arg for arg in pytest_args if arg != "--"]
    if args.list:
        for entry in EXPECTED_FAILURES:
            cause = f" [error contains {entry.error!r}]" if entry.error else ""
            print(f"{entry.nodes}{cause}\n    {entry.reason}")
        return 0
    if args.tests is None:
        print("error: set D2_TESTS=/path/to/detectron2/tests (a v0.6 checkout) or pass --tests")
        return 2
    tests = Path(args.tests)
    if not (tests / "modeling").is_dir() or not any(tests.glob("test_*.py")):
        print(f"error: {tests} does not look like detectron2's tests/ folder")
        return 2
    return judge(run_suite(tests, pytest_args, args.timeout), tests)


if __name__ == "__main__":
    sys.exit(main())
