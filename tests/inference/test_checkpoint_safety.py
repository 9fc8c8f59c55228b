"""Checkpoints are read as data, never run as code (``torch.load(weights_only=True)``).

A checkpoint is a pickle, and a pickle can name any function to call while loading. These tests
plant such a payload (a harmless one: it would create a marker file) in ``.pth`` and ``.pkl``
checkpoints and check that :func:`uwm_d2.engine.checkpoint.load_checkpoint` refuses both with a
one-line message and that the payload never ran. They also check that what detectron2 saves during
training (model, optimizer, scheduler, iteration, hook state) is plain data, so the safe loader
costs nothing: such a checkpoint loads, and resumes, under ``weights_only=True``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import SimpleTrainer, hooks
from detectron2.solver import build_lr_scheduler, build_optimizer

from uwm_d2.config import build_cfg
from uwm_d2.core.errors import UWMInputError
from uwm_d2.engine.checkpoint import load_checkpoint

from ..conftest import INSTANT_CONFIG


class _WritesMarker:
    """Unpickling this calls ``Path.touch(marker)``: stands for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class _TinyModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.norm = torch.nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(x))


def _plain_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
@pytest.mark.parametrize("force_no_weights_only", [False, True])
def test_a_checkpoint_that_would_run_code_is_refused_unrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, force_no_weights_only: bool
) -> None:
    """Also with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, which flips torch's *default* back to
    unsafe loading: the loader passes ``weights_only=True`` explicitly."""
    if force_no_weights_only:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    model = _TinyModel()
    marker = tmp_path / "payload_ran"
    path = tmp_path / f"checkpoint{suffix}"
    payload = {"model": _plain_state(model), "__author__": _WritesMarker(marker)}
    if suffix == ".pth":
        torch.save(payload, path)
    else:
        payload["model"] = {k: v.numpy() for k, v in payload["model"].items()}
        path.write_bytes(pickle.dumps(payload))
    before = _plain_state(model)

    with pytest.raises(UWMInputError) as caught:
        load_checkpoint(model, str(path))

    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "run code" in message
    assert not marker.exists(), "the pickle's payload ran"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name])


def test_a_data_only_pkl_checkpoint_still_loads(tmp_path: Path) -> None:
    """detectron2's ``.pkl`` format (numpy arrays in dicts) is plain data and stays loadable."""
    source, target = _TinyModel(), _TinyModel()
    path = tmp_path / "model.pkl"
    state = {name: tensor.numpy() for name, tensor in _plain_state(source).items()}
    path.write_bytes(pickle.dumps({"model": state, "__author__": "test"}))
    load_checkpoint(target, str(path))
    for name, tensor in target.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), state[name])


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "cannot be read"),
        (b"not a checkpoint at all\n", "cannot be read"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_one_line(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(UWMInputError, match=expected) as caught:
        load_checkpoint(_TinyModel(), str(path))
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_a_truncated_checkpoint_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "model_final.pth"
    torch.save({"model": _plain_state(_TinyModel())}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UWMInputError, match="cannot be read") as caught:
        load_checkpoint(_TinyModel(), str(path))
    assert "\n" not in str(caught.value)


def _training_parts(cfg):
    """What DefaultTrainer checkpoints: model, optimizer, LR scheduler (as a hook), iteration."""
    model = _TinyModel()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    trainer = SimpleTrainer(model, data_loader=[], optimizer=optimizer)
    trainer.register_hooks([hooks.LRScheduler(optimizer, scheduler)])
    return model, optimizer, scheduler, trainer


def test_a_training_checkpoint_is_plain_data_and_resumes_under_weights_only(
    tmp_path: Path,
) -> None:
    cfg = build_cfg(INSTANT_CONFIG, ["SOLVER.MOMENTUM", "0.9"])
    model, optimizer, scheduler, trainer = _training_parts(cfg)
    for _ in range(3):  # real optimizer state: momentum buffers and a stepped schedule
        optimizer.zero_grad()
        model(torch.randn(8, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
    trainer.iter = 5
    checkpointer = DetectionCheckpointer(model, str(tmp_path), trainer=trainer)
    checkpointer.save("model_0000005", iteration=5)
    path = tmp_path / "model_0000005.pth"

    # The whole file loads with torch's safe loader: nothing in it needs code to rebuild.
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert loaded["iteration"] == 5
    assert loaded["trainer"]["optimizer"]["state"], "no momentum buffers saved"
    assert "LRScheduler" in loaded["trainer"]["hooks"]

    # And detectron2's resume path (fvcore's loader, torch's default weights_only) restores it.
    fresh_model, fresh_optimizer, fresh_scheduler, fresh_trainer = _training_parts(cfg)
    resumed = DetectionCheckpointer(
        fresh_model, str(tmp_path), trainer=fresh_trainer
    ).resume_or_load("", resume=True)
    assert resumed["iteration"] == 5 and fresh_trainer.iter == 5
    for name, tensor in fresh_model.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name])
    before = optimizer.state_dict()["state"]
    after = fresh_optimizer.state_dict()["state"]
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key]["momentum_buffer"], after[key]["momentum_buffer"])
    assert fresh_scheduler.last_epoch == scheduler.last_epoch


def test_load_checkpoint_reads_a_model_saved_by_detectron2(tmp_path: Path) -> None:
    source, target = _TinyModel(), _TinyModel()
    DetectionCheckpointer(source, str(tmp_path)).save("model_final")
    load_checkpoint(target, str(tmp_path / "model_final.pth"))
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name])


def test_load_checkpoint_refuses_another_class_count(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    other = torch.nn.Module()
    other.linear = torch.nn.Linear(4, 5)  # five outputs where the model has three
    other.norm = torch.nn.BatchNorm1d(5)
    torch.save({"model": other.state_dict()}, path)
    with pytest.raises(UWMInputError, match=r"linear\.weight has shape \(5, 4\)"):
        load_checkpoint(_TinyModel(), str(path))
