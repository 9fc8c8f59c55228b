"""Ensembles across configs (model kinds, input sizes, folds) from one small YAML file.

Format (``--ensemble FILE`` of ``tools/infer_submit.py``)::

    # Paths are relative to the current folder, as on the command line.
    members:
      - config: configs/demo/semantic_R_18_FPN_cpu_demo.yaml
        weights: [out/semantic_f0/model_best.pth, out/semantic_f1/model_best.pth]
        weight: 2          # share of the average (default 1)
      - config: configs/demo/mask_rcnn_R_18_FPN_cpu_demo.yaml
        weights: out/mask_rcnn/model_best.pth     # one path, or comma-separated
    # The merge rule of the averaged maps: the first member's UWM.EVAL unless set here (the
    # UWM.EVAL keys of the rule; per-class ones take one value or one per class).
    merge:
      MASK_THRESHOLD: [0.45, 0.5, 0.4]
      Z_SMOOTHING: 0.5
      MIN_SLICES_3D: [3, 2, 2]

Every member's checkpoints are averaged first (flip TTA too), then members by their weights.
Command-line overrides (``KEY VALUE`` after the flags, e.g. ``MODEL.DEVICE cuda``) apply to every
member. A single config with ``MODEL.WEIGHTS a.pth,b.pth`` is the one-member case.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from uwm_d2.core.errors import UWMInputError, one_line
from uwm_d2.core.merge import CFG_KEYS, MergeRule, MergeRuleError
from uwm_d2.core.weights import split_weights

#: The keys of a ``merge:`` section and the ``MergeRule`` fields they set: the ``UWM.EVAL`` keys
#: of the rule. A per-class setting (``MASK_THRESHOLD`` too, here) takes one value for every
#: class or a list of one per class (``CLASSES`` order).
MERGE_KEYS = {key: name for name, key in CFG_KEYS.items()}


def read_ensemble(path: str | os.PathLike) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read and validate an ensemble file: ``(members, merge overrides)``.

    Each member comes back as ``{"config": str, "weights": [str, ...], "weight": float}``.

    Raises:
        UWMInputError: the file is missing or not YAML, or a member lacks ``config`` /
            ``weights``, names an unknown key, or has a weight that is not a positive number;
            the message names the file and the member.
    """
    path = Path(path)
    if not path.is_file():
        raise UWMInputError(f"ensemble file {str(path)!r} does not exist")
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise UWMInputError(
            f"ensemble file {str(path)!r} is not valid YAML: {one_line(error)}"
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("members"), list):
        raise UWMInputError(f"ensemble file {str(path)!r} needs a 'members:' list")
    unknown = set(document) - {"members", "merge"}
    if unknown:
        raise UWMInputError(f"ensemble file {str(path)!r}: unknown key {sorted(unknown)[0]!r}")
    members = [_member(path, index, entry) for index, entry in enumerate(document["members"])]
    if not members:
        raise UWMInputError(f"ensemble file {str(path)!r} lists no members")
    merge = document.get("merge") or {}
    if not isinstance(merge, dict) or set(merge) - set(MERGE_KEYS):
        bad = sorted(set(merge) - set(MERGE_KEYS)) if isinstance(merge, dict) else ["merge"]
        known = ", ".join(MERGE_KEYS)
        raise UWMInputError(
            f"ensemble file {str(path)!r}: merge key {bad[0]!r} is not one of {known}"
        )
    return members, merge


def _member(path: Path, index: int, entry: Any) -> dict[str, Any]:
    where = f"ensemble file {str(path)!r}, member {index + 1}"
    if not isinstance(entry, dict):
        raise UWMInputError(f"{where}: expected 'config:', 'weights:' and optionally 'weight:'")
    unknown = set(entry) - {"config", "weights", "weight"}
    if unknown:
        raise UWMInputError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    if not entry.get("config") or not entry.get("weights"):
        raise UWMInputError(f"{where}: needs both 'config' and 'weights'")
    weights = entry["weights"]
    if not isinstance(weights, str | list) or not all(isinstance(w, str) for w in weights):
        raise UWMInputError(f"{where}: 'weights' must be a path or a list of paths")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
        raise UWMInputError(f"{where}: 'weight' must be a positive number, got {weight!r}")
    return {
        "config": str(entry["config"]),
        "weights": split_weights(weights, required=False),
        "weight": float(weight),
    }


def override_rule(rule: MergeRule, merge: dict[str, Any]) -> MergeRule:
    """``rule`` with the ``merge:`` section's values (``MergeRule`` validates them).

    Raises:
        UWMInputError: ``"ensemble merge settings: <KEY> <problem>"``.
    """
    changes = {MERGE_KEYS[key]: value for key, value in merge.items()}
    if "score_thresholds" in changes:
        changes["score_thresholds"] = tuple(changes["score_thresholds"])
    try:
        return replace(rule, **changes)
    except MergeRuleError as error:
        key = CFG_KEYS[error.setting]
        raise UWMInputError(f"ensemble merge settings: {key} {error.problem}") from None
    except (TypeError, ValueError) as error:
        raise UWMInputError(f"ensemble merge settings: {error}") from None


def build_predictor(
    config_file: str | None,
    opts: Sequence[str],
    ensemble_file: str | os.PathLike | None = None,
    tta: bool = False,
    batch_size: int | None = None,
) -> Any:
    """A :class:`~uwm_d2.inference.predictor.VolumePredictor` from one config or an ensemble file.

    Raises:
        UWMInputError: neither or both of ``config_file`` / ``ensemble_file``; anything wrong in
            the configs, the checkpoints or the ensemble file.
    """
    from uwm_d2.config import build_cfg
    from uwm_d2.inference.predictor import EnsembleMember, VolumePredictor, build_models

    if bool(config_file) == bool(ensemble_file):
        raise UWMInputError("give either --config-file (with MODEL.WEIGHTS) or --ensemble")
    if config_file:
        cfg = build_cfg(config_file, opts)
        members = [EnsembleMember(cfg, build_models(cfg), name=str(config_file))]
        return VolumePredictor(members, tta=tta, batch_size=batch_size)
    specs, merge = read_ensemble(ensemble_file)
    members = []
    for spec in specs:
        overrides = [*opts, "MODEL.WEIGHTS", ",".join(spec["weights"])]
        cfg = build_cfg(spec["config"], overrides)
        members.append(
            EnsembleMember(cfg, build_models(cfg), weight=spec["weight"], name=spec["config"])
        )
    rule = override_rule(members[0].rule, merge)
    return VolumePredictor(members, rule=rule, tta=tta, batch_size=batch_size)
