"""uwm_d2: Detectron2 instance segmentation for the UW-Madison GI Tract MRI task.

Importing this package is cheap: nothing here imports torch or detectron2. The numpy-only core lives
in :mod:`uwm_d2.core`; the detectron2 glue lives in ``uwm_d2.data``, ``uwm_d2.engine``,
``uwm_d2.evaluation`` and ``uwm_d2.inference`` and is imported only where it is used.
"""

__version__ = "0.1.0"
