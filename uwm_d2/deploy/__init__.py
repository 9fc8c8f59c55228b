"""Exported models without the training stack: ONNX with onnxruntime, or TorchScript with torch.

``pip install "uwm_d2[deploy]"`` brings what this package needs (numpy, OpenCV, pandas, scipy,
nibabel, tqdm, onnxruntime); importing it never imports torch or detectron2, and running a
TorchScript export imports torch alone. An export folder (``tools/export_model.py``, format in
:mod:`uwm_d2.deploy.export_format`) holds the networks and the rules around them; the predictor
applies the project's own shared rules to them, never a copy (see :mod:`uwm_d2.deploy.predictor`)::

    from uwm_d2.deploy import load_exported, predict_submission
    predictor = load_exported(["export/fold0", "export/fold1"], tta=True)
    predict_submission(predictor, "data_root", "submission.csv")

The predictor answers what :class:`uwm_d2.inference.predictor.VolumePredictor` answers
(``predict_probabilities``, ``predict_case_day``), so the submission and NIfTI jobs take either.
"""

from uwm_d2.deploy.export_format import (
    FORMAT_VERSION,
    METADATA_FILE,
    ExportedMember,
    ExportInfo,
    InputRule,
    read_export,
)
from uwm_d2.deploy.predictor import DeployPredictor, describe, load_exported
from uwm_d2.inference.nifti import predict_nifti_files
from uwm_d2.inference.pipeline import predict_submission

__all__ = [
    "FORMAT_VERSION",
    "METADATA_FILE",
    "DeployPredictor",
    "ExportInfo",
    "ExportedMember",
    "InputRule",
    "describe",
    "load_exported",
    "predict_nifti_files",
    "predict_submission",
    "read_export",
]
