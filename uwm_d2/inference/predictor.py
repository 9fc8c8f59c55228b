"""Batched Mask R-CNN inference over whole case-days, with flip TTA and checkpoint ensembles.

Each slice goes through the *test-time* :class:`~uwm_d2.data.mapper.UWMDatasetMapper`, the same
2.5D stacking, normalization and resizing as validation during training. Models run on batches of
slices (not one ``DefaultPredictor`` call per image). For every pass (a checkpoint, optionally its
horizontally flipped twin) the instances become per-class probability maps through
:func:`uwm_d2.core.merge.class_probability_maps`; maps are averaged over passes, then cut at the
mask threshold: with one pass this is exactly :func:`uwm_d2.core.merge.merge_instances`, the rule
the evaluator uses, so the validation score is the score of what gets submitted.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.merge import class_probability_maps, remove_single_slice_components
from uwm_d2.data.inputs import attach_neighbor_files, group_by_case_day
from uwm_d2.data.mapper import UWMDatasetMapper
from uwm_d2.evaluation.postprocess import postprocess_soft

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeSettings:
    """The thresholds of the merge rule, read from ``cfg.UWM.EVAL``."""

    score_thresholds: tuple[float, ...]
    mask_threshold: float
    min_area: int
    cleanup_3d: bool

    @classmethod
    def from_config(cls, cfg: CfgNode) -> MergeSettings:
        return cls(
            tuple(float(value) for value in cfg.UWM.EVAL.SCORE_THRESHOLDS),
            float(cfg.UWM.EVAL.MASK_THRESHOLD),
            int(cfg.UWM.EVAL.MIN_AREA),
            bool(cfg.UWM.EVAL.CLEANUP_3D),
        )


def split_weights(weights: str) -> list[str]:
    """``MODEL.WEIGHTS`` may list several checkpoints, comma-separated, for a fold ensemble."""
    paths = [path.strip() for path in weights.split(",") if path.strip()]
    if not paths:
        raise UWMInputError("no checkpoint given: set MODEL.WEIGHTS (comma-separate an ensemble)")
    return paths


#: What a detectron2-format ``.pkl`` checkpoint may contain besides dicts, lists and strings:
#: numpy arrays and scalars. Any other global (a function, a class) is refused, as torch's
#: ``weights_only`` loader refuses it for ``.pth`` files.
_PICKLE_ALLOWED_GLOBALS = frozenset(
    {
        ("collections", "OrderedDict"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }
)


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unsupported global {module}.{name}")
        return super().find_class(module, name)


class _DataOnlyCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer, but reading files without running code from them.

    ``.pth`` files go through ``torch.load(weights_only=True)`` explicitly (not through torch's
    default, which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` can turn off), ``.pkl`` files through an
    unpickler that only builds numpy arrays; detectron2 itself would ``pickle.load`` them.
    """

    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith(".pkl"):
            with open(filename, "rb") as handle:
                data = _DataOnlyUnpickler(handle, encoding="latin1").load()
            if not isinstance(data, dict):
                raise pickle.UnpicklingError(f"expected a dict, found {type(data).__name__}")
            if "model" in data and "__author__" in data:
                return data  # detectron2 model-zoo format
            if "blobs" in data:  # Caffe2 / Detectron1 format, converted as detectron2 does
                data = data["blobs"]
            data = {key: value for key, value in data.items() if not key.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        with open(filename, "rb") as handle:
            magic = handle.read(4)
        # torch.save writes a zip archive; the legacy format starts with a pickle opcode.
        if not (magic.startswith(b"PK\x03\x04") or magic.startswith(b"\x80")):
            raise ValueError("not a torch checkpoint (neither a zip archive nor a pickle)")
        loaded = torch.load(filename, map_location=torch.device("cpu"), weights_only=True)
        if not isinstance(loaded, dict):
            raise pickle.UnpicklingError(f"expected a dict, found {type(loaded).__name__}")
        return loaded if "model" in loaded else {"model": loaded}


def _read_failure(error: BaseException) -> str:
    """Why a checkpoint could not be read, in a few words (torch's own messages are paragraphs)."""
    text = str(error)
    refused = [line.strip() for line in text.splitlines() if "GLOBAL" in line]
    if refused or "unsupported global" in text:
        detail = refused[0] if refused else text.strip()
        return (
            f"holds more than tensors and plain data ({detail}); refused, because loading it "
            "would run code from the file"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Weights only load failed" in text:
        # torch's paragraph ends with the actual reason before the pointer to its docs.
        reasons = [line for line in lines[1:] if not line.startswith("Check the documentation")]
        detail = reasons[-1] if reasons else "not a torch checkpoint"
    else:
        detail = lines[0].split(". ")[0] if lines else type(error).__name__
    return f"cannot be read ({detail}); is it a checkpoint saved by this project?"


def load_checkpoint(model: torch.nn.Module, path: str) -> None:
    """Load ``path`` into ``model``, failing with one line if it does not fit the config.

    detectron2's own loader only *warns* about missing keys and shape mismatches (it is built for
    fine-tuning from other datasets); for inference that would silently run a half-random model.
    Only tensors and plain data are read: a file holding any other object is refused, unexecuted.
    """
    if not Path(path).is_file():
        what = "is a folder, not a file" if Path(path).is_dir() else "does not exist"
        raise UWMInputError(f"checkpoint {path!r} {what} (only local files are read)")
    checkpointer = _DataOnlyCheckpointer(model)
    try:
        loaded = checkpointer._load_file(path)
    except Exception as error:  # any failure to read it is the file's fault
        raise UWMInputError(f"checkpoint {path!r} {_read_failure(error)}") from None
    state = loaded.get("model")
    if not isinstance(state, dict):
        raise UWMInputError(f"checkpoint {path!r} has no model state dict")
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise UWMInputError(f"checkpoint {path!r} does not fit the config: no {name!r}")
        shape = tuple(getattr(state[name], "shape", ()))
        if shape != tuple(tensor.shape):
            raise UWMInputError(
                f"checkpoint {path!r} does not fit the config: {name} has shape {shape}, "
                f"the config builds {tuple(tensor.shape)}"
            )
    incompatible = checkpointer._load_model(loaded)  # the file is read once, not twice
    if incompatible is not None:
        checkpointer._log_incompatible_keys(incompatible)


def build_models(cfg: CfgNode) -> list[torch.nn.Module]:
    """One model in eval mode per checkpoint listed in ``MODEL.WEIGHTS``."""
    models = []
    for path in split_weights(cfg.MODEL.WEIGHTS):
        model = build_model(cfg)
        load_checkpoint(model, path)
        model.eval()
        models.append(model)
    return models


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class VolumePredictor:
    """Predict per-class masks for whole case-days with one or more models.

    Args:
        cfg: a frozen config (``add_uwm_config`` applied).
        models: models from :func:`build_models` (one per checkpoint).
        tta: also run each model on the horizontally flipped slices and average.
        batch_size: slices per forward pass.
    """

    def __init__(
        self,
        cfg: CfgNode,
        models: Sequence[torch.nn.Module],
        tta: bool = False,
        batch_size: int = 8,
    ) -> None:
        if batch_size < 1:
            raise UWMInputError(f"batch size must be at least 1, got {batch_size}")
        self.cfg = cfg
        self.models = list(models)
        self.tta = tta
        self.batch_size = batch_size
        self.settings = MergeSettings.from_config(cfg)
        self.mapper = UWMDatasetMapper(cfg, is_train=False)
        self.offsets = tuple(int(offset) for offset in cfg.UWM.SLICE_OFFSETS)

    @torch.no_grad()
    def _class_maps(self, model: torch.nn.Module, inputs: list[dict], flip: bool) -> np.ndarray:
        """``(B, 3, H, W)`` per-class probability maps of one model pass over a batch."""
        if flip:
            inputs = [{**item, "image": item["image"].flip(-1)} for item in inputs]
        instances = model.inference(inputs, do_postprocess=False)
        maps = []
        for item, result in zip(inputs, instances, strict=True):
            height, width = int(item["height"]), int(item["width"])
            # Soft masks pasted at the scan's own size, exactly as the evaluator pastes them.
            pasted = postprocess_soft(result, height, width).to("cpu")
            if not pasted.has("pred_masks"):
                maps.append(np.zeros((3, height, width), dtype=np.float32))
                continue
            class_maps = class_probability_maps(
                pasted.pred_masks.numpy(),
                pasted.scores.numpy(),
                pasted.pred_classes.numpy(),
                self.settings.score_thresholds,
                self.settings.mask_threshold,
                self.settings.min_area,
                image_shape=(height, width),
            )
            maps.append(class_maps[..., ::-1] if flip else class_maps)
        return np.stack(maps)

    def predict_case_day(self, records: Sequence[dict]) -> np.ndarray:
        """Masks of one case-day: ``(D, 3, H, W)`` bool, slices in the records' order.

        ``records`` are one case-day's slices sorted by slice number, each with ``file_name``,
        ``neighbor_files``, ``height`` and ``width`` (see :func:`scan_records`).
        """
        probabilities = []
        for batch in _batches(records, self.batch_size):
            inputs = [self.mapper(dict(record)) for record in batch]
            passes = [
                self._class_maps(model, inputs, flip)
                for model in self.models
                for flip in ((False, True) if self.tta else (False,))
            ]
            probabilities.append(np.mean(passes, axis=0))
        masks = np.concatenate(probabilities) >= self.settings.mask_threshold
        if self.settings.cleanup_3d:
            for class_index in range(masks.shape[1]):
                masks[:, class_index] = remove_single_slice_components(masks[:, class_index])
        return masks


def scan_records(
    data_root: str | os.PathLike, scans, offsets: Sequence[int]
) -> dict[str, list[dict]]:
    """Slice records per case-day from an :func:`~uwm_d2.core.layout.index_scans` frame."""
    root = Path(data_root)
    records = [
        {
            "file_name": str(root / row.path),
            "slice_id": row.id,
            "case_day": row.case_day,
            "slice": int(row.slice),
            "height": int(row.height),
            "width": int(row.width),
        }
        for row in scans.itertuples(index=False)
    ]
    attach_neighbor_files(records, offsets)
    return {case_day: list(group) for case_day, group in group_by_case_day(records).items()}
