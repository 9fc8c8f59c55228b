"""Every example of every tool's --help, run as written, one after the other in one workspace.

The examples form one chain on the README quick start's paths (``data/phantom``, ``output/...``):
make_phantom, make_coco, train_net, cross_validate (interrupted, refused without --resume,
continued; then Mask R-CNN from its folds), choose_ensemble, export_model, infer_submit, evaluate,
visualize, export_nifti, predict_nifti. They run with bash in a scratch folder that links this
checkout's ``tools/`` and ``configs/``, after the README test's documented substitutions that
shrink them to seconds: a tiny phantom, the instant configs instead of the demo configs, 3 folds
instead of 4, fewer iterations. Every example must exit 0 without a traceback (one is meant to be
refused: the interrupted cross-validation rerun without --resume).

The cross-validation of the chain is then checked end to end: out-of-fold maps cover every
training case-day once, the summary is the score of the files it writes under every reading, the
chosen rule scores at least the config's and reads back as the same rule, a rerun skips the
finished folds, and bad input is one line that writes nothing.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..conftest import INSTANT_CONFIGS, REPO_ROOT

#: The tools in the order their examples run (each may use what the ones before it wrote).
CHAIN = (
    "make_phantom",
    "make_coco",
    "train_net",
    "cross_validate",
    "choose_ensemble",
    "export_model",
    "infer_submit",
    "evaluate",
    "visualize",
    "export_nifti",
    "predict_nifti",
)

#: Example text → what runs instead: the README test's sizes (tests/test_readme.py).
SMALLER = {
    "--cases 8 --test-cases 2 --max-slices 40": "--cases 3 --test-cases 1 --max-slices 8",
    "--folds 4": "--folds 3",
    "UWM.NUM_FOLDS 4": "UWM.NUM_FOLDS 3",
    "configs/demo/semantic_R_18_FPN_cpu_demo.yaml": INSTANT_CONFIGS["semantic"],
    "configs/demo/mask_rcnn_R_18_FPN_cpu_demo.yaml": INSTANT_CONFIGS["mask_rcnn"],
    "SOLVER.MAX_ITER 400": "SOLVER.MAX_ITER 8",
}


def examples(tool: str) -> list[str]:
    """The commands of a tool's ``Examples:`` block: continuation lines joined, comments out."""
    source = (REPO_ROOT / "tools" / f"{tool}.py").read_text()
    doc = ast.get_docstring(ast.parse(source)) or ""
    block = doc.split("Examples:\n", 1)[1]
    block = re.split(r"\n\n(?=[A-Za-z-])", block)[0]
    joined = re.sub(r"\\\n\s*", "", block)
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("python ")]


def smaller(command: str) -> str:
    for original, replacement in SMALLER.items():
        command = command.replace(original, replacement)
    return command.replace("python tools/", f"{sys.executable} tools/", 1)


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@dataclass
class Chain:
    """The workspace and what each example printed, by ``(tool, index)``."""

    root: Path
    runs: dict[tuple[str, int], subprocess.CompletedProcess] = field(default_factory=dict)
    refused: subprocess.CompletedProcess | None = None
    snapshots: dict[str, dict[str, str]] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
        env.pop("VIRTUAL_ENV", None)
        return env

    def run(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", smaller(command)],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=900,
        )

    def interrupt(self, command: str, until: Path, holding: str = "") -> None:
        """Start ``command``, kill it (and its children) once ``until`` exists and holds
        ``holding``."""
        process = subprocess.Popen(
            ["bash", "-c", smaller(command)],
            cwd=self.root,
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 600
        try:
            while not (until.exists() and holding in until.read_text()):
                assert process.poll() is None, f"{command} ended before it was interrupted"
                assert time.monotonic() < deadline, f"no {until} in time"
                time.sleep(0.05)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _run_cross_validation(chain: Chain) -> None:
    """The cross_validate examples, with an interruption: the first is killed in fold 0 and
    rerun (refused: no --resume), the third (--resume) continues it, then the second."""
    first, init_from, resume = examples("cross_validate")
    cv = chain.root / "output" / "cv_semantic"
    # Killed once the mid-run checkpoint is recorded: killed between writing the checkpoint
    # and recording it, the fold would have nothing to resume from (and start over).
    chain.interrupt(first, cv / "fold0" / "last_checkpoint", "model_0000002.pth")
    chain.snapshots["killed"] = _snapshot(cv)
    chain.refused = chain.run(first)
    chain.snapshots["refused"] = _snapshot(cv)
    chain.runs[("cross_validate", 2)] = chain.run(resume)
    chain.runs[("cross_validate", 1)] = chain.run(init_from)
    chain.snapshots["folds"] = {k: _snapshot(cv / f"fold{k}") for k in (0, 1, 2)}
    chain.snapshots["oof"] = _snapshot(cv / "oof")
    chain.snapshots["cv"] = _snapshot(cv)
    chain.runs[("cross_validate", 0)] = chain.run(first)  # all finished: skipped


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    root = tmp_path_factory.mktemp("examples")
    for name in ("tools", "configs"):
        (root / name).symlink_to(REPO_ROOT / name)
    result = Chain(root)
    for tool in CHAIN:
        if tool == "cross_validate":
            _run_cross_validation(result)
            continue
        for index, command in enumerate(examples(tool)):
            result.runs[(tool, index)] = result.run(command)
    return result


def test_every_tool_is_in_the_chain_and_shows_examples() -> None:
    tools = sorted(path.stem for path in (REPO_ROOT / "tools").glob("*.py"))
    assert sorted(CHAIN) == tools
    assert all(examples(tool) for tool in CHAIN)
    text = "\n".join(command for tool in CHAIN for command in examples(tool))
    for original in SMALLER:
        assert original in text, f"no example says {original!r} any more: update SMALLER"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tool", "index"),
    [(tool, index) for tool in CHAIN for index in range(len(examples(tool)))],
    ids=lambda value: str(value),
)
def test_the_example_runs_as_written(chain: Chain, tool: str, index: int) -> None:
    run = chain.runs[(tool, index)]
    assert run.returncode == 0, f"{examples(tool)[index]}\n{run.stdout[-1500:]}{run.stderr[-3000:]}"
    assert "Traceback" not in run.stderr


# -- the cross-validation of the chain --------------------------------------------------------


@pytest.mark.slow
def test_an_interrupted_fold_is_refused_without_resume_then_continued(chain: Chain) -> None:
    lines = [line for line in chain.refused.stderr.splitlines() if line.strip()]
    assert chain.refused.returncode == 2 and len(lines) == 1, chain.refused.stderr[-2000:]
    assert "fold 0 stopped at iteration 3 of 6" in lines[0] and "--resume" in lines[0]
    assert chain.snapshots["refused"] == chain.snapshots["killed"]  # nothing written
    assert "fold 0: continued from iteration 3" in chain.runs[("cross_validate", 2)].stdout
    log = (chain.root / "output" / "cv_semantic" / "fold0" / "log.txt").read_text()
    assert "Starting training from iteration 3" in log


@pytest.mark.slow
def test_a_rerun_skips_the_finished_folds_and_keeps_their_files(chain: Chain) -> None:
    cv = chain.root / "output" / "cv_semantic"
    again = chain.runs[("cross_validate", 0)].stdout
    for fold in (0, 1, 2):
        assert f"fold {fold}: finished (iteration 6), skipped" in again
        assert _snapshot(cv / f"fold{fold}") == chain.snapshots["folds"][fold]
    assert _snapshot(cv / "oof") == chain.snapshots["oof"]
    # Nothing the summary is made from changed: it is kept, not searched again.
    assert "nothing changed since the summary was written" in again
    assert _snapshot(cv) == chain.snapshots["cv"]
    assert "config's rule" in again and "chosen, cross-validated" in again  # the table again


@pytest.mark.slow
def test_out_of_fold_maps_cover_every_training_case_day_once(chain: Chain) -> None:
    from uwm_d2.core.probability_files import ProbabilityFolder
    from uwm_d2.crossval.plan import case_days_by_fold
    from uwm_d2.data.splits import fold_assignment

    data, cv = chain.root / "data" / "phantom", chain.root / "output" / "cv_semantic"
    by_fold = case_days_by_fold(data, fold_assignment(data / "coco"), exclude_bad=True)
    folds = {day: fold for fold, days in by_fold.items() for day in days}
    oof = ProbabilityFolder(cv / "oof")
    oof.check_coverage(folds, folds)  # each once, each by its own fold's model
    oof.check(scans={day: ids for days in by_fold.values() for day, ids in days.items()})
    assert oof.tta


@pytest.mark.slow
def test_the_summary_is_the_score_of_the_files_it_writes(chain: Chain) -> None:
    from uwm_d2.evaluation.csv_scoring import score_csv

    data, cv = chain.root / "data" / "phantom", chain.root / "output" / "cv_semantic"
    scores = json.loads((cv / "cv_summary.json").read_text())["scores"]
    for label, name in (("default", "oof_default.csv"), ("chosen", "oof_tuned.csv")):
        for reading in ("project", "competition", "mlebench"):
            scored = score_csv(cv / name, reading, data_root=data, truth_csv=cv / "oof_truth.csv")
            assert scores[label][reading]["all"]["score"] == pytest.approx(
                scored["score"], abs=1e-9
            ), (label, reading)
    # The evaluate example on oof_tuned.csv printed the same project score.
    evaluated = json.loads((chain.root / "output" / "oof_scores.json").read_text())
    assert evaluated["score"] == pytest.approx(scores["chosen"]["project"]["all"]["score"])
    project = {label: scores[label]["project"]["all"]["score"] for label in scores}
    assert project["chosen"] >= project["default"]  # the config's rule is among the candidates
    assert set(scores["default"]["project"]["folds"]) == {"0", "1", "2"}
    interval = scores["chosen"]["project"]["all"]
    assert interval["low"] <= interval["score"] <= interval["high"]


@pytest.mark.slow
def test_the_chosen_rule_written_and_read_back_is_the_same_rule(chain: Chain) -> None:
    from uwm_d2.core.merge import MergeRule
    from uwm_d2.inference.ensemble import override_rule, read_ensemble

    cv = chain.root / "output" / "cv_semantic"
    summary = json.loads((cv / "cv_summary.json").read_text())
    chosen = MergeRule.from_dict(summary["rules"]["chosen"])
    members, merge = read_ensemble(cv / "ensemble.yaml")
    assert override_rule(MergeRule(), merge) == chosen
    (member,) = members
    assert member["config"] == str(Path("output/cv_semantic/config.yaml"))
    assert member["weights"] == [f"output/cv_semantic/fold{k}/model_best.pth" for k in (0, 1, 2)]


@pytest.mark.slow
def test_mask_rcnn_folds_start_from_the_semantic_folds(chain: Chain) -> None:
    log = (chain.root / "output" / "cv_mask_rcnn" / "fold1" / "log.txt").read_text()
    assert "output/cv_semantic/fold1/model_best.pth" in log
    assert "loaded from the checkpoint: backbone" in log and "starting fresh: " in log


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "opts", "expected"),
    [
        pytest.param("--folds 3", "", "fold 3 is out of range", id="fold-out-of-range"),
        pytest.param("--folds 0,0", "", "fold 0 is given twice", id="fold-twice"),
        pytest.param("", "SOLVER.BASE_LR 0.001", "another config", id="other-config"),
        pytest.param("--no-tta", "", "flip TTA set otherwise", id="other-tta"),
        pytest.param("", "UWM.NUM_FOLDS 2", "holds 3 folds", id="other-num-folds"),
        pytest.param("--init-from output", "", "not a cross-validation folder", id="bad-init"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    chain: Chain, flags: str, opts: str, expected: str
) -> None:
    cv = chain.root / "output" / "cv_semantic"
    before = _snapshot(cv)
    first = examples("cross_validate")[0].replace(
        "--out output/cv_semantic", f"{flags} --out output/cv_semantic"
    )
    run = chain.run(f"{first} {opts}")
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-2000:]
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert _snapshot(cv) == before


@pytest.mark.slow
def test_a_bad_fold_list_for_a_new_folder_leaves_no_folder(chain: Chain) -> None:
    first = examples("cross_validate")[0].replace("output/cv_semantic", "output/new/cv")
    run = chain.run(first.replace("--out", "--folds 0,7 --out"))
    assert run.returncode == 2 and "fold 7 is out of range" in run.stderr
    assert not (chain.root / "output" / "new").exists()


@pytest.mark.slow
def test_the_chain_hands_each_tool_what_the_next_one_reads(chain: Chain) -> None:
    """What the README quick start's commands (all of them examples) leave behind."""
    import pandas as pd

    from uwm_d2.core.probability_files import ProbabilityFolder

    data, output = chain.root / "data" / "phantom", chain.root / "output"
    sample = pd.read_csv(data / "sample_submission.csv", keep_default_na=False)
    for name in ("submission.csv", "cv_submission.csv", "exported_submission.csv"):
        rows = pd.read_csv(output / name, keep_default_na=False)
        assert list(rows.columns) == ["id", "class", "predicted"]
        assert rows[["id", "class"]].equals(sample[["id", "class"]]), name
    scores = json.loads((output / "scores_all.json").read_text())
    assert set(scores["readings"]) == {"project", "competition", "mlebench"}
    assert 0.0 <= scores["score"] <= 1.0
    # Trained, then resumed from its finished 6 iterations to 8, then scored by --eval-only.
    assert (output / "semantic" / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert "Starting training from iteration 6" in (output / "semantic" / "log.txt").read_text()
    assert (output / "semantic_eval" / "inference" / "uwm_results_uwm_val.json").is_file()
    assert not (output / "semantic_eval" / "config.yaml").exists()
    pictures = sorted(path.suffix for path in (output / "pictures").iterdir())
    assert pictures == [".gif", ".png", ".png"]
    assert any(path.name.endswith("_seg.nii.gz") for path in (output / "nifti").iterdir())
    tested = ProbabilityFolder(output / "test_probabilities")
    tested.check_coverage(sorted({i.rsplit("_slice_", 1)[0] for i in sample["id"]}))
