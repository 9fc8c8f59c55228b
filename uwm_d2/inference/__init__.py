"""Inference: scans in, per-class masks and the competition's ``submission.csv`` out.

``submission`` (pandas only) orders and writes rows; ``predictor`` (torch + detectron2) runs the
models in batches with optional flip TTA and checkpoint ensembles. Import the submodule you need.
"""
