"""UWMTrainer: an instant-test run via tools/train_net.py, resume, hooks and a clean NaN stop."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("detectron2")

import torch
from detectron2.engine import hooks
from detectron2.utils.events import EventStorage

from uwm_d2.config import build_cfg
from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.training_log import best_metric, trim_metrics_json
from uwm_d2.data.register import register_from_cfg
from uwm_d2.engine import TrainingDivergedError, UWMTrainer, ValidationLoss
from uwm_d2.engine.base_trainer import prepare_cfg
from uwm_d2.engine.checkpoint import AtomicCheckpointer
from uwm_d2.engine.hooks import ResumableBestCheckpointer

from ..conftest import INSTANT_CONFIG, REPO_ROOT, tool_env

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _train_net(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "train_net.py"), *args],
        capture_output=True,
        text=True,
        env=tool_env(OMP_NUM_THREADS="1"),
        timeout=600,
        cwd=REPO_ROOT,
    )


@pytest.mark.slow
def test_instant_run_then_resume(instant_data: tuple[Path, Path], tmp_path: Path) -> None:
    data_root, coco = instant_data
    out = tmp_path / "out"
    command = [
        "--config-file", str(INSTANT_CONFIG),
        "UWM.DATA_ROOT", str(data_root), "UWM.COCO_DIR", str(coco), "UWM.NUM_FOLDS", "2",
        "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu",
    ]  # fmt: skip
    first = _train_net(*command)
    assert first.returncode == 0, first.stderr[-3000:]
    # A console a person reads (progress, scores), the whole story in log.txt without colour codes.
    assert len(first.stdout.splitlines()) < 40, first.stdout
    assert "Starting training from iteration 0" in first.stdout and "uwm_val: score" in first.stdout
    log = (out / "log.txt").read_text()
    assert "Running with full config" in log and "Running with full config" not in first.stdout
    assert "\x1b[" not in log
    for name in ("model_final.pth", "model_best.pth", "model_0000002.pth", "metrics.json"):
        assert (out / name).is_file(), name
    # Resume continues from the training checkpoint, never from the best one (which is the
    # weights alone: the file to ship, a fraction of a training checkpoint's size).
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    best = torch.load(out / "model_best.pth", weights_only=True)
    assert set(best) == {"model", "iteration"}
    assert (out / "model_best.pth").stat().st_size < 0.6 * (out / "model_final.pth").stat().st_size
    assert not (out / "model_0000005.pth").exists()  # the final iteration is saved once
    assert (out / "inference" / "uwm_results_uwm_val.json").is_file()
    rows = _rows(out / "metrics.json")
    scores = [row["uwm/score"] for row in rows if "uwm/score" in row]
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)  # mid-run and final eval
    assert any("validation_loss" in row for row in rows)
    assert max(row["iteration"] for row in rows if "total_loss" in row) == 5

    second = _train_net("--resume", *command, "SOLVER.MAX_ITER", "9")
    assert second.returncode == 0, second.stderr[-3000:]
    log = (out / "log.txt").read_text()
    # Extending the finished 6-iteration run runs iterations 6, 7 and 8: each exactly once.
    assert "Starting training from iteration 6" in log
    rows = _rows(out / "metrics.json")
    iterations = [row["iteration"] for row in rows]
    assert len(iterations) == len(set(iterations))  # no iteration logged twice
    assert max(row["iteration"] for row in rows if "total_loss" in row) == 8
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 8


@pytest.fixture
def cfg(instant_data: tuple[Path, Path], tmp_path: Path) -> Any:
    data_root, coco = instant_data
    cfg = build_cfg(
        INSTANT_CONFIG,
        [
            "UWM.DATA_ROOT", str(data_root), "UWM.COCO_DIR", str(coco),
            "OUTPUT_DIR", str(tmp_path / "out"),
            "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
            "TEST.EVAL_PERIOD", "0", "UWM.VAL_LOSS_PERIOD", "2",
        ],
    )  # fmt: skip
    register_from_cfg(cfg)
    return cfg


def test_hooks_and_a_validation_loss_that_changes_nothing(cfg: Any) -> None:
    trainer = UWMTrainer(cfg)
    kinds = [type(hook) for hook in trainer._hooks]
    evaluation = kinds.index(hooks.EvalHook)
    best_index = kinds.index(ResumableBestCheckpointer)
    assert evaluation < best_index < kinds.index(hooks.PeriodicWriter)
    assert evaluation < kinds.index(ValidationLoss) < kinds.index(hooks.PeriodicWriter)
    best = trainer._hooks[best_index]
    assert best._val_metric == "uwm/score"

    validation = trainer._hooks[kinds.index(ValidationLoss)]
    model = trainer.model
    buffers = {name: value.clone() for name, value in model.named_buffers()}
    rng_state = torch.get_rng_state()
    assert model.training
    with EventStorage(0) as storage:
        trainer.storage = storage
        validation._do_loss()
        value, _ = storage.latest()["validation_loss"]
    assert value > 0 and model.training
    assert all(torch.equal(buffers[name], value) for name, value in model.named_buffers())
    assert torch.equal(torch.get_rng_state(), rng_state)

    batch = next(iter(trainer.data_loader))
    assert len(batch) == cfg.SOLVER.IMS_PER_BATCH and "instances" in batch[0]


def _unsettled_batch_norm(model: torch.nn.Module) -> None:
    """Running statistics a from-scratch network has not settled yet, exaggerated: in eval mode
    every BatchNorm then amplifies its input ~300x and shifts it up, until the boxes overflow."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.fill_(-1e4)
            module.running_var.fill_(0.0)


def test_eval_mode_validation_pass_reproduces_the_divergence(cfg: Any) -> None:
    """What killed a from-scratch run: the losses measured with BatchNorm in eval mode."""
    trainer = UWMTrainer(cfg)
    model = trainer.model
    _unsettled_batch_norm(model)
    batch = next(iter(trainer.build_validation_loss_loader(cfg)))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.eval()
    with EventStorage(0), torch.no_grad(), pytest.raises(FloatingPointError, match="Inf/NaN"):
        model(batch)


def test_validation_loss_survives_unsettled_statistics_and_changes_nothing(cfg: Any) -> None:
    trainer = UWMTrainer(cfg)
    model = trainer.model
    _unsettled_batch_norm(model)
    validation = next(hook for hook in trainer._hooks if isinstance(hook, ValidationLoss))
    buffers = {name: value.clone() for name, value in model.named_buffers()}
    parameters = {name: value.clone() for name, value in model.named_parameters()}
    rng_state = torch.get_rng_state()
    with EventStorage(0) as storage:
        trainer.storage = storage
        validation._do_loss()  # batch statistics: a finite loss, no exception
        value, _ = storage.latest()["validation_loss"]
    assert 0 < value < 100
    assert all(torch.equal(buffers[name], value) for name, value in model.named_buffers())
    assert all(torch.equal(parameters[name], value) for name, value in model.named_parameters())
    assert torch.equal(torch.get_rng_state(), rng_state) and model.training


def test_a_diverging_validation_pass_is_a_warning_not_a_stop(
    cfg: Any, caplog: pytest.LogCaptureFixture
) -> None:
    trainer = UWMTrainer(cfg)
    validation = next(hook for hook in trainer._hooks if isinstance(hook, ValidationLoss))

    def diverging(batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        raise FloatingPointError("Predicted boxes or scores contain Inf/NaN.")

    trainer.model.forward = diverging
    with caplog.at_level(logging.WARNING), EventStorage(0) as storage:
        trainer.storage = storage
        validation._do_loss()
        assert "validation_loss" not in storage.latest()
    assert "validation loss skipped" in caplog.text and "training goes on" in caplog.text


@pytest.mark.slow
def test_nan_loss_stops_with_one_line(cfg: Any) -> None:
    trainer = UWMTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    forward = model.forward

    def diverging(batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        losses = forward(batched_inputs)
        if trainer.iter >= 3:
            losses["loss_cls"] = losses["loss_cls"] * float("nan")
        return losses

    model.forward = diverging
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger("detectron2.engine.train_loop").addHandler(handler)
    try:
        with pytest.raises(TrainingDivergedError) as error:
            trainer.train()
    finally:
        logging.getLogger("detectron2.engine.train_loop").removeHandler(handler)
    message = str(error.value)
    assert "\n" not in message
    assert "training diverged at iteration 3" in message
    assert "model_0000001.pth" in message  # the last checkpoint saved before the NaN
    assert not any(record.exc_info for record in seen)  # no traceback in the log


def test_amp_is_turned_off_off_cuda(cfg: Any, caplog: pytest.LogCaptureFixture) -> None:
    amp = cfg.clone()
    amp.defrost()
    amp.SOLVER.AMP.ENABLED = True
    amp.freeze()
    with caplog.at_level(logging.WARNING, logger="uwm_d2.engine.base_trainer"):
        prepared = prepare_cfg(amp)
    assert prepared.SOLVER.AMP.ENABLED is False and amp.SOLVER.AMP.ENABLED is True
    assert "SOLVER.AMP.ENABLED needs CUDA" in caplog.text


def test_missing_weights_are_one_line(cfg: Any) -> None:
    broken = cfg.clone()
    broken.defrost()
    broken.MODEL.WEIGHTS = "/nonexistent/model.pth"
    broken.freeze()
    trainer = UWMTrainer(broken)
    with pytest.raises(UWMInputError, match="does not exist"):
        trainer.resume_or_load(resume=False)


def test_trim_metrics_json_and_best_metric(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    rows = [
        {"iteration": 1, "total_loss": 2.0},
        {"iteration": 2, "uwm/score": 0.4},
        {"iteration": 5, "total_loss": 1.0},
        {"iteration": 6, "uwm/score": 0.6},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"iteration": 7, "tot')
    assert best_metric(path, "uwm/score") == (0.6, 6)  # the cut-off last line is skipped
    with path.open("a") as writer:  # the JSONWriter's handle, opened before the trim
        assert trim_metrics_json(path, 6) == 2
        writer.write(json.dumps({"iteration": 6, "total_loss": 0.5}) + "\n")
    assert [row["iteration"] for row in _rows(path)] == [1, 2, 5, 6]
    assert _rows(path)[-1] == {"iteration": 6, "total_loss": 0.5}
    assert trim_metrics_json(tmp_path / "missing.json", 3) == 0


def test_checkpoints_are_atomic_and_carry_the_optimizer(cfg: Any, tmp_path: Path) -> None:
    """A save that dies half-way leaves the previous checkpoint and tag intact; a finished
    save holds the optimizer's momentum and loads with weights_only=True."""
    trainer = UWMTrainer(cfg)
    checkpointer = trainer.checkpointer
    assert isinstance(checkpointer, AtomicCheckpointer)
    with EventStorage(0) as trainer.storage:
        trainer.iter = 0
        trainer.run_step()  # one SGD step creates momentum buffers
    checkpointer.save("model_a")
    saved = torch.load(Path(cfg.OUTPUT_DIR) / "model_a.pth", weights_only=True)
    assert saved["trainer"]["_trainer"]["optimizer"]["state"]  # momentum survives a resume

    def dying_save(data: Any, path: Any) -> None:
        Path(path).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    original = torch.save
    torch.save = dying_save
    try:
        with pytest.raises(KeyboardInterrupt):
            checkpointer.save("model_a")
    finally:
        torch.save = original
    assert torch.load(Path(cfg.OUTPUT_DIR) / "model_a.pth", weights_only=True)["model"]
    assert (Path(cfg.OUTPUT_DIR) / "last_checkpoint").read_text() == "model_a.pth"
    assert not [name for name in os.listdir(cfg.OUTPUT_DIR) if ".tmp-" in name]


@pytest.mark.slow
def test_killed_training_resumes_where_its_last_checkpoint_left(
    instant_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """SIGKILL mid-run, then --resume: same iteration count, one metrics row per iteration."""
    import signal
    import time

    data_root, coco = instant_data
    out = tmp_path / "out"
    command = [
        sys.executable, str(REPO_ROOT / "tools" / "train_net.py"),
        "--config-file", str(INSTANT_CONFIG),
        "UWM.DATA_ROOT", str(data_root), "UWM.COCO_DIR", str(coco), "UWM.NUM_FOLDS", "2",
        "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "40",
        "SOLVER.CHECKPOINT_PERIOD", "4", "TEST.EVAL_PERIOD", "0", "UWM.VAL_LOSS_PERIOD", "0",
    ]  # fmt: skip
    env = tool_env(OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    try:
        # Kill once a checkpoint past the first exists and training has moved on beyond it.
        while not (out / "model_0000007.pth").exists():
            assert process.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    last = (out / "last_checkpoint").read_text().strip()
    resumed_from = torch.load(out / last, weights_only=True)["iteration"] + 1
    assert resumed_from >= 8

    second = subprocess.run(
        [*command[:2], "--resume", *command[2:], "SOLVER.MAX_ITER", str(resumed_from + 2)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Starting training from iteration {resumed_from}" in (out / "log.txt").read_text()
    rows = _rows(out / "metrics.json")
    iterations = [row["iteration"] for row in rows]
    assert len(iterations) == len(set(iterations))
    assert max(row["iteration"] for row in rows if "total_loss" in row) == resumed_from + 1


@pytest.mark.slow
def test_ctrl_c_says_how_to_continue(instant_data: tuple[Path, Path], tmp_path: Path) -> None:
    import signal
    import time

    data_root, coco = instant_data
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable, str(REPO_ROOT / "tools" / "train_net.py"),
            "--config-file", str(INSTANT_CONFIG),
            "UWM.DATA_ROOT", str(data_root), "UWM.COCO_DIR", str(coco), "UWM.NUM_FOLDS", "2",
            "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "100000", "TEST.EVAL_PERIOD", "0",
            "UWM.VAL_LOSS_PERIOD", "0",
        ],
        cwd=REPO_ROOT, env=tool_env(OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A test run started in the background (``cmd &`` in a script) ignores SIGINT, and a
        # child inherits that: Python then never raises KeyboardInterrupt and training goes on.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (out / "model_0000002.pth").exists():  # training is under way
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: interrupted; rerun the same command with --resume")
    assert "Traceback" not in stderr


@pytest.mark.parametrize("optimizer", ["SGD", "AdamW"])
def test_every_config_clips_gradients_and_the_optimizer_applies_it(
    instant_data: tuple[Path, Path], tmp_path: Path, optimizer: str
) -> None:
    """A huge gradient is capped per parameter before the step (the remedy for from-scratch runs
    that diverged at a plausible learning rate), with either optimizer."""
    data_root, coco = instant_data
    cfg = build_cfg(
        INSTANT_CONFIG,
        ["UWM.DATA_ROOT", str(data_root), "UWM.COCO_DIR", str(coco), "UWM.NUM_FOLDS", "2",
         "OUTPUT_DIR", str(tmp_path), "UWM.OPTIMIZER", optimizer],
    )  # fmt: skip
    assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED and cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "norm"
    limit = cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE
    layer = torch.nn.Linear(4, 4)
    solver = UWMTrainer.build_optimizer(cfg, layer)
    layer.weight.grad = torch.full_like(layer.weight, 1e6)
    layer.bias.grad = torch.full_like(layer.bias, 1e6)
    solver.step()
    for parameter in layer.parameters():
        assert float(parameter.grad.norm()) == pytest.approx(limit, rel=1e-4)
