"""Benchmark: CPU slices per second of ``infer_submit``'s predictor against a DefaultPredictor loop.

Same checkpoint, same scans, same run. Our side is what ``tools/infer_submit.py`` runs
(:func:`uwm_d2.inference.pipeline.predict_submission`: forward passes of ``--batch-size`` slices,
soft outputs, the one probability path, the merge rule, RLE rows), at batch 1 and 8 and with flip
TTA. The baseline is the common notebook pattern: one ``DefaultPredictor`` call per slice on the
same 2.5D input, then the same probability path, merge and RLE encoding (shared code, so the
comparison isolates the predictor: batching, slice reading, soft pasting).
Without ``--weights``, a freshly initialised model of ``--config`` is saved and used: both sides get
the same model, so the comparison holds (an untrained Mask R-CNN predicts its full quota of
instances, the worst case for the per-instance work). Run::

    .venv/bin/python benchmarks/bench_infer.py [--config C.yaml] [--weights W.pth] [--data-root R]
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
from uwm_d2.core.layout_reader import index_scans
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
    parser.add_argument(
        "--config", type=Path, default=CONFIG, help="model config (default: the Mask R-CNN demo)"
    )
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
            cfg = build_cfg(args.config, ["MODEL.DEVICE", "cpu"])
            DetectionCheckpointer(build_model(cfg), save_dir=tmp).save("fresh")
            weights = str(tmp_path / "fresh.pth")
        cfg = build_cfg(args.config, ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"])
        slices = len(index_scans(data_root, "test"))
        print(f"{slices} test slices, {args.threads} torch threads, {args.config.name}")
        runs = {  # name: (batch size, flip TTA); None = the DefaultPredictor loop
            "DefaultPredictor loop": None,
            "infer_submit, batch 1": (1, False),
            "infer_submit, batch 8": (8, False),
            "infer_submit --tta, batch 1": (1, True),
        }
        timings = {}
        for name, setting in runs.items():
            start = time.perf_counter()
            if setting is None:
                default_predictor_loop(cfg, data_root)
            else:
                batch_size, tta = setting
                predictor = VolumePredictor(
                    [EnsembleMember(cfg, build_models(cfg))], tta=tta, batch_size=batch_size
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
    print(f"{'method':<28} {'seconds':>8} {'slices/s':>9} {'speedup':>8}")
    for name, seconds in timings.items():
        print(f"{name:<28} {seconds:8.2f} {slices / seconds:9.1f} {baseline / seconds:7.2f}x")


if __name__ == "__main__":
    main()
