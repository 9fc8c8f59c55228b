"""The export folder: networks plus one JSON file with everything else inference needs.

Layout (written by :func:`uwm_d2.export.export_model`, read by :func:`read_export`)::

    DIR/uwm_export.json          metadata (below)
    DIR/member0_net0.onnx        one network per checkpoint (.onnx or .ts for TorchScript)
    DIR/member0_net1.onnx        ... a checkpoint ensemble of one config
    DIR/member1_net0.onnx        ... another config of an --ensemble file

``uwm_export.json``: ``format`` (``"uwm_d2-export"``), ``format_version`` (:data:`FORMAT_VERSION`;
a newer one is refused), ``uwm_d2_version``, ``network_format`` (``onnx`` or ``torchscript``),
``classes`` (must be :data:`~uwm_d2.core.ids.CLASSES`), ``merge_rule`` (the ensemble's cut and 3D
clean-up, :meth:`~uwm_d2.core.merge.MergeRule.as_dict`), ``tta`` (flip TTA by default), and
``members``, each with ``name``, ``meta_architecture``, ``interface`` (:data:`INTERFACES`),
``weight``, ``config_sha256`` (of the whole merged config), its own ``merge_rule`` (instance
selection and kind weighting), ``inputs`` (:class:`InputRule`) and ``networks`` (``file``,
``sha256``, ``checkpoint``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES
from uwm_d2.core.merge import MergeRule

METADATA_FILE = "uwm_export.json"
FORMAT = "uwm_d2-export"
#: Bump when a reader of the previous version could misread a new folder.
FORMAT_VERSION = 1
#: Network file suffix per format.
SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts"}
#: What a network takes and gives (names of its inputs and outputs):
#: ``semantic``: ``image`` ``(N, C, H, W)`` normalized and padded → ``logits`` ``(N, K, H, W)``;
#: ``instances``: ``image`` ``(C, H', W')`` in the model range and ``size`` ``(2,)`` int64 (the
#: scan's height and width) → ``masks`` ``(K, height, width)``, ``scores``, ``classes``;
#: ``instances+semantic``: the same plus ``logits`` ``(1, C, Hp, Wp)`` of the padded input.
INTERFACES = ("semantic", "instances", "instances+semantic")


@dataclass(frozen=True)
class InputRule:
    """How a member's network inputs are made (the config values they come from in brackets).

    Args:
        slice_offsets: 2.5D channels (``UWM.SLICE_OFFSETS``).
        low_percentile, high_percentile: the intensity window (``UWM.INTENSITY_*_PERCENTILE``).
        min_size_test, max_size_test: the test-time resize (``INPUT.MIN/MAX_SIZE_TEST``).
        pixel_mean, pixel_std: per-channel normalization (``MODEL.PIXEL_MEAN/STD``); applied
            outside the network for the ``semantic`` interface, inside it otherwise.
        size_divisibility: inputs are padded to a multiple of this (the backbone's).
        pixel_spacing_mm: the training pixel spacing NIfTI inputs are resampled to.
    """

    slice_offsets: tuple[int, ...]
    low_percentile: float
    high_percentile: float
    min_size_test: int
    max_size_test: int
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    size_divisibility: int
    pixel_spacing_mm: float

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> InputRule:
        names = {field.name for field in fields(cls)}
        missing = sorted(names - set(settings))
        if missing:
            raise ValueError(f"inputs lack {missing[0]!r}")
        values = {name: settings[name] for name in names}
        for name in ("slice_offsets", "pixel_mean", "pixel_std"):
            values[name] = tuple(values[name])
        rule = cls(**values)
        if not (len(rule.slice_offsets) == len(rule.pixel_mean) == len(rule.pixel_std)):
            raise ValueError("slice_offsets, pixel_mean and pixel_std differ in length")
        return rule

    def as_dict(self) -> dict[str, Any]:
        return {name: list(v) if isinstance(v, tuple) else v for name, v in asdict(self).items()}

    @property
    def channels(self) -> int:
        return len(self.slice_offsets)


@dataclass(frozen=True)
class NetworkFile:
    """One exported network: its file in the folder, the file's SHA-256, its checkpoint's name."""

    file: str
    sha256: str
    checkpoint: str


@dataclass(frozen=True)
class ExportedMember:
    """One config of the export (see the module docstring for the fields)."""

    name: str
    meta_architecture: str
    interface: str
    weight: float
    config_sha256: str
    merge_rule: MergeRule
    inputs: InputRule
    networks: tuple[NetworkFile, ...]


@dataclass(frozen=True)
class ExportInfo:
    """A read and checked export folder."""

    folder: Path
    network_format: str
    uwm_d2_version: str
    merge_rule: MergeRule
    tta: bool
    members: tuple[ExportedMember, ...]

    def network_path(self, network: NetworkFile) -> Path:
        return self.folder / network.file


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def metadata_document(info: ExportInfo, version: str) -> dict[str, Any]:
    """The JSON document of ``info`` (what :func:`read_export` reads back)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "uwm_d2_version": version,
        "network_format": info.network_format,
        "classes": list(CLASSES),
        "merge_rule": info.merge_rule.as_dict(),
        "tta": info.tta,
        "members": [
            {
                "name": member.name,
                "meta_architecture": member.meta_architecture,
                "interface": member.interface,
                "weight": member.weight,
                "config_sha256": member.config_sha256,
                "merge_rule": member.merge_rule.as_dict(),
                "inputs": member.inputs.as_dict(),
                "networks": [asdict(network) for network in member.networks],
            }
            for member in info.members
        ],
    }


def read_export(folder: str | os.PathLike, verify_files: bool = True) -> ExportInfo:
    """Read and check an export folder.

    Args:
        folder: the folder ``export_model`` wrote.
        verify_files: also compare every network file's SHA-256 with the metadata (a
            truncated or swapped file then fails here, not inside the runtime).

    Raises:
        UWMInputError: one line naming the folder: missing, no metadata file, not JSON, another
            format, a newer format version, other classes, a malformed field, or a network file
            missing or changed.
    """
    folder = Path(folder)
    shown = f"export folder {str(folder)!r}"
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UWMInputError(f"{shown} {what}")
    path = folder / METADATA_FILE
    if not path.is_file():
        raise UWMInputError(f"{shown} is incomplete: it has no {METADATA_FILE}")
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UWMInputError(f"{shown}: {METADATA_FILE} is not valid JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise UWMInputError(
            f"{shown}: {METADATA_FILE} is not a uwm_d2 export (no format {FORMAT!r})"
        )
    version = document.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UWMInputError(f"{shown}: format_version {version!r} is not a version number")
    if version > FORMAT_VERSION:
        raise UWMInputError(
            f"{shown} has export format version {version}, newer than this uwm_d2 reads "
            f"({FORMAT_VERSION}); install the uwm_d2 that exported it "
            f"({document.get('uwm_d2_version', 'unknown')}) or newer"
        )
    try:
        info = _parse(folder, document)
    except (KeyError, TypeError, ValueError) as error:
        detail = f"missing {error}" if isinstance(error, KeyError) else str(error)
        raise UWMInputError(f"{shown}: {METADATA_FILE} is malformed: {detail}") from None
    for member in info.members:
        for network in member.networks:
            _check_network_file(shown, info.network_path(network), network, verify_files)
    return info


def _parse(folder: Path, document: dict[str, Any]) -> ExportInfo:
    network_format = document["network_format"]
    if network_format not in SUFFIXES:
        raise ValueError(f"network_format {network_format!r} is not one of {sorted(SUFFIXES)}")
    if list(document["classes"]) != list(CLASSES):
        raise ValueError(f"classes {document['classes']} are not {list(CLASSES)}")
    members = []
    for entry in document["members"]:
        if entry["interface"] not in INTERFACES:
            raise ValueError(f"interface {entry['interface']!r} is not one of {INTERFACES}")
        networks = tuple(NetworkFile(**network) for network in entry["networks"])
        for network in networks:
            if Path(network.file).name != network.file or not network.file.endswith(
                SUFFIXES[network_format]
            ):
                raise ValueError(f"network file name {network.file!r} is not a plain file name")
        if not networks:
            raise ValueError(f"member {entry['name']!r} lists no network")
        weight = float(entry["weight"])
        if not weight > 0:
            raise ValueError(f"member {entry['name']!r} has weight {weight}, not > 0")
        members.append(
            ExportedMember(
                name=str(entry["name"]),
                meta_architecture=str(entry["meta_architecture"]),
                interface=entry["interface"],
                weight=weight,
                config_sha256=str(entry["config_sha256"]),
                merge_rule=MergeRule.from_dict(entry["merge_rule"]),
                inputs=InputRule.from_dict(entry["inputs"]),
                networks=networks,
            )
        )
    if not members:
        raise ValueError("no members")
    tta = document["tta"]
    if not isinstance(tta, bool):
        raise ValueError(f"tta must be true or false, got {tta!r}")
    return ExportInfo(
        folder=folder,
        network_format=network_format,
        uwm_d2_version=str(document.get("uwm_d2_version", "")),
        merge_rule=MergeRule.from_dict(document["merge_rule"]),
        tta=tta,
        members=tuple(members),
    )


def _check_network_file(shown: str, path: Path, network: NetworkFile, verify: bool) -> None:
    if not path.is_file():
        raise UWMInputError(f"{shown} is incomplete: network file {network.file!r} is missing")
    if verify and file_sha256(path) != network.sha256:
        raise UWMInputError(
            f"{shown}: network file {network.file!r} differs from the one exported "
            "(SHA-256 mismatch: truncated, replaced or corrupt)"
        )
