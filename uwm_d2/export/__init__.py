"""Trained PyTorch models → export folders for :mod:`uwm_d2.deploy` (needs torch and detectron2).

:func:`~uwm_d2.export.exporter.export_model` is what ``tools/export_model.py`` runs;
:mod:`uwm_d2.export.networks` says which part of each model kind is exported, in which formats,
and how. Import the submodules by name.
"""
