"""Evaluation: CSV scoring over :mod:`uwm_d2.core.metrics` (no torch) and the detectron2 evaluator.

Importing this package imports nothing heavy; :mod:`uwm_d2.evaluation.csv_scoring` needs only
numpy and pandas, the detectron2 evaluator is imported by name where it is used.
"""
