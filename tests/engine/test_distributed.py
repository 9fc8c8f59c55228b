"""Distributed training on the CPU (gloo): processes, machines, failures and the sampler's shards.

``tools/train_net.py`` runs as a subprocess on the tiny phantom with the instant-test config made
smaller still (64 px inputs, a checkpoint every iteration, one evaluation at the end). The story,
shared by the tests through module fixtures so that it costs four runs:

1. two "machines" on loopback (two ``train_net.py``, ``--num-machines 2``, one process each)
   train until the first checkpoint, then machine 1's worker is SIGKILLed: both sides must end,
   each with one line, within a bounded time;
2. the run is resumed twice from that same checkpoint, as 2 processes on one machine and again
   as two machines: both continue where it stopped, write from rank 0 only, and end with the
   same weights and score;
3. a 1-process ``--eval-only`` of the final weights gives the distributed evaluation's score.

``uwm_d2.engine.launch`` is also driven directly (a peer that hangs, a worker's input error), and
the ``EmptySliceRatioSampler``'s shards are checked with explicit ranks. Every wait has a timeout,
so a hang fails the test instead of blocking the suite.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("detectron2")

import torch
import torch.distributed as dist
from detectron2.utils import comm
from torch.multiprocessing.spawn import ProcessRaisedException

from uwm_d2.core.errors import UWMInputError
from uwm_d2.data.samplers import EmptySliceRatioSampler
from uwm_d2.engine.launch import (
    TIMEOUT_ENV,
    DistributedRunError,
    PortInUseError,
    _run_error,
    _worker,
    backend_for,
    check_num_processes,
    dist_timeout,
    free_local_url,
    launch,
)

REPO = Path(__file__).resolve().parents[2]
INSTANT = REPO / "configs" / "quick_schedules" / "mask_rcnn_R_18_FPN_instant_test.yaml"
#: Bounds every tool run: far above what one takes, far below a hang.
RUN_TIMEOUT = 240
#: Process-group timeout of the runs (UWM_DIST_TIMEOUT): bounds the wait for a hung peer.
DIST_TIMEOUT = "60"

#: Small and seeded. Score thresholds 0: an untrained model's detections all count, so the
#: score depends on the prediction of every validation slice (none lost, none counted twice).
FAST = [
    "MODEL.DEVICE", "cpu",
    "SEED", "7",
    "UWM.NUM_FOLDS", "2",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "96",
    "SOLVER.CHECKPOINT_PERIOD", "1",
    "TEST.EVAL_PERIOD", "1000",  # evaluate at the end of a run only
    "UWM.VAL_LOSS_PERIOD", "2",
    "UWM.EVAL.SCORE_THRESHOLDS", "(0.0, 0.0, 0.0)",
]  # fmt: skip
#: The resumed runs train this many iterations after the checkpoint they start from.
RESUMED_ITERATIONS = 2


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",  # 2 cores, 2 processes (see tests/engine/conftest.py)
        TIMEOUT_ENV: DIST_TIMEOUT,
    }


def _command(
    data: tuple[Path, Path], out: Path, flags: Sequence[str], opts: Sequence[str] = ()
) -> list[str]:
    data_root, coco = data
    return [
        sys.executable, str(REPO / "tools" / "train_net.py"),
        "--config-file", str(INSTANT), *flags, *FAST, *opts,
        "UWM.DATA_ROOT", str(data_root), "UWM.COCO_DIR", str(coco), "OUTPUT_DIR", str(out),
    ]  # fmt: skip


def _train_net(
    data: tuple[Path, Path], out: Path, flags: Sequence[str], opts: Sequence[str] = ()
) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(data, out, flags, opts),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=RUN_TIMEOUT,
        cwd=REPO,
    )


def _machines(
    data: tuple[Path, Path], out: Path, flags: Sequence[str], opts: Sequence[str]
) -> list[subprocess.Popen]:
    """Two "machines" on loopback, in the background: one ``train_net.py`` and one process
    each; machine ``r`` logs to ``out/../machine{r}.log`` and ``.err``."""
    url = free_local_url()
    machines = []
    for rank in (0, 1):
        log = out.parent / f"{out.name}.machine{rank}.log"
        machine = ["--num-machines", "2", "--machine-rank", str(rank), "--dist-url", url]
        machines.append(
            subprocess.Popen(
                _command(data, out, [*machine, "--num-gpus", "1", *flags], opts),
                stdout=log.open("w"),
                stderr=log.with_suffix(".err").open("w"),
                env=_env(),
                cwd=REPO,
            )
        )
    return machines


def _wait(processes: Sequence[subprocess.Popen], timeout: float = RUN_TIMEOUT) -> list[int]:
    """Exit codes, waiting at most ``timeout`` seconds in all; kill what is left after that."""
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(0.0, deadline - time.monotonic())) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _machine_errors(out: Path) -> list[str]:
    return [(out.parent / f"{out.name}.machine{rank}.err").read_text() for rank in (0, 1)]


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _inferred(log: Path) -> int:
    """Images the last evaluation of a log ran inference on (detectron2's own log line)."""
    lines = [line for line in log.read_text().splitlines() if "Start inference on" in line]
    return int(lines[-1].split("Start inference on ")[1].split()[0])


def _result(out: Path) -> dict[str, Any]:
    return json.loads((out / "inference" / "uwm_results_uwm_val.json").read_text())


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def _spawned_workers(pid: int) -> list[int]:
    """The ``torch.multiprocessing`` workers a ``train_net.py`` process started (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(child)
        for child in children
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


@dataclass(frozen=True)
class Killed:
    """The two-machine run whose machine-1 worker was SIGKILLed after its first checkpoint."""

    out: Path
    codes: list[int]
    errors: list[str]
    start: int  # the iteration a resume starts from


@dataclass(frozen=True)
class Resumed:
    """The killed run resumed on one machine (2 processes) and, separately, on two machines."""

    one_machine: Path
    two_machines: Path
    run: subprocess.CompletedProcess  # the one-machine resume


@pytest.fixture(scope="module")
def killed(instant_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Killed:
    out = tmp_path_factory.mktemp("distributed") / "killed"
    # Long enough never to finish: killed after its first checkpoint.
    machines = _machines(instant_data, out, [], ["SOLVER.MAX_ITER", "1000"])
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (out / "last_checkpoint").exists():
            assert all(m.poll() is None for m in machines), _machine_errors(out)
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.1)
        (worker,) = _spawned_workers(machines[1].pid)
        os.kill(worker, signal.SIGKILL)
    finally:
        # The bound: both sides end well within it (UWM_DIST_TIMEOUT would end a hang).
        codes = _wait(machines, timeout=120)
    last = out / (out / "last_checkpoint").read_text().strip()
    start = torch.load(last, weights_only=False)["iteration"] + 1
    return Killed(out, codes, _machine_errors(out), start)


@pytest.fixture(scope="module")
def resumed(killed: Killed, instant_data: tuple[Path, Path]) -> Resumed:
    one_machine = killed.out.parent / "one_machine"
    two_machines = killed.out.parent / "two_machines"
    for copy in (one_machine, two_machines):
        shutil.copytree(killed.out, copy)
    opts = ["SOLVER.MAX_ITER", str(killed.start + RESUMED_ITERATIONS)]
    run = _train_net(instant_data, one_machine, ["--resume", "--num-gpus", "2"], opts)
    assert run.returncode == 0, run.stderr[-3000:]
    codes = _wait(_machines(instant_data, two_machines, ["--resume"], opts))
    assert codes == [0, 0], [text[-3000:] for text in _machine_errors(two_machines)]
    return Resumed(one_machine, two_machines, run)


# --- the sampler's shards -------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [2, 3])
def test_empty_slice_sampler_shards_partition_the_stream(
    world_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    is_empty = [i % 3 != 0 for i in range(40)]  # 14 annotated, 26 empty

    def stream(rank: int, size: int, count: int) -> list[int]:
        monkeypatch.setattr(comm, "get_rank", lambda: rank)
        monkeypatch.setattr(comm, "get_world_size", lambda: size)
        sampler = EmptySliceRatioSampler(is_empty, 0.3, seed=5)
        iterator = iter(sampler)
        return [next(iterator) for _ in range(count)]

    epoch = EmptySliceRatioSampler(is_empty, 0.3, seed=5).epoch_size  # 14 + 6
    single = stream(0, 1, 3 * epoch)
    per_rank = 3 * epoch // world_size + 1
    shards = [stream(rank, world_size, per_rank) for rank in range(world_size)]
    # Interleaved, the shards are the 1-process stream: every position exactly once.
    merged = [shards[i % world_size][i // world_size] for i in range(3 * epoch)]
    assert merged == single
    # Within one epoch no slice goes to two ranks, and together they cover it.
    first = [set(shard[: epoch // world_size]) for shard in shards]
    assert sum(len(indices) for indices in first) == len(set().union(*first))
    assert set().union(*first) == set(single[: world_size * (epoch // world_size)])


# --- the launcher's checks ------------------------------------------------------------------


def test_num_processes_follow_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert backend_for("cuda:0") == "nccl" and backend_for("cpu") == "gloo"
    check_num_processes(4, "cpu")  # CPU processes: as many as asked
    check_num_processes(1, "cuda")
    with pytest.raises(UWMInputError, match="--num-gpus 2 but this machine has 1 GPUs"):
        check_num_processes(2, "cuda")
    with pytest.raises(UWMInputError, match="--dist-url auto works on one machine only"):
        launch(print, 1, device="cpu", num_machines=2, dist_url="auto")
    with pytest.raises(UWMInputError, match="--machine-rank"):
        launch(print, 1, device="cpu", num_machines=2, machine_rank=2, dist_url="auto")


def test_dist_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert dist_timeout() == datetime.timedelta(minutes=30)
    monkeypatch.setenv(TIMEOUT_ENV, "7.5")
    assert dist_timeout() == datetime.timedelta(seconds=7.5)
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(UWMInputError, match=TIMEOUT_ENV):
        dist_timeout()


# --- the launcher, with tiny workers --------------------------------------------------------

_HUNG_PEER = '''
"""A worker for tests/engine/test_distributed.py (spawned processes import it by name)."""
import time

import torch.distributed as dist


def hung():
    if dist.get_rank() == 1:
        time.sleep(120)  # a peer that stops answering without dying
    dist.barrier()
'''


def test_launch_hung_peer_ends_the_run_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "uwm_hung_peer.py").write_text(_HUNG_PEER)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned processes inherit sys.path
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delitem(sys.modules, "uwm_hung_peer", raising=False)
    import uwm_hung_peer

    # Rank 0's barrier times out after 3 s; the launcher then stops rank 1 (asleep for 120 s).
    with pytest.raises(DistributedRunError, match="rank 0 of 2 lost contact"):
        launch(
            uwm_hung_peer.hung,
            2,
            device="cpu",
            dist_url="auto",
            timeout=datetime.timedelta(seconds=3),
        )


def _bad_input(message: str) -> None:
    raise UWMInputError(message)


def test_a_workers_input_error_is_raised_again_by_the_launcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both halves in this process: the worker (a world of one) leaves its error behind, the
    launching side raises that very error, so ``run_main`` prints it as one line."""
    monkeypatch.setattr(comm, "_LOCAL_PROCESS_GROUP", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    timeout = datetime.timedelta(seconds=30)
    try:
        with pytest.raises(UWMInputError, match=r"^bad slice$"):
            _worker(
                0, _bad_input, ("bad slice",), "gloo", 1, 1, 0, free_local_url(), timeout,
                str(tmp_path), [],
            )  # fmt: skip
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    failure = ProcessRaisedException("traceback text", 0, os.getpid())
    error = _run_error(failure, [1], tmp_path, machine_rank=0, per_machine=1)
    assert type(error) is UWMInputError and str(error) == "bad slice"


@pytest.fixture
def held_port() -> Iterator[int]:
    """A local port another process holds (listening), as a concurrent run's rendezvous does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.slow
def test_a_rendezvous_port_in_use_is_one_line_that_does_not_advise_resume(
    held_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    url = f"tcp://127.0.0.1:{held_port}"
    with pytest.raises(PortInUseError) as raised:
        launch(print, 2, device="cpu", dist_url=url, timeout=datetime.timedelta(seconds=30))
    message = str(raised.value)
    assert f"{url} is already in use" in message and "\n" not in message
    assert "--resume" not in message


@pytest.mark.slow
def test_a_picked_port_taken_by_another_process_is_picked_again(
    held_port: int, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The port found free is taken before the run binds it: the run starts again on another."""
    import uwm_d2.engine.launch as launch_module

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    picked = iter([f"tcp://127.0.0.1:{held_port}"])
    real = launch_module.free_local_url
    monkeypatch.setattr(launch_module, "free_local_url", lambda: next(picked, None) or real())
    launch(print, 2, device="cpu", args=("worker ran",), timeout=datetime.timedelta(seconds=30))
    assert capfd.readouterr().out.count("worker ran") == 2
    assert next(picked, None) is None  # the held port was tried first


@pytest.mark.slow
def test_two_runs_on_one_machine_at_once_both_finish(
    instant_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """No fixed rendezvous port: two 2-process runs side by side (two users, two terminals)."""
    opts = ["SOLVER.MAX_ITER", "2", "UWM.VAL_LOSS_PERIOD", "0"]
    runs = [
        subprocess.Popen(
            _command(instant_data, tmp_path / name, ["--num-gpus", "2"], opts),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            cwd=REPO,
        )
        for name in ("first", "second")
    ]
    errors = [run.communicate(timeout=RUN_TIMEOUT)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [text[-2000:] for text in errors]
    for name in ("first", "second"):
        assert (tmp_path / name / "model_final.pth").is_file()


# --- train_net.py ---------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_worker_ends_both_machines_with_one_line(killed: Killed) -> None:
    assert killed.codes[0] != 0 and killed.codes[1] != 0
    assert "Traceback" not in killed.errors[0] + killed.errors[1]
    # The machine whose worker died says so; the other one lost its peer.
    assert _last_line(killed.errors[1]).startswith(
        "error: training process 0 (rank 1) was killed by SIGKILL"
    )
    assert _last_line(killed.errors[0]).startswith("error: rank 0 of 2 lost contact")


@pytest.mark.slow
def test_resume_of_a_two_process_run_continues_where_it_stopped(
    killed: Killed, resumed: Resumed
) -> None:
    out, last = resumed.one_machine, killed.start + RESUMED_ITERATIONS - 1
    assert f"Starting training from iteration {killed.start}" in (out / "log.txt").read_text()
    rows = _rows(out / "metrics.json")
    iterations = [row["iteration"] for row in rows]
    assert len(iterations) == len(set(iterations))  # one writer, and no row of the killed run
    assert max(row["iteration"] for row in rows if "total_loss" in row) == last
    assert any("validation_loss" in row for row in rows)  # gathered over both ranks
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == last


@pytest.mark.slow
def test_only_rank_zero_writes(resumed: Resumed) -> None:
    for out in (resumed.one_machine, resumed.two_machines):
        for name in ("model_final.pth", "model_best.pth", "metrics.json", "log.txt.rank1"):
            assert (out / name).is_file(), name
        main_log = (out / "log.txt").read_text()
        rank1_log = (out / "log.txt.rank1").read_text()
        assert "Saving checkpoint to" in main_log and "Saving checkpoint to" not in rank1_log
        assert "model_best" in main_log and "model_best" not in rank1_log
        assert "Starting training from iteration" in rank1_log  # rank 1 did train
    assert "Traceback" not in resumed.run.stderr


@pytest.mark.slow
def test_two_machines_and_two_processes_agree(resumed: Resumed) -> None:
    # Same checkpoint, same seed, same ranks: the same training, to the last bit.
    one = torch.load(resumed.one_machine / "model_final.pth", weights_only=False)["model"]
    two = torch.load(resumed.two_machines / "model_final.pth", weights_only=False)["model"]
    assert one.keys() == two.keys()
    assert all(torch.equal(one[key], two[key]) for key in one)
    assert _result(resumed.one_machine)["score"] == _result(resumed.two_machines)["score"]


@pytest.mark.slow
def test_distributed_score_equals_one_process_eval_only(
    resumed: Resumed, instant_data: tuple[Path, Path], tmp_path: Path
) -> None:
    out = resumed.one_machine
    single = tmp_path / "eval_only"
    weights = ["MODEL.WEIGHTS", str(out / "model_final.pth")]
    run = _train_net(instant_data, single, ["--eval-only"], weights)
    assert run.returncode == 0, run.stderr[-3000:]
    # Each rank inferred its own share; together exactly the slices of the 1-process run.
    shares = _inferred(out / "log.txt"), _inferred(out / "log.txt.rank1")
    assert min(shares) > 0 and sum(shares) == _inferred(single / "log.txt")
    distributed, alone = _result(out), _result(single)
    assert distributed["num_slices"] == alone["num_slices"] == sum(shares)
    assert distributed["score"] == pytest.approx(alone["score"], abs=1e-9)
    final = [row for row in _rows(out / "metrics.json") if "uwm/score" in row][-1]
    assert final["uwm/score"] == pytest.approx(alone["score"], abs=1e-9)
    assert "no prediction" not in (out / "log.txt").read_text()
