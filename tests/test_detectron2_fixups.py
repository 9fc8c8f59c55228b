"""The fix-ups of ``scripts/build_detectron2.py`` that detectron2 v0.6's own test suite pointed at.

Each test fails on the unpatched v0.6 sources and passes with the fix-up:

* ``detectron2.export`` imports without caffe2, and its TorchScript helpers work (detectron2's
  ROI-heads, RPN and ``Instances`` tests script and trace through them);
* ``MapDataset`` recovers when its mapper returns ``None`` (Python 3.11 refuses
  ``random.sample`` of a set);
* the ``LRScheduler`` hook checkpoints torch's own schedulers (which no longer derive from
  ``_LRScheduler``);
* ``create_ddp_model`` wraps a CPU model for a gloo group (no ``device_ids``), which the
  distributed CPU runs of ``tests/engine/test_distributed.py`` rely on.
"""

from __future__ import annotations

import datetime
import socket

import pytest

pytest.importorskip("detectron2")

import torch
from detectron2.structures import Boxes, Instances

# torch marks TorchScript as deprecated and warns about what tracing turns into constants (the
# test checks the results); torch 2.14 also deprecates DDP's broadcast_buffers, which v0.6 passes.
pytestmark = [
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore:`broadcast_buffers` is deprecated:FutureWarning"),
]


def _instances() -> Instances:
    boxes = Boxes(torch.tensor([[0.0, 0.0, 4.0, 2.0], [1.0, 1.0, 2.0, 5.0], [0.0, 0.0, 1.0, 1.0]]))
    return Instances((8, 8), pred_boxes=boxes, scores=torch.tensor([0.9, 0.2, 0.7]))


class _ConfidentArea(torch.nn.Module):
    """A small module that reads ``Instances`` fields, as detectron2's heads do."""

    def forward(self, instances: Instances) -> torch.Tensor:
        keep = instances.scores > 0.5
        return instances.pred_boxes.area()[keep]


def test_export_imports_without_caffe2_and_scripts_instances() -> None:
    import detectron2.export
    from detectron2.export.torchscript_patch import patch_instances

    assert callable(detectron2.export.scripting_with_instances)
    model = _ConfidentArea().eval()
    with patch_instances({"pred_boxes": Boxes, "scores": torch.Tensor}) as scripted_instances:
        scripted = torch.jit.script(model)
        result = scripted(scripted_instances.from_instances(_instances()))
    torch.testing.assert_close(result, torch.tensor([8.0, 1.0]))


def test_export_traces_a_module_returning_instances() -> None:
    from detectron2.export import TracingAdapter

    class Detect(torch.nn.Module):
        def forward(self, image: torch.Tensor) -> Instances:
            boxes = torch.stack([image.amin(dim=(1, 2)), image.amax(dim=(1, 2))], 1).repeat(1, 2)
            return Instances((8, 8), pred_boxes=Boxes(boxes), scores=image.mean(dim=(1, 2)))

    image = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 8, 8)
    adapter = TracingAdapter(Detect(), image)
    traced = torch.jit.trace(adapter, adapter.flattened_inputs)
    outputs = adapter.outputs_schema(traced(*adapter.flattened_inputs))
    expected = Detect()(image)
    assert isinstance(outputs, Instances)
    torch.testing.assert_close(outputs.pred_boxes.tensor, expected.pred_boxes.tensor)
    torch.testing.assert_close(outputs.scores, expected.scores)


def test_map_dataset_recovers_when_the_mapper_returns_none() -> None:
    from detectron2.data.common import DatasetFromList, MapDataset

    failed: list[int] = []

    def mapper(item: int) -> int | None:
        if item == 3 and not failed:  # the first time only, as a flaky read would
            failed.append(item)
            return None
        return item * 10

    dataset = MapDataset(DatasetFromList(list(range(6)), copy=False), mapper)
    value = dataset[3]
    assert failed == [3]
    assert value in {0, 10, 20, 40, 50}  # another element, drawn from the ones still possible
    assert dataset[3] == 30  # the index is not banned for good


@pytest.mark.parametrize("kind", ["StepLR", "MultiStepLR"])
def test_lr_scheduler_hook_checkpoints_torch_schedulers(kind: str) -> None:
    from detectron2.engine.hooks import LRScheduler

    def make() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        if kind == "StepLR":
            return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, [1, 3], gamma=0.1)

    optimizer, scheduler = make()
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    state = LRScheduler(optimizer, scheduler).state_dict()
    assert state["last_epoch"] == 3

    # A resume: the checkpointer restores the optimizer (its current lr) and the hook's state.
    fresh_optimizer, fresh = make()
    fresh_optimizer.load_state_dict(optimizer.state_dict())
    LRScheduler(fresh_optimizer, fresh).load_state_dict(state)
    assert fresh.last_epoch == 3
    assert fresh.get_last_lr() == pytest.approx(scheduler.get_last_lr())
    for _ in range(2):  # and the schedule goes on as if never interrupted
        for opt, sched in ((fresh_optimizer, fresh), (optimizer, scheduler)):
            opt.step()
            sched.step()
        assert fresh.get_last_lr() == pytest.approx(scheduler.get_last_lr())


def test_create_ddp_model_wraps_a_cpu_model_on_gloo(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist
    from detectron2.engine.defaults import create_ddp_model
    from detectron2.utils import comm

    with socket.socket() as sock:  # a free port for this one-process group
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        world_size=1,
        rank=0,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        # create_ddp_model returns the bare model to a world of one: look like one of two
        # processes started by a launcher (which sets the local group).
        monkeypatch.setattr(comm, "get_world_size", lambda: 2)
        monkeypatch.setattr(comm, "_LOCAL_PROCESS_GROUP", dist.group.WORLD)
        ddp = create_ddp_model(torch.nn.Linear(2, 1), broadcast_buffers=False)
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
        assert ddp.device_ids is None
        ddp(torch.ones(3, 2)).sum().backward()  # gradients go through the gloo all-reduce
        torch.testing.assert_close(ddp.module.bias.grad, torch.tensor([3.0]))
    finally:
        dist.destroy_process_group()
