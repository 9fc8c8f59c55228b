"""The README's by-hand quick start cannot rot: every command of it is a tool's --help example.

The block between ``<!-- quickstart -->`` and ``<!-- /quickstart -->`` is split into commands
(continuation lines joined); each ``python tools/...`` command must be, word for word, one of that
tool's ``Examples:``. ``tests/tools/test_examples.py`` runs every example of every tool, in order,
and checks what they hand each other, so the quick start runs as written wherever that test
passes.
"""

from __future__ import annotations

import re

from .conftest import REPO_ROOT
from .tools.test_examples import examples


def quickstart_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    match = re.search(r"<!-- quickstart -->\s*```bash\n(.*?)```\s*<!-- /quickstart -->", text, re.S)
    assert match, "README.md has no quick-start block between <!-- quickstart --> markers"
    joined = re.sub(r"\\\n\s*", "", match.group(1))
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("python ")]


def _words(command: str) -> list[str]:
    return command.split()


def test_every_quick_start_command_is_a_help_example() -> None:
    commands = quickstart_commands()
    assert len(commands) >= 10
    for command in commands:
        tool = re.match(r"python tools/(\w+)\.py", command)
        assert tool, command
        known = [_words(example) for example in examples(tool.group(1))]
        assert _words(command) in known, f"not an example of {tool.group(1)}: {command}"


def test_the_quick_start_runs_each_tool_after_what_it_needs() -> None:
    """Each command reads only what an earlier command of the block wrote (or the configs)."""
    written: set[str] = set()
    for command in quickstart_commands():
        words = _words(command)
        for flag in ("--data-root", "--truth", "--pred", "--ensemble", "--exported", "--metrics"):
            if flag in words:
                path = words[words.index(flag) + 1]
                assert any(path.startswith(w) or w.startswith(path) for w in written), (
                    f"{command}: {flag} {path} is written by no earlier command"
                )
        for flag in ("--out", "OUTPUT_DIR", "--save-probabilities", "--volumes"):
            if flag in words:
                written.add(words[words.index(flag) + 1])
        if ">" in words:
            written.add(words[words.index(">") + 1])
        if "OUTPUT_DIR" in words:
            folder = words[words.index("OUTPUT_DIR") + 1]
            written.update({f"{folder}/model_best.pth", f"{folder}/metrics.json"})
