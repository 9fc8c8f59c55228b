"""GPU smoke figures: the measuring and reporting half of ``benchmarks/gpu_smoke.sh``.

Subcommands::

    python benchmarks/gpu_smoke.py run --data DATA --coco COCO --work WORK --results R.jsonl
    python benchmarks/gpu_smoke.py record R.jsonl STEP SECONDS [NOTE]      # a step run elsewhere
    python benchmarks/gpu_smoke.py table R.jsonl [--markdown TABLE.md]

``run`` measures in one process (torch and CUDA start once): (a) the instant config on CUDA with
AMP, (b) the from-scratch R50-FPN GN config at 384 px (img/s, peak GPU memory), (c) the predictor
``tools/infer_submit.py`` runs, on the phantom's test scans (slices/s, plain and with flip TTA,
then the tool itself end to end, start-up included) and (d) the semantic demo config on CUDA.
Each step appends one JSON line to the results file as soon as it ends: a step that fails records
its error and the next one runs; a run cut short by a timeout keeps what it finished.
``table`` prints the one table from such a file and needs neither torch nor a GPU
(``benchmarks/gpu_smoke_table.py``).

Throughput is measured between iterations after a warm-up (data loading and hooks included, the
final evaluation not); peak memory is ``torch.cuda.max_memory_allocated`` over the training
iterations. An untrained model keeps its full quota of detections per slice, so (c) is the
slowest case of the predictor's mask work.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

# The report half (no torch) lives beside this file; run as a script, benchmarks/ is on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_smoke_table import (  # noqa: E402
    LABELS,
    STEPS,
    append_record,
    duration,
    format_table,
    read_records,
)

# ----------------------------------------------------------------------------------------------
# Measurements (need torch, detectron2, uwm_d2 and a CUDA device).


def _timed_step(
    results: Path, key: str, function: Callable[[], dict[str, Any]], log: logging.Logger
) -> dict[str, Any]:
    """Run one measurement; record its figures, or its error, with its wall time."""
    import torch

    log.info("== %s", LABELS[key])
    print(f"gpu_smoke: {LABELS[key]} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        record = {"step": key, "ok": True, **function()}
    except Exception as error:  # recorded, and the next step still runs
        log.error("%s failed:\n%s", key, traceback.format_exc())
        record = {"step": key, "ok": False, "error": f"{type(error).__name__}: {error}"}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    record["wall_s"] = time.perf_counter() - started
    append_record(results, record)
    status = "ok" if record["ok"] else record["error"]
    print(f"gpu_smoke: {LABELS[key]}: {status} ({duration(record['wall_s'])})", file=sys.stderr)
    return record


def _find_score(results: Any) -> float | None:
    """The ``uwm/score`` of a trainer's last evaluation, wherever the nesting puts it."""
    if isinstance(results, dict):
        if "score" in results and isinstance(results["score"], int | float):
            return float(results["score"])
        for value in results.values():
            score = _find_score(value)
            if score is not None:
                return score
    return None


def train_and_measure(
    config: str, opts: Sequence[str], iters: int, warmup: int, args: argparse.Namespace, key: str
) -> dict[str, Any]:
    """Train ``iters`` iterations on CUDA; s/iter, img/s and peak memory after ``warmup``."""
    import torch
    from detectron2.engine import HookBase

    from uwm_d2.config import build_cfg
    from uwm_d2.data.register import register_from_cfg
    from uwm_d2.engine import UWMTrainer

    class StepMeter(HookBase):
        """Wall time between consecutive iterations, and the peak memory up to the last one."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.last: float | None = None
            self.peak = 0

        def after_step(self) -> None:
            torch.cuda.synchronize()
            now = time.perf_counter()
            if self.last is not None and self.trainer.iter >= self.trainer.start_iter + warmup:
                self.times.append(now - self.last)
            self.last = now
            self.peak = torch.cuda.max_memory_allocated()

    cfg = build_cfg(
        REPO_ROOT / config,
        [
            *opts,
            "MODEL.DEVICE", "cuda",
            "UWM.DATA_ROOT", str(args.data), "UWM.COCO_DIR", str(args.coco),
            "OUTPUT_DIR", str(args.work / key),
            "SOLVER.MAX_ITER", str(iters),
            # One checkpoint, one validation loss and one evaluation, all at the end.
            "SOLVER.CHECKPOINT_PERIOD", str(iters), "TEST.EVAL_PERIOD", str(iters),
            "UWM.VAL_LOSS_PERIOD", str(iters),
            "DATALOADER.NUM_WORKERS", str(args.workers),
        ],
    )  # fmt: skip
    register_from_cfg(cfg)
    torch.cuda.reset_peak_memory_stats()
    trainer = UWMTrainer(cfg)
    trainer.resume_or_load(resume=False)
    meter = StepMeter()
    trainer.register_hooks([meter])
    trainer.train()
    # DefaultTrainer.train() returns the last evaluation only with TEST.EXPECTED_RESULTS set.
    eval_results = getattr(trainer, "_last_eval_results", None)
    loss = trainer.storage.history("total_loss").latest()
    del trainer
    if not meter.times:
        raise RuntimeError(f"no iteration measured ({iters} iterations, {warmup} warm-up)")
    seconds = statistics.mean(meter.times)
    batch = cfg.SOLVER.IMS_PER_BATCH
    score = _find_score(eval_results)
    note = f"batch {batch}, {len(meter.times)} timed of {iters} it, last loss {loss:.3f}"
    if score is not None:
        note += f", eval score {score:.3f}"
    return {
        "s_per_iter": seconds,
        "rate": batch / seconds,
        "unit": "img/s",
        "peak_gib": meter.peak / 2**30,
        "note": note,
        "amp": bool(cfg.SOLVER.AMP.ENABLED),
        "loss": loss,
        "weights": str(args.work / key / "model_final.pth"),
    }


def infer_and_measure(
    config: str, weights: str, tta: bool, args: argparse.Namespace
) -> dict[str, Any]:
    """Slices per second of the predictor infer_submit uses, on the phantom's test scans."""
    import torch

    from uwm_d2.inference.ensemble import build_predictor
    from uwm_d2.inference.pipeline import predict_submission

    predictor = build_predictor(
        str(REPO_ROOT / config),
        ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cuda"],
        tta=tta,
        batch_size=args.batch_size,
    )
    out = args.work / ("submission_tta.csv" if tta else "submission.csv")
    # The first pass warms cuDNN's algorithm choice and the allocator; the second is measured.
    predict_submission(predictor, args.data, out, progress=False)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    summary = predict_submission(predictor, args.data, out, progress=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {
        "rate": summary.slices / seconds,
        "unit": "slices/s",
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "note": f"{summary.slices} slices, batch {args.batch_size}, "
        f"{summary.non_empty_rows} non-empty rows (second pass timed)",
    }


def infer_cli(config: str, weights: str, args: argparse.Namespace) -> dict[str, Any]:
    """The tool itself, start-up (imports, model build, CUDA init) included."""
    out = args.work / "submission_cli.csv"
    command = [
        sys.executable, str(REPO_ROOT / "tools" / "infer_submit.py"),
        "--config-file", str(REPO_ROOT / config), "--data-root", str(args.data),
        "--out", str(out), "--batch-size", str(args.batch_size),
        "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cuda",
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"exit {result.returncode}: {tail[0]}")
    rows = max(0, len(out.read_text().splitlines()) - 1)
    slices = rows // 3  # three class rows per slice
    return {"rate": slices / seconds, "unit": "slices/s", "note": f"{rows} rows written"}


def environment() -> dict[str, Any]:
    import torch

    import uwm_d2

    return {
        "step": "env",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "uwm_d2": str(Path(uwm_d2.__file__).parent),
    }


def run(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device: gpu_smoke measures the GPU", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("gpu_smoke")
    # Beside the results (what comes back from a GPU machine), not among the work files.
    handler = logging.FileHandler(args.results.parent / "gpu_smoke.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("gpu_smoke", "detectron2", "uwm_d2", "fvcore"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    append_record(args.results, environment())
    torch.backends.cudnn.benchmark = True  # fixed input sizes below: let cuDNN pick kernels
    steps = set(args.steps.split(","))

    if "instant-amp" in steps:
        _timed_step(
            args.results,
            "instant-amp",
            lambda: train_and_measure(
                "configs/quick_schedules/mask_rcnn_R_18_FPN_instant_test.yaml",
                ["SOLVER.AMP.ENABLED", "True"],
                iters=20,
                warmup=5,
                args=args,
                key="instant-amp",
            ),
            log,
        )
    r50_config = "configs/mask_rcnn_R_50_FPN_gn_scratch_uwm.yaml"
    r50: dict[str, Any] = {}
    if "r50-gn-384" in steps:
        r50 = _timed_step(
            args.results,
            "r50-gn-384",
            lambda: train_and_measure(
                r50_config,
                [
                    "SOLVER.AMP.ENABLED", "True",
                    "INPUT.MIN_SIZE_TRAIN", "(384,)", "INPUT.MAX_SIZE_TRAIN", "640",
                    "INPUT.MIN_SIZE_TEST", "384", "INPUT.MAX_SIZE_TEST", "640",
                    "SOLVER.IMS_PER_BATCH", str(args.batch_size),
                ],
                iters=args.r50_iters,
                warmup=10,
                args=args,
                key="r50-gn-384",
            ),
            log,
        )  # fmt: skip
    weights = r50.get("weights")
    for key, tta in (("infer", False), ("infer-tta", True)):
        if key in steps and weights:
            _timed_step(
                args.results,
                key,
                lambda tta=tta: infer_and_measure(r50_config, weights, tta, args),
                log,
            )
    if "infer-cli" in steps and weights:
        _timed_step(args.results, "infer-cli", lambda: infer_cli(r50_config, weights, args), log)
    if "semantic" in steps:
        _timed_step(
            args.results,
            "semantic",
            lambda: train_and_measure(
                "configs/demo/semantic_R_18_FPN_cpu_demo.yaml",
                [],
                iters=20,
                warmup=5,
                args=args,
                key="semantic",
            ),
            log,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="measure on CUDA, appending to the results file")
    run_parser.add_argument("--data", type=Path, required=True, help="phantom data root")
    run_parser.add_argument("--coco", type=Path, required=True, help="its COCO files")
    run_parser.add_argument("--work", type=Path, required=True, help="training outputs")
    run_parser.add_argument(
        "--results", type=Path, required=True, help="JSON lines to append (gpu_smoke.log beside)"
    )
    run_parser.add_argument("--steps", default=",".join(key for key, _ in STEPS[2:]))
    run_parser.add_argument("--r50-iters", type=int, default=50)
    run_parser.add_argument("--batch-size", type=int, default=16, help="training and inference")
    run_parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    record_parser = commands.add_parser("record", help="append a step timed elsewhere")
    record_parser.add_argument("results", type=Path)
    record_parser.add_argument("step", choices=[key for key, _ in STEPS])
    record_parser.add_argument("seconds", type=float)
    record_parser.add_argument("note", nargs="?", default="")
    record_parser.add_argument("--failed", help="the step failed: why")
    table_parser = commands.add_parser("table", help="print the table of a results file")
    table_parser.add_argument("results", type=Path)
    table_parser.add_argument("--markdown", type=Path, help="also write the table there")
    args = parser.parse_args(argv)

    if args.command == "run":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        return run(args)
    if args.command == "record":
        record: dict[str, Any] = {
            "step": args.step,
            "ok": args.failed is None,
            "wall_s": args.seconds,
            "note": args.note,
        }
        if args.failed is not None:
            record["error"] = args.failed
        append_record(args.results, record)
        return 0
    table = format_table(*read_records(args.results))
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
