"""``tools/export_model.py``'s job: trained models → an export folder, checked before it exists.

Steps: build the PyTorch predictor exactly as ``infer_submit`` does (one config with
``MODEL.WEIGHTS``, comma-separated for a checkpoint ensemble, or an ``--ensemble`` file); trace
every checkpoint's network (:mod:`uwm_d2.export.networks`) into a temp folder beside ``--out``;
write the metadata (:mod:`uwm_d2.deploy.export_format`); load the temp folder with the
exported-model predictor and compare its probability maps with the PyTorch models' on the slices
of a small phantom case-day (:func:`self_check`); only then rename the folder to ``--out``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import uwm_d2
from uwm_d2.core.atomic import atomic_folder, check_output_folder
from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.layout_reader import index_scans
from uwm_d2.deploy.export_format import (
    METADATA_FILE,
    SUFFIXES,
    ExportedMember,
    ExportInfo,
    InputRule,
    NetworkFile,
    file_sha256,
    metadata_document,
    read_export,
)
from uwm_d2.deploy.predictor import DeployMember, normalized_batch
from uwm_d2.export.networks import example_inputs, interface_of, network_for, save_network
from uwm_d2.inference.ensemble import build_predictor
from uwm_d2.inference.predictor import EnsembleMember, split_weights
from uwm_d2.inference.volume import scan_records

#: Largest difference of any probability between an exported network and its PyTorch model
#: on the self-check slices. Measured on the demo models: 0 for TorchScript, ~2e-5 for
#: onnxruntime (its kernels sum in another order); a wrong input rule gives differences of 0.1+.
PROBABILITY_TOLERANCE = 1e-3
#: Slices of the phantom case-day the export is checked on.
CHECK_SLICES = 6


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_model` wrote."""

    out: Path
    network_format: str
    members: int
    networks: int
    max_difference: float
    slices: int


def input_rule(member: EnsembleMember) -> InputRule:
    """The input rule of a member's config (and its first model's normalization)."""
    cfg, model = member.cfg, member.models[0]
    return InputRule(
        slice_offsets=tuple(int(offset) for offset in cfg.UWM.SLICE_OFFSETS),
        low_percentile=float(cfg.UWM.INTENSITY_LOW_PERCENTILE),
        high_percentile=float(cfg.UWM.INTENSITY_HIGH_PERCENTILE),
        min_size_test=int(cfg.INPUT.MIN_SIZE_TEST),
        max_size_test=int(cfg.INPUT.MAX_SIZE_TEST),
        pixel_mean=tuple(float(v) for v in model.pixel_mean.flatten().tolist()),
        pixel_std=tuple(float(v) for v in model.pixel_std.flatten().tolist()),
        size_divisibility=int(model.backbone.size_divisibility),
        pixel_spacing_mm=float(cfg.UWM.PIXEL_SPACING_MM),
    )


def check_records(folder: Path) -> list[dict]:
    """The slices of one small phantom case-day (in ``folder``), with their 2.5D neighbours."""
    from uwm_d2.phantom import make_phantom

    root = folder / "phantom"
    make_phantom(root, cases=1, test_cases=0, max_slices=CHECK_SLICES, days_per_case=1,
                 workers=1, progress=False)  # fmt: skip
    (records,) = scan_records(root, index_scans(root, "train")).values()
    return records


def with_neighbours(records: Sequence[dict], offsets: Sequence[int]) -> list[dict]:
    from uwm_d2.data.inputs import neighbor_files

    paths = [record["file_name"] for record in records]
    return [
        {**record, "neighbor_files": neighbor_files(paths, index, offsets)}
        for index, record in enumerate(records)
    ]


def export_member(
    member: EnsembleMember, index: int, network_format: str, folder: Path, example: dict
) -> ExportedMember:
    """Trace every checkpoint of ``member`` into ``folder``; its metadata entry."""
    interface = interface_of(member.cfg)
    rule = input_rule(member)
    (item,) = member.prepare([example], None)
    image = item["image"].numpy()
    images = list(normalized_batch([image], rule)[0]) if interface == "semantic" else [image]
    networks = []
    checkpoints = split_weights(member.cfg.MODEL.WEIGHTS)
    for number, (model, checkpoint) in enumerate(zip(member.models, checkpoints, strict=True)):
        path = folder / f"member{index}_net{number}{SUFFIXES[network_format]}"
        example_arrays = example_inputs(interface, images, (item["height"], item["width"]))
        save_network(network_for(model, interface), interface, network_format, example_arrays, path)
        networks.append(NetworkFile(path.name, file_sha256(path), Path(checkpoint).name))
    return ExportedMember(
        name=member.name,
        meta_architecture=member.cfg.MODEL.META_ARCHITECTURE,
        interface=interface,
        weight=member.weight,
        config_sha256=hashlib.sha256(member.cfg.dump().encode()).hexdigest(),
        merge_rule=member.rule,
        inputs=rule,
        networks=tuple(networks),
    )


def self_check(
    torch_members: Sequence[EnsembleMember], info: ExportInfo, records: Sequence[dict]
) -> float:
    """Largest probability difference between each exported network and its PyTorch model.

    Raises:
        UWMInputError: a difference above :data:`PROBABILITY_TOLERANCE` (names the member).
    """
    largest = 0.0
    for torch_member, exported in zip(torch_members, info.members, strict=True):
        deploy_member = DeployMember(info, exported)
        batch = with_neighbours(records, torch_member.offsets)
        torch_inputs = torch_member.prepare(batch, None)
        deploy_inputs = deploy_member.prepare(batch, None)
        for network in range(torch_member.network_count):
            for item_torch, item_deploy in zip(torch_inputs, deploy_inputs, strict=True):
                expected = torch_member.run(network, [item_torch], flip=False)
                found = deploy_member.run(network, [item_deploy], flip=False)
                difference = float(np.abs(expected - found).max())
                largest = max(largest, difference)
                if not difference <= PROBABILITY_TOLERANCE:
                    raise UWMInputError(
                        f"the exported network {exported.networks[network].file} of "
                        f"{exported.name} differs from its PyTorch model by {difference:.3g} in "
                        f"probability (tolerance {PROBABILITY_TOLERANCE}); nothing written"
                    )
    return largest


def export_model(
    config_file: str | None,
    opts: Sequence[str],
    network_format: str,
    out: str | os.PathLike,
    ensemble_file: str | os.PathLike | None = None,
    tta: bool = False,
) -> ExportSummary:
    """Export one config's checkpoints (or an ensemble file's) to ``out``; see the module text.

    Raises:
        UWMInputError: a bad format, ``out`` not new or empty, anything the PyTorch predictor
            refuses (config, checkpoints, ensemble file), a kind that cannot be exported in this
            format, a failed trace, or a failed self-check. Nothing is written then.
    """
    if network_format not in SUFFIXES:
        raise UWMInputError(f"--format must be one of {sorted(SUFFIXES)}, got {network_format!r}")
    check_output_folder(out, must_be_empty=True)
    predictor = build_predictor(config_file, opts, ensemble_file, tta=tta, batch_size=1)
    for member in predictor.members:
        interface_of(member.cfg)  # refuse a kind that cannot be exported before any tracing
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix="uwm-export-check-") as scratch:
        records = check_records(Path(scratch))
        with atomic_folder(out) as folder:
            members = []
            for index, member in enumerate(predictor.members):
                example = with_neighbours(records, member.offsets)[len(records) // 2]
                members.append(export_member(member, index, network_format, folder, example))
            info = ExportInfo(folder, network_format, uwm_d2.__version__, predictor.rule, tta,
                              tuple(members))  # fmt: skip
            document = metadata_document(info, uwm_d2.__version__)
            (folder / METADATA_FILE).write_text(_json(document))
            largest = self_check(predictor.members, read_export(folder), records)
            document["self_check"] = {
                "slices": len(records),
                "max_probability_difference": largest,
                "tolerance": PROBABILITY_TOLERANCE,
            }
            (folder / METADATA_FILE).write_text(_json(document))
    return ExportSummary(
        Path(out),
        network_format,
        members=len(members),
        networks=sum(len(member.networks) for member in members),
        max_difference=largest,
        slices=len(records),
    )


def _json(document: dict) -> str:
    import json

    return json.dumps(document, indent=2) + "\n"
