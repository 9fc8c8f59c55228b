"""Datasets: COCO JSON building and grouped folds (numpy/pycocotools only), and the detectron2 glue.

Importing this package imports nothing heavy: :mod:`uwm_d2.data.coco` and :mod:`uwm_d2.data.folds`
need no torch, while the detectron2 modules (registration, the dataset mapper) are imported by name
only where they are used.
"""
