"""The public readings of the competition metric, scored over the same volumes side by side.

The competition's score is ``0.4 * mean Dice + 0.6 * (1 - mean normalized Hausdorff)``, but the
public texts and code that compute it disagree on the corners (the table below; the README's
"The score, under every public reading" says which to pick for what). Each reading here is a
:class:`Reading`, a small record of those choices, and :func:`score_readings` scores any of
them, or all, in one pass over one ``{(case_day, class): (pred_vol, truth_vol)}`` mapping (each
pair is read once).

============  =================  =======================  ========================  ===========
reading       Dice, both empty   Hausdorff volume         normalization             Hausdorff,
                                                                                    both / one
                                                                                    empty
============  =================  =======================  ========================  ===========
project       1                  per (case_day, class)    unit spacing,             0 / 1
                                                          / sqrt(D²+H²+W²), clip 1
competition   0                  per (case_day, class)    coordinates / (D, H, W),  0 / 1 (*)
                                                          / sqrt(3)
mlebench      row skipped (NaN)  per case_day, the class  coordinates / (D, H, W),  skipped / 1
                                 masks OR-ed              / sqrt(3)
============  =================  =======================  ========================  ===========

* ``project`` (the default): this project's reading (the community's CV code).
* ``competition``: the competition page's text. It says Dice is "defined to be 0" for an empty
  pair and that pixel locations are "normalized by image size"; it does not say what the
  Hausdorff term of an empty volume is, so (*) follows the project's reading (0 both empty, 1 one
  empty). Its "top to bottom, then left to right" pixel order is not applied: the data's own
  strings are row-major (in a 360 x 310 scan, successive run starts of one object step by 360,
  the row stride), and this reading keeps them as they are.
* ``mlebench``: MLE-bench's grader (openai/mle-bench). Every skipped value is left out of its mean
  (``nanmean``); a volume whose prediction has more than 10x the truth's voxels scores 1 without
  computing a distance; identical volumes score 0. Its decoder reads the row-major strings
  column-major (the flat runs fill a ``(W, H)`` array that is then transposed), scrambling the
  truth and the prediction alike: Dice does not change, the Hausdorff term is computed on the
  scrambled geometry of non-square scans. This reading applies the same scrambling to the
  volumes it is given (:func:`column_major_layout`), so over volumes decoded from valid CSVs it
  equals the grader; :mod:`uwm_d2.evaluation.mlebench` reproduces it from the CSV files
  themselves (row matching by position, which strings it rejects).

All three combine as ``0.4 * dice + 0.6 * (1 - hausdorff)`` (the one formula,
:func:`~uwm_d2.core.readings.tally.combine_score`) and compute exact distances with
:class:`uwm_d2.core.metrics.HausdorffPair` (pure numpy/scipy).

Three modules, one idea each, above :mod:`uwm_d2.core.metrics`: :mod:`.definitions` (what each
reading decides), :mod:`.tally` (what one reading has seen, as sums that add up, and the score
made from them) and :mod:`.volumes` (scoring a mapping of volumes under any readings, with the
clinical figures: :func:`score_volumes`, :func:`score_readings`). Their public names are
importable from this package.
"""

from uwm_d2.core.readings.definitions import (
    COMPETITION,
    DEFAULT_READING,
    MLEBENCH,
    PROJECT,
    READINGS,
    Reading,
    column_major_layout,
    resolve_readings,
)
from uwm_d2.core.readings.tally import (
    DICE_WEIGHT,
    HAUSDORFF_WEIGHT,
    ReadingTally,
    combine_score,
    tally_case_day,
)
from uwm_d2.core.readings.volumes import LazyVolumes, score_readings, score_volumes

__all__ = [
    "COMPETITION",
    "DEFAULT_READING",
    "DICE_WEIGHT",
    "HAUSDORFF_WEIGHT",
    "MLEBENCH",
    "PROJECT",
    "READINGS",
    "LazyVolumes",
    "Reading",
    "ReadingTally",
    "column_major_layout",
    "combine_score",
    "resolve_readings",
    "score_readings",
    "score_volumes",
    "tally_case_day",
]
