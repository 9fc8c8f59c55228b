"""Benchmark: CPU slices per second of exported models (onnxruntime, TorchScript) against PyTorch.

The same checkpoint, the same phantom test scans, the same run: the PyTorch predictor
(``infer_submit --config-file``'s) against the exported-model predictor (``infer_submit
--exported``'s) on an ONNX export (onnxruntime's CPU provider, its default threads: every core)
and a TorchScript one, each with and without flip TTA, the whole submission path included (2.5D
reading, resize, network, probability path, merge rule, RLE rows). The export itself is timed
too. Without ``--weights``, a freshly initialised model of ``--config`` is used (the speed of a
network does not depend on its training). Run::

    .venv/bin/python benchmarks/bench_deploy.py [--config C.yaml] [--weights W.pth] [--max-slices N]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch
from detectron2.modeling import build_model

from uwm_d2.config import build_cfg
from uwm_d2.core.layout_reader import index_scans
from uwm_d2.deploy import load_exported
from uwm_d2.export.exporter import export_model
from uwm_d2.inference.ensemble import build_predictor
from uwm_d2.inference.pipeline import predict_submission
from uwm_d2.phantom import make_phantom

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "configs" / "demo" / "semantic_R_18_FPN_cpu_demo.yaml"


def timed(predictor, data_root: Path, out: Path) -> float:
    start = time.perf_counter()
    predict_submission(predictor, data_root, out, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="checkpoint (default: a fresh model of --config)")
    parser.add_argument(
        "--config", type=Path, default=CONFIG, help="model config (default: the semantic demo)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--max-slices", type=int, default=24, help="slices per phantom scan (default 24)"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data_root = tmp_path / "data"
        make_phantom(
            data_root, cases=2, test_cases=2, max_slices=args.max_slices, workers=1, progress=False
        )
        weights = args.weights
        if weights is None:
            torch.manual_seed(0)
            cfg = build_cfg(args.config, ["MODEL.DEVICE", "cpu"])
            weights = str(tmp_path / "fresh.pth")
            torch.save({"model": build_model(cfg).state_dict()}, weights)
        opts = ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"]
        slices = len(index_scans(data_root, "test"))
        print(f"{slices} test slices, {args.threads} torch threads, {args.config.name}")
        exports = {}
        for network_format in ("onnx", "torchscript"):
            start = time.perf_counter()
            export_model(str(args.config), opts, network_format, tmp_path / network_format)
            exports[network_format] = tmp_path / network_format
            seconds = time.perf_counter() - start
            print(f"export to {network_format}: {seconds:.1f} s (with its self-check)")
        timings = {}
        for tta in (False, True):
            suffix = ", flip TTA" if tta else ""
            predictor = build_predictor(str(args.config), opts, tta=tta, batch_size=1)
            timings[f"PyTorch{suffix}"] = timed(predictor, data_root, tmp_path / "sub.csv")
            for network_format, folder in exports.items():
                predictor = load_exported([folder], tta=tta)
                name = f"{'onnxruntime' if network_format == 'onnx' else 'TorchScript'}{suffix}"
                timings[name] = timed(predictor, data_root, tmp_path / "sub.csv")
    print(f"{'predictor':<26} {'seconds':>8} {'slices/s':>9} {'vs PyTorch':>11}")
    for name, seconds in timings.items():
        reference = timings["PyTorch, flip TTA" if "TTA" in name else "PyTorch"]
        print(f"{name:<26} {seconds:8.2f} {slices / seconds:9.2f} {reference / seconds:10.2f}x")


if __name__ == "__main__":
    main()
