"""``tools/cross_validate.py``'s job: train every fold, predict every fold's validation case-days
with that fold's model, then choose the merge rule on those out-of-fold maps and report.

The folder it fills is described in :mod:`uwm_d2.crossval.plan`. In order:

1. :func:`prepare`: every check that needs no training, before anything is written (a new
   ``--out`` that a later check refuses is removed again): the config, the data root, the COCO
   folder and its folds (built once into ``DIR/coco`` unless ``UWM.COCO_DIR`` names one; its
   number of folds must be ``UWM.NUM_FOLDS``), ``--folds``, a folder of another run, a fold
   interrupted without ``--resume``, ``--init-from``;
2. :func:`train_folds`: fold ``k`` is ``tools/train_net.py`` with ``UWM.FOLD k OUTPUT_DIR
   DIR/fold{k}`` (the same trainer, checks and ``splits.json`` as any run), one after the other, its
   progress on the console; a finished fold is skipped, an interrupted one continued with
   ``--resume``; a fold that fails stops the run in one line naming it and its log;
3. :func:`predict_out_of_fold`: each fold's best checkpoint (flip TTA unless ``--no-tta``) predicts
   its validation case-days into ``DIR/oof`` (8-bit maps, :mod:`uwm_d2.core.probability_files`);
   case-days already there are kept;
4. :func:`uwm_d2.crossval.report.report_cross_validation`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uwm_d2
from uwm_d2.core.atomic import check_output_folder, output_folder
from uwm_d2.core.errors import UWMInputError, UWMRunError, one_line
from uwm_d2.core.progress import Progress
from uwm_d2.crossval.plan import (
    CrossValRecord,
    case_days_by_fold,
    check_init_folder,
    config_digest,
    init_checkpoints,
    parse_folds,
    record_of,
)

logger = logging.getLogger(__name__)

#: Where ``tools/train_net.py`` is: cross-validation runs from a checkout, like training.
TRAIN_NET = Path(uwm_d2.__file__).resolve().parents[1] / "tools" / "train_net.py"


@dataclass
class CrossValidation:
    """A checked cross-validation run (what :func:`prepare` returns)."""

    config_file: str
    opts: list[str]
    out: Path
    cfg: Any
    coco_dir: Path
    folds: list[int]
    case_days: dict[int, dict[str, list[str]]]
    record: CrossValRecord
    resume: bool
    tta: bool
    num_gpus: int
    init: dict[int, Path] = field(default_factory=dict)
    states: dict[int, tuple[str, int | None]] = field(default_factory=dict)

    def fold_dir(self, fold: int) -> Path:
        return self.out / f"fold{fold}"

    def checkpoint(self, fold: int) -> Path:
        """The fold's best checkpoint, or its final one when it never evaluated."""
        best = self.fold_dir(fold) / "model_best.pth"
        return best if best.is_file() else self.fold_dir(fold) / "model_final.pth"


def _fold_state(folder: Path, max_iter: int) -> tuple[str, int | None]:
    """``("new" | "interrupted" | "finished", iteration of its last checkpoint)``."""
    from uwm_d2.engine.prepare import last_checkpoint

    found = last_checkpoint(folder)
    if found is None:
        return "new", None
    iteration = found[1]
    return ("finished" if iteration + 1 >= max_iter else "interrupted"), iteration


def prepare(
    config_file: str,
    opts: list[str],
    out: str | os.PathLike,
    folds: str = "all",
    resume: bool = False,
    tta: bool = True,
    num_gpus: int = 1,
    init_from: str | os.PathLike | None = None,
) -> CrossValidation:
    """Every check of step 1 (module docstring), and the COCO files built if missing.

    Raises:
        UWMInputError: naming the first thing that is wrong; nothing is left written then.
    """
    from uwm_d2.config import build_cfg
    from uwm_d2.core.layout_reader import check_data_root
    from uwm_d2.data.register import ensure_coco_files, fold_numbers
    from uwm_d2.data.splits import fold_assignment
    from uwm_d2.engine.launch import check_num_processes

    cfg = build_cfg(config_file, opts)
    out = Path(out)
    check_output_folder(out)
    check_num_processes(num_gpus, cfg.MODEL.DEVICE)
    data_root = check_data_root(cfg.UWM.DATA_ROOT, "UWM.DATA_ROOT")
    coco_dir = Path(cfg.UWM.COCO_DIR) if cfg.UWM.COCO_DIR else out / "coco"
    # UWM.NUM_FOLDS must be the COCO folder's count (checked below): --folds fails before a build.
    chosen = parse_folds(folds, cfg.UWM.NUM_FOLDS)
    if init_from is not None:
        check_init_folder(init_from)
    with output_folder(out):  # a new --out is removed again if anything below refuses
        ensure_coco_files(coco_dir, data_root, cfg.UWM.NUM_FOLDS)
        num_folds = len(fold_numbers(coco_dir))
        if num_folds != cfg.UWM.NUM_FOLDS:
            raise UWMInputError(
                f"UWM.NUM_FOLDS is {cfg.UWM.NUM_FOLDS} but the COCO folder {str(coco_dir)!r} holds "
                f"{num_folds} folds; set UWM.NUM_FOLDS {num_folds}, or rebuild the folder with "
                f"tools/make_coco.py --folds {cfg.UWM.NUM_FOLDS}"
            )
        assignment = fold_assignment(coco_dir)
        record = record_of(cfg, config_file, assignment, coco_dir, tta)
        previous = CrossValRecord.read(out)
        if previous is not None:
            previous.check(record, out)
        run = CrossValidation(
            config_file=str(config_file),
            opts=list(opts),
            out=out,
            cfg=cfg,
            coco_dir=coco_dir,
            folds=chosen,
            case_days=case_days_by_fold(data_root, assignment, cfg.UWM.EXCLUDE_BAD),
            record=record,
            resume=resume,
            tta=tta,
            num_gpus=num_gpus,
        )
        if init_from is not None:
            run.init = init_checkpoints(init_from, run.folds, coco_dir)
        for fold in run.folds:
            state, iteration = _fold_state(run.fold_dir(fold), cfg.SOLVER.MAX_ITER)
            if state == "interrupted" and not resume:
                raise UWMInputError(
                    f"fold {fold} stopped at iteration {iteration + 1} of {cfg.SOLVER.MAX_ITER} "
                    f"({run.fold_dir(fold)}); continue it with --resume"
                )
            run.states[fold] = (state, iteration)
        record.write(out)
        _write_config(run)
    return run


def _write_config(run: CrossValidation) -> None:
    """``DIR/config.yaml``: the full config every fold trains with, for inference."""
    from uwm_d2.core.atomic import atomic_write_text

    cfg = run.cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = str(run.out)
    cfg.MODEL.WEIGHTS = ""
    cfg.UWM.COCO_DIR = str(run.coco_dir)
    atomic_write_text(run.out / "config.yaml", cfg.dump())


def _fold_command(run: CrossValidation, fold: int) -> list[str]:
    state, _ = run.states[fold]
    flags = ["--resume"] if state == "interrupted" else []
    flags += ["--num-gpus", str(run.num_gpus)] if run.num_gpus != 1 else []
    start = ["MODEL.WEIGHTS", str(run.init[fold])] if fold in run.init else []
    return [
        sys.executable, str(TRAIN_NET), "--config-file", run.config_file, *flags, *run.opts,
        "UWM.COCO_DIR", str(run.coco_dir), "UWM.FOLD", str(fold),
        "OUTPUT_DIR", str(run.fold_dir(fold)), *start,
    ]  # fmt: skip


def train_folds(run: CrossValidation) -> None:
    """Step 2 of the module docstring, fold after fold.

    Raises:
        UWMInputError: a fold refused its input (exit 2), named.
        UWMRunError: a fold failed; its log named, the folds before it kept.
    """
    if not TRAIN_NET.is_file():
        raise UWMRunError(f"{TRAIN_NET} is missing: cross-validation runs from a checkout")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TRAIN_NET.parents[1]), *_path()])}
    for fold in run.folds:
        state, iteration = run.states[fold]
        if state == "finished":
            print(f"fold {fold}: finished (iteration {iteration + 1}), skipped", flush=True)
            continue
        what = f"continued from iteration {iteration + 1}" if state == "interrupted" else "training"
        start = f", starting from {run.init[fold]}" if fold in run.init else ""
        print(f"fold {fold}: {what} into {run.fold_dir(fold)}{start}", flush=True)
        _run_fold(_fold_command(run, fold), fold, run.fold_dir(fold), env)


def _path() -> list[str]:
    value = os.environ.get("PYTHONPATH", "")
    return [part for part in value.split(os.pathsep) if part]


def _run_fold(command: list[str], fold: int, folder: Path, env: dict[str, str]) -> None:
    """Run one fold's training, its lines on the console prefixed with the fold."""
    last = ""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if line.strip():
                last = line.strip()
                print(f"[fold {fold}] {line.rstrip()}", flush=True)
    if process.returncode == 0:
        return
    reason = last.removeprefix("error: ")
    if process.returncode == 2:
        raise UWMInputError(f"fold {fold}: {reason}")
    raise UWMRunError(
        f"fold {fold} failed (exit {process.returncode}: {one_line(reason)[:200]}); its log: "
        f"{folder / 'log.txt'}; the folds before it are kept: rerun with --resume"
    )


def predict_out_of_fold(run: CrossValidation, batch_size: int | None = None) -> Path:
    """Step 3 of the module docstring; returns the probability folder."""
    from uwm_d2.config import build_cfg
    from uwm_d2.core.layout_reader import index_scans
    from uwm_d2.core.probability_files import ProbabilityFolder, ProbabilityWriter
    from uwm_d2.inference.predictor import (
        EnsembleMember,
        VolumePredictor,
        build_models,
        scan_records,
    )

    oof = run.out / "oof"
    writer = ProbabilityWriter(
        oof, run.record.config_digest, run.tta, source={"config": run.config_file}
    )
    scans_of = {day: ids for fold in run.case_days.values() for day, ids in fold.items()}
    ProbabilityFolder(oof).check(scans=scans_of)
    scans = index_scans(run.cfg.UWM.DATA_ROOT, "train")
    todo = {
        fold: [day for day in run.case_days[fold] if day not in writer.written]
        for fold in run.folds
    }
    total = sum(len(scans_of[day]) for days in todo.values() for day in days)
    with Progress(total, "out-of-fold", "slice", group_unit="case-day") as bar:
        for fold, days in todo.items():
            if not days:
                continue
            opts = [*run.opts, "UWM.COCO_DIR", str(run.coco_dir)]
            cfg = build_cfg(run.config_file, [*opts, "MODEL.WEIGHTS", str(run.checkpoint(fold))])
            member = EnsembleMember(cfg, build_models(cfg), name=f"fold {fold}")
            predictor = VolumePredictor([member], tta=run.tta, batch_size=batch_size)
            wanted = scans[scans["case_day"].isin(days)]
            for day, records in scan_records(run.cfg.UWM.DATA_ROOT, wanted).items():
                maps = predictor.predict_probabilities(records)
                writer.write(day, [r["slice_id"] for r in records], maps, fold=fold)
                bar.update(len(records))
    return oof


def fold_facts(run: CrossValidation) -> dict[str, Any]:
    """What each fold's run reached, for ``cv_summary.json``."""
    from uwm_d2.core.training_log import best_metric

    facts = {}
    for fold in run.folds:
        best = best_metric(run.fold_dir(fold) / "metrics.json", "uwm/score")
        facts[str(fold)] = {
            "checkpoint": str(run.checkpoint(fold)),
            "validation_case_days": len(run.case_days[fold]),
            "best_uwm_score": None if best is None else {"score": best[0], "iteration": best[1]},
            "started_from": str(run.init[fold]) if fold in run.init else None,
        }
    return facts


#: Below this many out-of-fold slices the rule search runs in this process: starting a worker
#: (numpy, SciPy, OpenCV) costs more than it saves on a small set.
_SLICES_PER_SEARCH_WORKER = 2000


def _search_workers(run: CrossValidation) -> int:
    slices = sum(len(ids) for fold in run.case_days.values() for ids in fold.values())
    return max(1, min(os.cpu_count() or 1, 2, slices // _SLICES_PER_SEARCH_WORKER))


def cross_validate(
    config_file: str,
    opts: list[str],
    out: str | os.PathLike,
    *,
    folds: str = "all",
    resume: bool = False,
    tta: bool = True,
    num_gpus: int = 1,
    init_from: str | os.PathLike | None = None,
    reading: str = "project",
    workers: int | None = None,
) -> list[str]:
    """The whole job of the module docstring; returns the summary table's lines."""
    from uwm_d2.core.merge import MergeRule
    from uwm_d2.crossval.report import report_cross_validation

    run = prepare(config_file, opts, out, folds, resume, tta, num_gpus, init_from)
    train_folds(run)
    oof = predict_out_of_fold(run)
    labels = Path(run.cfg.UWM.DATA_ROOT) / "train.csv"
    extra = {
        "config": run.config_file,
        "labels": str(labels),
        "overrides": run.opts,
        "config_digest": config_digest(run.cfg),
        "tta": run.tta,
        "folds": fold_facts(run),
    }
    return report_cross_validation(
        run.out,
        oof,
        labels,
        MergeRule.from_cfg(run.cfg),
        reading,
        str(run.out / "config.yaml"),
        {fold: str(run.checkpoint(fold)) for fold in run.folds},
        extra,
        workers=workers or _search_workers(run),
    )
