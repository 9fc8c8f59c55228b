"""Start the processes of a training run on torch.distributed: NCCL on GPUs, gloo on the CPU.

``tools/train_net.py`` calls :func:`launch` where detectron2's tools call
``detectron2.engine.launch``. Same arguments and the same contract with ``detectron2.utils.comm``
(a world process group, plus ``comm._LOCAL_PROCESS_GROUP`` holding each machine's ranks), but:

* the backend follows ``MODEL.DEVICE`` (the ``device`` argument): NCCL and one GPU per process
  for CUDA, gloo for the CPU, so ``--num-gpus N`` with ``MODEL.DEVICE cpu`` starts N processes
  (detectron2 0.6 asserts CUDA and always uses NCCL);
* one machine needs no ``--dist-url``: a free local port is picked for the run (detectron2's
  default is a fixed port per user, so two runs on one machine collided); a port that another
  process holds is one line saying so (:class:`PortInUseError`), not advice to ``--resume``;
* more processes than GPUs on CUDA, a bad machine rank or ``--dist-url auto`` across machines
  are one-line :class:`~uwm_d2.core.errors.UWMInputError` s, checked before any process starts;
* the process-group timeout is ``$UWM_DIST_TIMEOUT`` seconds (default 30 minutes, detectron2's):
  it bounds how long a process waits for a peer that hangs, and a peer that dies is noticed at
  once (its connections close);
* a failure ends the whole run with one line instead of torch's traceback: a worker killed by a
  signal or a peer that stopped answering raises :class:`DistributedRunError`, and a worker's
  input error (a ``UWMInputError`` such as a diverged loss, a missing file) or out-of-memory
  error is raised again in the launching process, so ``uwm_d2.cli.run_main`` prints it as it
  does for a one-process run. Any other exception keeps its traceback (a bug must show);
* workers start with the launching process's warning filters (a spawned process starts with
  Python's defaults, and the tools' filters for third-party noise would be lost);
* CPU workers share the cores: each gets ``cores // processes`` torch threads unless
  ``OMP_NUM_THREADS`` says otherwise (as ``torchrun`` does).

Why a wrapper here, and a fix-up of the detectron2 build only for ``create_ddp_model``: starting
processes is the project's own policy (backend, timeout, error messages) and replaces one call
in one tool, so it lives here, testable and free to grow. ``create_ddp_model`` however is called
inside ``DefaultTrainer.__init__``, which no project code can reach without copying detectron2's
constructor: ``scripts/build_detectron2.py`` (fix-up 12) passes ``device_ids`` there only for a
CUDA model, since DDP refuses ``device_ids`` for a CPU model.

gloo picks its network interface from the host name; set ``GLOO_SOCKET_IFNAME`` where that
resolves to an address the other machines cannot reach.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import pickle
import re
import signal
import socket
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from uwm_d2.core.errors import (
    INPUT_ERRORS,
    UWMInputError,
    UWMRunError,
    is_out_of_memory,
    one_line,
)

#: Environment variable: the process-group timeout in seconds (collectives and rendezvous).
TIMEOUT_ENV = "UWM_DIST_TIMEOUT"
#: detectron2's default: generous, because rank 0 alone may evaluate or save meanwhile.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)

#: Texts of the RuntimeErrors torch raises when a peer of a collective died or timed out (gloo
#: and NCCL raise plain RuntimeErrors for some of these, not ``torch.distributed.DistError``).
_PEER_LOST_MARKERS = (
    "gloo/transport",  # gloo's socket layer: "Connection reset by peer", "Timed out waiting ..."
    "Connection reset by peer",
    "Connection closed by peer",
    "NCCL communicator was aborted",
)


class DistributedRunError(UWMRunError):
    """A process of a distributed run died or lost its peers: the run stopped (one line)."""


class PortInUseError(UWMInputError):
    """The rendezvous port is taken (another run on this machine, say): one line, no --resume."""


#: How often a run on a port picked here is started again when another process took the port
#: between the moment it was found free and the moment the run's first process bound it.
_AUTO_PORT_ATTEMPTS = 3


def backend_for(device: str) -> str:
    """The torch.distributed backend for ``MODEL.DEVICE``: NCCL for CUDA, gloo otherwise."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def check_num_processes(num_processes: int, device: str) -> None:
    """Raise a one-line ``UWMInputError`` when ``--num-gpus`` cannot run on ``device`` here."""
    if num_processes < 1:
        raise UWMInputError(f"--num-gpus must be at least 1, got {num_processes}")
    if backend_for(device) == "nccl" and num_processes > 1:
        import torch

        available = torch.cuda.device_count()
        if available < num_processes:
            raise UWMInputError(
                f"--num-gpus {num_processes} but this machine has {available} GPUs "
                "(with MODEL.DEVICE cpu, --num-gpus is the number of CPU processes)"
            )


def dist_timeout() -> datetime.timedelta:
    """``$UWM_DIST_TIMEOUT`` seconds, or :data:`DEFAULT_TIMEOUT` when unset."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UWMInputError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {value!r}")
    return datetime.timedelta(seconds=seconds)


def free_local_url() -> str:
    """A ``tcp://127.0.0.1:PORT`` URL on a port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def is_port_in_use(error: BaseException) -> bool:
    """Whether ``error`` says the rendezvous port is already bound by another process."""
    text = str(error)
    return "EADDRINUSE" in text or "address already in use" in text.lower()


def is_peer_lost(error: BaseException) -> bool:
    """Whether ``error`` says another process of the group died, hung or cannot be reached."""
    import torch.distributed as dist

    if isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in _PEER_LOST_MARKERS)


def _comm_reason(error: BaseException) -> str:
    """The gist of a torch.distributed error: no source location, no boilerplate advice."""
    text = re.sub(r"\[[^\]\s]+\.(?:cc|cpp|h):\d+\]\s*", "", one_line(error, 1000))
    text = text.split(". This is typically caused")[0]
    return one_line(text, 160)


def launch(
    main_func: Callable[..., Any],
    num_processes_per_machine: int,
    *,
    device: str,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: Sequence[Any] = (),
    timeout: datetime.timedelta | None = None,
) -> None:
    """Run ``main_func(*args)`` in every process of the run (this machine's share of them).

    Args:
        main_func: a module-level function (spawned processes import it by name).
        num_processes_per_machine: ``--num-gpus``: processes on this machine (one GPU each on
            CUDA).
        device: ``MODEL.DEVICE``; picks the backend (:func:`backend_for`).
        num_machines, machine_rank: the run's machines and this one's index.
        dist_url: rendezvous URL, ``tcp://HOST:PORT`` of machine 0 (it wins when given);
            ``None`` or ``"auto"`` (one machine only) picks a free local port, and picks again
            if another process takes it first.
        args: passed to ``main_func``.
        timeout: process-group timeout; ``None`` reads :func:`dist_timeout`.

    Raises:
        UWMInputError: bad arguments, or a worker's own input error raised again here.
        DistributedRunError: a worker was killed, or lost its peers.
    """
    check_num_processes(num_processes_per_machine, device)
    if num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise UWMInputError(
            f"--machine-rank must be in [0, --num-machines), got {machine_rank} of {num_machines}"
        )
    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        main_func(*args)
        return
    timeout = timeout or dist_timeout()
    spawn = functools.partial(
        _spawn, main_func, args, device, num_processes_per_machine, machine_rank, world_size
    )
    if dist_url and dist_url != "auto":
        spawn(dist_url, timeout)
        return
    if num_machines > 1:
        raise UWMInputError("--dist-url auto works on one machine only; give tcp://HOST:PORT")
    # One machine: a port of our own, so that concurrent runs never meet on a fixed one.
    for attempt in range(_AUTO_PORT_ATTEMPTS):
        try:
            spawn(free_local_url(), timeout)
            return
        except PortInUseError:
            if attempt == _AUTO_PORT_ATTEMPTS - 1:
                raise


def _spawn(
    main_func: Callable[..., Any],
    args: Sequence[Any],
    device: str,
    num_processes_per_machine: int,
    machine_rank: int,
    world_size: int,
    dist_url: str,
    timeout: datetime.timedelta,
) -> None:
    """Start this machine's processes of the run and wait for them (see :func:`launch`)."""
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    with tempfile.TemporaryDirectory(prefix="uwm-launch-") as notes:
        context = mp.start_processes(
            _worker,
            nprocs=num_processes_per_machine,
            args=(
                main_func,
                tuple(args),
                backend_for(device),
                world_size,
                num_processes_per_machine,
                machine_rank,
                dist_url,
                timeout,
                notes,
                list(warnings.filters),
            ),
            join=False,
            start_method="spawn",
        )
        # torch logs "Terminating process ..." for the survivors it stops; our one line says it.
        spawn_logger = logging.getLogger("torch.multiprocessing.spawn")
        level = spawn_logger.level
        spawn_logger.setLevel(logging.ERROR)
        try:
            while not context.join():
                pass
        except ProcessException as failure:
            codes = [process.exitcode for process in context.processes]
            raise _run_error(
                failure, codes, Path(notes), machine_rank, num_processes_per_machine
            ) from None
        finally:
            spawn_logger.setLevel(level)


def _run_error(
    failure: Exception,
    exit_codes: Sequence[int | None],
    notes: Path,
    machine_rank: int,
    per_machine: int,
) -> BaseException:
    """The exception the launching process raises for a failed worker (see the module doc).

    The root cause first: a worker's own error, then a worker killed from outside, and only then
    the "lost contact" that either causes in the others (torch reports whichever process it saw
    exit first, which on a busy machine can be a survivor).
    """
    import torch.multiprocessing as mp

    def stopped(index: int, how: str) -> DistributedRunError:
        rank = machine_rank * per_machine + index
        others = "; stopped the others on this machine" if per_machine > 1 else ""
        return DistributedRunError(
            f"training process {index} (rank {rank}) {how}{others}; continue with --resume from "
            "the last checkpoint"
        )

    noted = _read_notes(notes)
    for index in sorted(noted):
        if not isinstance(noted[index], DistributedRunError):
            return noted[index]
    # Negative exit codes are signals; torch itself stops the survivors with SIGTERM.
    for index, code in enumerate(exit_codes):
        if code is not None and code < 0 and -code != signal.SIGTERM:
            return stopped(index, f"was killed by {_signal_name(-code)}")
    index = failure.error_index  # type: ignore[attr-defined]
    if index in noted:
        return noted[index]
    if isinstance(failure, mp.ProcessExitedException):
        if failure.signal_name:
            return stopped(index, f"was killed by {failure.signal_name}")
        return stopped(index, f"exited with status {failure.exit_code}")
    return failure  # a bug in the worker: its traceback is in the message


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _read_notes(notes: Path) -> dict[int, BaseException]:
    found = {}
    for path in notes.glob("rank*.pkl"):
        try:
            found[int(path.stem[4:])] = pickle.loads(path.read_bytes())
        except Exception:  # a note that cannot be read is no worse than none
            continue
    return found


def _note(notes: str, local_rank: int, error: BaseException) -> None:
    """Leave ``error`` for the launching process (written whole, then renamed into place)."""
    try:
        data = pickle.dumps(error)
        pickle.loads(data)
    except Exception:  # some exceptions pickle but do not unpickle: keep the message
        data = pickle.dumps(UWMInputError(one_line(error, 300)))
    target = Path(notes) / f"rank{local_rank}.pkl"
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(target)


def _worker(
    local_rank: int,
    main_func: Callable[..., Any],
    args: tuple[Any, ...],
    backend: str,
    world_size: int,
    per_machine: int,
    machine_rank: int,
    dist_url: str,
    timeout: datetime.timedelta,
    notes: str,
    warning_filters: list[tuple[Any, ...]],
) -> None:
    """One process of the run: join the group, set the local group, run ``main_func``."""
    for action, message, category, module, lineno in reversed(warning_filters):
        # Entries hold compiled patterns, or plain strings (-W options), or None for "any".
        message, module = (getattr(p, "pattern", p) or "" for p in (message, module))
        warnings.filterwarnings(action, message, category, module, lineno)
    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    rank = machine_rank * per_machine + local_rank
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        # N processes with a thread per core each would oversubscribe the CPU N times.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_machine))
    try:
        dist.init_process_group(
            backend=backend,
            init_method=dist_url,
            world_size=world_size,
            rank=rank,
            timeout=timeout,
        )
        # detectron2's comm.get_local_rank/get_local_size read this group: this machine's ranks.
        for machine in range(world_size // per_machine):
            ranks = list(range(machine * per_machine, (machine + 1) * per_machine))
            group = dist.new_group(ranks, timeout=timeout)
            if machine == machine_rank:
                comm._LOCAL_PROCESS_GROUP = group
        comm.synchronize()
        main_func(*args)
    except INPUT_ERRORS as error:
        _note(notes, local_rank, error)
        raise
    except Exception as error:
        if is_out_of_memory(error):
            _note(notes, local_rank, error)
        elif is_port_in_use(error):
            _note(
                notes,
                local_rank,
                PortInUseError(
                    f"the rendezvous address {dist_url} is already in use (another run on this "
                    "machine?); on one machine leave --dist-url out (a free port is picked), "
                    "across machines give --dist-url tcp://HOST:PORT with a free port"
                ),
            )
        elif is_peer_lost(error):
            _note(
                notes,
                local_rank,
                DistributedRunError(
                    f"rank {rank} of {world_size} lost contact with the run's other processes "
                    f"({_comm_reason(error)}): one of them stopped or hangs (see its output; "
                    f"{TIMEOUT_ENV} bounds the wait); continue with --resume from the last "
                    "checkpoint"
                ),
            )
        raise
    if dist.is_initialized():  # main_func may have ended the group itself
        dist.destroy_process_group()
