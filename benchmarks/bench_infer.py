"""Benchmark: CPU slices per second of ``infer_submit``'s predictor against a DefaultPredictor loop.

Same checkpoint, same scans, same run. Our side is what ``tools/infer_submit.py`` runs
(:func:`uwm_d2.inference.pipeline.predict_submission`: batched forward passes, soft masks, the merge
rule, RLE rows). The baseline is the common notebook pattern: one ``DefaultPredictor`` call per
slice on the same 2.5D input, then the same merge and RLE encoding. Goal: >= 1.5x.
Without ``--weights``, a freshly initialised demo-config model is saved and used: both sides get the
same model, so the comparison holds (an untrained model predicts its full quota of instances, the
worst case for the per-instance work). Run::

    .venv/bin/python benchmarks/bench_infer.py [--weights W.pth --data-root ROOT] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from uwm_d2.config import build_cfg
from uwm_d2.core.layout import index_scans
from uwm_d2.core.merge import MergeRule
from uwm_d2.data.inputs import build_model_input, neighbor_files
from uwm_d2.inference.pipeline import predict_submission
from uwm_d2.inference.predictor import EnsembleMember, VolumePredictor, build_models, scan_records
from uwm_d2.inference.submission import encode_class_masks
from uwm_d2.modeling.probabilities import class_probabilities
from uwm_d2.phantom import make_phantom

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "configs" / "demo" / "mask_rcnn_R_18_FPN_cpu_demo.yaml"


def default_predictor_loop(cfg, data_root: Path) -> int:
    """One DefaultPredictor call per slice, then the merge rule and RLE; returns slices done."""
    predictor = DefaultPredictor(cfg)
    scans = index_scans(data_root, "test")
    rule = MergeRule.from_cfg(cfg)
    done = 0
    for records in scan_records(data_root, scans).values():
        masks = {}
        paths = [record["file_name"] for record in records]
        for index, record in enumerate(records):
            image = build_model_input(
                neighbor_files(paths, index, cfg.UWM.SLICE_OFFSETS),
                cfg.UWM.INTENSITY_LOW_PERCENTILE,
                cfg.UWM.INTENSITY_HIGH_PERCENTILE,
            )
            output = predictor(image)
            masks[record["slice_id"]] = rule.binarize(class_probabilities(output, rule))
            done += 1
        encode_class_masks(masks)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="checkpoint (default: a fresh demo-config model)")
    parser.add_argument("--data-root", type=Path, help="data root with test/ (default: a phantom)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data_root = args.data_root
        if data_root is None:
            data_root = tmp_path / "data"
            make_phantom(data_root, cases=2, test_cases=2, max_slices=24, progress=False)
        weights = args.weights
        if weights is None:
            cfg = build_cfg(CONFIG, ["MODEL.DEVICE", "cpu"])
            DetectionCheckpointer(build_model(cfg), save_dir=tmp).save("fresh")
            weights = str(tmp_path / "fresh.pth")
        cfg = build_cfg(CONFIG, ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"])
        slices = len(index_scans(data_root, "test"))
        print(f"{slices} test slices, {args.threads} torch threads, batch {args.batch_size}")
        timings = {}
        for name in ("DefaultPredictor loop", "infer_submit (ours)", "infer_submit --tta"):
            start = time.perf_counter()
            if name.startswith("Default"):
                default_predictor_loop(cfg, data_root)
            else:
                predictor = VolumePredictor(
                    [EnsembleMember(cfg, build_models(cfg))],
                    tta=name.endswith("tta"),
                    batch_size=args.batch_size,
                )
                predict_submission(
                    predictor,
                    data_root,
                    tmp_path / "submission.csv",
                    sample_submission=data_root / "sample_submission.csv",
                    progress=False,
                )
            timings[name] = time.perf_counter() - start
    baseline = timings["DefaultPredictor loop"]
    print(f"{'method':<24} {'seconds':>8} {'slices/s':>9} {'speedup':>8}")
    for name, seconds in timings.items():
        print(f"{name:<24} {seconds:8.2f} {slices / seconds:9.1f} {baseline / seconds:7.2f}x")


if __name__ == "__main__":
    main()
