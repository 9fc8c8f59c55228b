"""``uwm_d2.cli``: every way a tool can end is one quiet line at most, with its status; every
tool's parser is built one way.

Input errors exit 2, GPU out-of-memory 3, an interrupt 130, a closed output pipe 0 with nothing on
stderr; a programming error keeps its traceback. The parser helpers take ``--help`` from the
docstring, give the model arguments one spelling, and refuse a flag after the overrides.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from uwm_d2.cli import add_model_arguments, parse_tool_args, run_main, tool_parser
from uwm_d2.core.errors import UWMInputError

from .conftest import REPO_ROOT, tool_env


def _run(main: Callable[[], int | None], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    # run_main installs warning filters; catch_warnings keeps them local to the test.
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exited:
        run_main(main)
    return exited.value.code, capsys.readouterr().err


def _raises(error: BaseException) -> Callable[[], None]:
    def main() -> None:
        raise error

    return main


class OutOfMemoryError(RuntimeError):
    """Named like ``torch.cuda.OutOfMemoryError``, which run_main recognises without torch."""


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError(
            "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total capacity;\n"
            "13.1 GiB already allocated)"
        ),
        OutOfMemoryError("CUDA error: out of memory"),
    ],
)
def test_out_of_gpu_memory_is_one_line_and_status_3(
    error: BaseException, capsys: pytest.CaptureFixture[str]
) -> None:
    status, stderr = _run(_raises(error), capsys)
    assert status == 3
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: out of GPU memory")
    assert "IMS_PER_BATCH" in lines[0] and "--batch-size" in lines[0]


def test_input_error_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, stderr = _run(_raises(UWMInputError("bad row case1_day1_slice_0001\nsecond")), capsys)
    assert status == 2
    assert stderr == "error: bad row case1_day1_slice_0001 second\n"


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError(2, "No such file or directory", "missing.csv"),
        PermissionError(13, "Permission denied", "locked.csv"),
        NotADirectoryError(20, "Not a directory", "a_file/out"),
    ],
)
def test_path_errors_are_input_errors(error: OSError, capsys: pytest.CaptureFixture[str]) -> None:
    status, stderr = _run(_raises(error), capsys)
    assert status == 2
    assert stderr.count("\n") == 1 and error.filename in stderr


def test_interrupt_is_status_130(capsys: pytest.CaptureFixture[str]) -> None:
    status, stderr = _run(_raises(KeyboardInterrupt()), capsys)
    assert status == 130 and stderr == "error: interrupted\n"


def test_a_programming_error_keeps_its_traceback() -> None:
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="index out of range"):
        run_main(_raises(RuntimeError("index out of range")))
    with warnings.catch_warnings(), pytest.raises(ZeroDivisionError):
        run_main(lambda: 1 // 0)


def test_success_returns_the_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(lambda: None, capsys) == (0, "")
    assert _run(lambda: 4, capsys) == (4, "")


def test_third_party_import_noise_is_silenced_but_other_warnings_are_not(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def main() -> None:
        warnings.warn(
            "`torch.jit.script` is deprecated. Please switch to `torch.compile`.",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn("your own deprecation", FutureWarning, stacklevel=1)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit):
            run_main(main)
    assert [str(warning.message) for warning in caught] == ["your own deprecation"]


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """``tool | head -1``: the tool stops at the broken pipe with status 0 and no stderr noise
    (Python would otherwise print 'Exception ignored ... BrokenPipeError' at exit)."""
    script = tmp_path / "chatty.py"
    script.write_text(
        textwrap.dedent(
            """
            from uwm_d2.cli import run_main

            def main():
                for number in range(10_000_000):
                    print(f"line {number}")

            run_main(main)
            """
        )
    )
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=REPO_ROOT,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout.readline() == b"line 0\n"
    process.stdout.close()  # the reader goes away
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 0
    assert stderr == b""


def test_a_failed_run_on_good_input_is_one_line_and_status_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A diverged training run is not bad input: status 1, not 2, so scripts can tell them apart."""
    from uwm_d2.core.errors import TrainingDivergedError

    def main() -> None:
        raise TrainingDivergedError("training diverged at iteration 35 (loss is NaN); ...")

    with pytest.raises(SystemExit) as caught:
        run_main(main)
    assert caught.value.code == 1
    assert capsys.readouterr().err == (
        "error: training diverged at iteration 35 (loss is NaN); ...\n"
    )


DOC = """Do one thing to a data root.

More about it.

Examples:
  python tools/thing.py --out x
"""


def test_tool_parser_takes_its_help_from_the_docstring(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = tool_parser(DOC)
    parser.add_argument("--out")
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "Do one thing to a data root.\n" in text
    assert text.rstrip().endswith("More about it.\n\nExamples:\n  python tools/thing.py --out x")
    with pytest.raises(ValueError, match="Examples:"):
        tool_parser("Do one thing.\n\nNo examples here.")


def _model_parser(**keywords: bool) -> argparse.ArgumentParser:
    parser = tool_parser(DOC)
    parser.add_argument("--out")
    add_model_arguments(parser, **keywords)
    return parser


def test_model_arguments_and_their_overrides() -> None:
    args = parse_tool_args(
        _model_parser(),
        ["--config-file", "c.yaml", "--tta", "--batch-size", "4", "--out", "x", "A.B", "1"],
    )
    assert (args.config_file, args.ensemble, args.tta, args.batch_size) == ("c.yaml", None, True, 4)
    assert (args.out, args.opts) == ("x", ["A.B", "1"])
    args = parse_tool_args(_model_parser(), ["--ensemble", "e.yaml"])
    assert (str(args.ensemble), args.config_file, args.opts) == ("e.yaml", None, [])
    plain = parse_tool_args(_model_parser(ensemble=False, inference=False), ["--config-file", "c"])
    assert not hasattr(plain, "ensemble") and not hasattr(plain, "tta")


@pytest.mark.parametrize(
    "argv", [[], ["--config-file", "c.yaml", "--ensemble", "e.yaml"]], ids=["none", "both"]
)
def test_exactly_one_model_source(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_tool_args(_model_parser(), argv)
    assert exited.value.code == 2
    assert "--config-file" in capsys.readouterr().err


def test_a_flag_after_the_overrides_is_named() -> None:
    argv = ["--config-file", "c.yaml", "MODEL.WEIGHTS", "w.pth", "--tta"]
    with pytest.raises(UWMInputError, match="flag --tta comes after the KEY VALUE overrides"):
        parse_tool_args(_model_parser(), argv)
