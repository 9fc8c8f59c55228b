"""Datasets: the data-root jobs (COCO JSON and grouped folds, NIfTI export) and the detectron2 glue.

Importing this package imports nothing heavy: :mod:`uwm_d2.data.coco`, :mod:`uwm_d2.data.folds` and
:mod:`uwm_d2.data.nifti_export` need no torch, while the detectron2 modules (registration, the
dataset mapper) are imported by name only where they are used.
"""
