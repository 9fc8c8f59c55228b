"""MLE-bench's grader for this competition, reproduced from the CSV files (pandas/numpy, no torch).

MLE-bench (openai/mle-bench, ``mlebench/competitions/uw-madison-gi-tract-image-segmentation``)
grades a submission ``id,class,predicted`` against a private answers file
``id,class,predicted,image_width,image_height`` (the truth rows of ``train.csv``, row-major
strings, in the sample submission's order). :func:`score_mlebench` gives the same numbers
(to float rounding) for every submission that grader accepts, quirks included:

=====================  ===========================================================================
decoding               RLE read **column-major**: the 1-based flat runs fill a ``width x height``
                       array that is then transposed to ``(height, width)``. The strings are
                       row-major, so truth and prediction are scrambled alike on non-square scans
                       (Dice is unchanged, the Hausdorff geometry is not).
Dice                   one value per answers row, ``2|P∩G| / (|P|+|G|)``; a row where both masks
                       are empty is skipped (NaN, then ``nanmean``).
Hausdorff              one value per case-day, class-agnostic: the masks of every row of a slice
                       id are OR-ed, the slices stacked in sorted id order (ids are zero-padded,
                       so string order is slice order); coordinates divided by the volume's shape
                       per axis (a unit cube), the symmetric Hausdorff distance divided by
                       ``sqrt(3)``. Both empty: skipped (NaN); identical: 0; exactly one empty:
                       1; a prediction with more than 10x the truth's voxels: 1.
score                  ``0.4 * nanmean(Dice) + 0.6 * (1 - nanmean(Hausdorff))``; MLE-bench's
                       ``Grader`` reports it rounded to 5 decimals (``score_rounded`` here).
row matching           by position. MLE-bench itself never compares the ids: a shorter, longer
                       or reordered file is mis-scored (its ``zip`` truncates, masks are decoded
                       with another row's size) or fails, depending on where rows move. Here
                       such a file is refused instead.
rejected strings       MLE-bench's decoder asserts: starts sorted (ties allowed), every start and
                       length positive, runs not overlapping an earlier run *inside the image*.
                       Tokens go through Python's ``int`` (so ``+5`` or ``1_0`` pass, ``1.5``
                       fails). A run past the image is clipped, not refused. An odd token count is
                       paired by numpy broadcasting: 1 token is an empty mask, 3 tokens are two
                       runs of the one length, 5 or more are refused. Empty cells (and the
                       strings pandas reads as NaN: ``NA``, ``nan``, ``null``...) are empty masks.
=====================  ===========================================================================

"Refused" means MLE-bench's grade is ``None`` (an invalid submission); here it is a
:class:`~uwm_d2.core.errors.UWMInputError` whose one-line message says so and names the row.
The Hausdorff term uses :data:`uwm_d2.core.readings.MLEBENCH` (exact distances, milliseconds per
case-day) on volumes decoded here, so this module and the volume-level ``mlebench`` reading agree
on any valid submission in the answers' order.

Three modules, one idea each: :mod:`.decoding` (how the grader reads one RLE string),
:mod:`.files` (the answers and submission files, as the grader reads them) and :mod:`.grading`
(:func:`score_mlebench`). Their public names are importable from this package.
"""

from uwm_d2.evaluation.mlebench.decoding import mlebench_rle_decode, mlebench_runs
from uwm_d2.evaluation.mlebench.files import (
    ANSWERS_COLUMNS,
    SUBMISSION_COLUMNS,
    answers_from_data_root,
    answers_from_truth,
    read_answers,
    read_submission,
)
from uwm_d2.evaluation.mlebench.grading import REPORTED_DECIMALS, score_mlebench

__all__ = [
    "ANSWERS_COLUMNS",
    "REPORTED_DECIMALS",
    "SUBMISSION_COLUMNS",
    "answers_from_data_root",
    "answers_from_truth",
    "mlebench_rle_decode",
    "mlebench_runs",
    "read_answers",
    "read_submission",
    "score_mlebench",
]
