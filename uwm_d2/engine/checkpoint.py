"""Checkpoints: written whole or not at all, read as data only, loaded strictly for inference.

Writing (:class:`AtomicCheckpointer`): fvcore writes checkpoints and the ``last_checkpoint`` tag
in place, so a run killed while saving leaves a truncated file or a tag naming a half-written
one, and ``--resume`` then fails. Here both go through a temp file and a rename
(:mod:`uwm_d2.core.atomic`). ``model_best.pth`` is written weights-only and never tagged as the
last checkpoint: it is what a user uploads to an offline notebook (a fraction of the size of a
training checkpoint, which also carries the optimizer), and ``--resume`` must continue from the
training checkpoint, not from the best one (that skipped iterations when extending a run).
:func:`prune_checkpoints` keeps the newest ``UWM.KEEP_CHECKPOINTS`` periodic checkpoints.

Reading (:func:`load_checkpoint`): ``.pth`` files through ``torch.load(weights_only=True)``,
``.pkl`` files (detectron2's model-zoo format) through an unpickler that only builds numpy
arrays: a checkpoint that would run code while loading is refused, unrun. The state must fit the
model exactly: detectron2's own loader only warns about missing keys and shape mismatches (it is
built for fine-tuning), which for inference would silently run a half-random model.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from uwm_d2.core.atomic import atomic_path, atomic_write_text
from uwm_d2.core.errors import UWMInputError

_LOGGER = logging.getLogger(__name__)

#: Periodic checkpoints are ``model_<iteration, 7 digits>.pth`` (detectron2's naming).
_PERIODIC_RE = re.compile(r"model_(\d{7})\.pth")


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic ``save`` and ``tag_last_checkpoint``.

    Args:
        tag_last: whether a save updates ``last_checkpoint`` (what ``--resume`` loads).
        Others as ``DetectionCheckpointer``; no checkpointables means a weights-only file.
    """

    def __init__(self, *args: Any, tag_last: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tag_last = tag_last

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, checkpointable in self.checkpointables.items():
            data[key] = checkpointable.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        target = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {target}")
        with atomic_path(target) as tmp_path:
            torch.save(data, tmp_path)
        if self.tag_last:
            self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if self.save_to_disk:
            atomic_write_text(
                os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename
            )


def prune_checkpoints(folder: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest periodic checkpoints ``model_XXXXXXX.pth`` in ``folder``.

    ``model_final.pth``, ``model_best.pth`` and the file ``last_checkpoint`` names are never
    deleted. ``keep <= 0`` keeps everything. Returns the deleted paths.
    """
    if keep <= 0:
        return []
    folder = Path(folder)
    tag = folder / "last_checkpoint"
    protected = tag.read_text().strip() if tag.is_file() else ""
    periodic = sorted(
        (int(match.group(1)), path)
        for path in folder.glob("model_*.pth")
        if (match := _PERIODIC_RE.fullmatch(path.name))
    )
    deleted = []
    for _, path in periodic[:-keep]:
        if path.name != protected:
            path.unlink(missing_ok=True)
            deleted.append(path)
    return deleted


# -- reading -----------------------------------------------------------------------------------

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


class DataOnlyCheckpointer(AtomicCheckpointer):
    """The project's checkpointer, reading files without running code from them.

    ``_load_file`` is fvcore's extension point for how a file is read (detectron2 overrides it
    the same way for ``.pkl``): ``.pth`` goes through ``torch.load(weights_only=True)``
    explicitly (not through torch's default, which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` can
    turn off), ``.pkl`` through an unpickler that only builds numpy arrays (detectron2 itself
    would ``pickle.load`` it).
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

    def _log_incompatible_keys(self, incompatible: Any) -> None:
        """One line for a partial load (fvcore lists every missing key: hundreds of lines when
        a Mask R-CNN starts from a semantic model's backbone)."""
        model_keys = list(self.model.state_dict())
        # The project's logger: shown on the console too (fvcore's lines go to log.txt only).
        _LOGGER.info(partial_load_summary(model_keys, incompatible))

    def read(self, path: str) -> dict[str, Any]:
        """The checkpoint's content as data, or a one-line ``UWMInputError`` saying why not."""
        try:
            return self._load_file(path)
        except Exception as error:  # any failure to read it is the file's fault
            raise UWMInputError(f"checkpoint {path!r} {_read_failure(error)}") from None


def _part(key: str) -> str:
    """The part of the model a state-dict key belongs to: ``backbone``, ``roi_heads``, ..."""
    return key.split(".", 1)[0]


def _counted(keys: list[str]) -> str:
    parts: dict[str, int] = {}
    for key in keys:
        parts[_part(key)] = parts.get(_part(key), 0) + 1
    return ", ".join(f"{part} ({count} tensors)" for part, count in sorted(parts.items()))


def partial_load_summary(model_keys: list[str], incompatible: Any) -> str:
    """What loading a checkpoint into a model took and left, by part of the model, in one line.

    ``incompatible`` is fvcore's ``_IncompatibleKeys`` (``missing_keys``, ``unexpected_keys``,
    ``incorrect_shapes``). A part is loaded when none of its tensors was missing or of another
    shape; a part with some of each is named on both sides.
    """
    reshaped = [key for key, _, _ in incompatible.incorrect_shapes]
    fresh = set(incompatible.missing_keys) | set(reshaped)
    loaded = [key for key in model_keys if key not in fresh]
    line = f"loaded from the checkpoint: {_counted(loaded) or 'nothing'}"
    if fresh:
        line += f"; starting fresh: {_counted(sorted(fresh))}"
        if reshaped:
            line += f", of which {len(reshaped)} had another shape in the checkpoint"
    if incompatible.unexpected_keys:
        line += f"; not used from the checkpoint: {_counted(incompatible.unexpected_keys)}"
    return line


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

    Only tensors and plain data are read: a file holding any other object is refused, unrun.

    Raises:
        UWMInputError: the file is missing, unreadable, refused, or its state lacks a key of
            the model or has another shape for it (the message names the key).
    """
    if not Path(path).is_file():
        what = "is a folder, not a file" if Path(path).is_dir() else "does not exist"
        raise UWMInputError(f"checkpoint {path!r} {what} (only local files are read)")
    checkpointer = DataOnlyCheckpointer(model)
    loaded = checkpointer.read(path)
    state = loaded.get("model")
    if not isinstance(state, dict):
        raise UWMInputError(f"checkpoint {path!r} has no model state dict")
    for name, tensor in model.state_dict().items():
        if name not in state:
            raise UWMInputError(f"checkpoint {path!r} does not fit the config: no {name!r}")
        shape = tuple(getattr(state[name], "shape", ()))
        if shape != tuple(tensor.shape):
            raise UWMInputError(
                f"checkpoint {path!r} does not fit the config: {name} has shape {shape}, "
                f"the config builds {tuple(tensor.shape)}"
            )
    # Model-zoo .pkl files hold numpy arrays; extra keys (e.g. the pixel mean) are not loaded.
    tensors = {name: torch.as_tensor(state[name]) for name in model.state_dict()}
    model.load_state_dict(tensors, strict=True)
