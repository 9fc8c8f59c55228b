"""Cross-validation's numpy side: choosing the merge rule on out-of-fold probabilities.

Torch-free (numpy, scipy, OpenCV, pandas), like :mod:`uwm_d2.core`. The maps come from
probability folders (:mod:`uwm_d2.core.probability_files`), the truth from the data root's label
CSV (:mod:`uwm_d2.crossval.truth`); one case-day is held at a time:

* :mod:`~uwm_d2.crossval.sources`: one folder, or several averaged with member weights;
* :mod:`~uwm_d2.crossval.truth`: the label CSV's rows of a case-day, decoded in the worker;
* :mod:`~uwm_d2.crossval.candidates`: many candidate rules scored on one loaded case-day;
* :mod:`~uwm_d2.crossval.passes`: passes over the case-days (score rules, encode a rule's masks);
* :mod:`~uwm_d2.crossval.search`: the staged search of the rule, with its cross-validated
  estimate;
* :mod:`~uwm_d2.crossval.uncertainty`: per-fold scores and bootstrap intervals over cases;
* :mod:`~uwm_d2.crossval.members`: member weights of an ensemble of cross-validations;
* :mod:`~uwm_d2.crossval.synthetic`: organ-like maps with strays and their truth (tests, bench).
"""
