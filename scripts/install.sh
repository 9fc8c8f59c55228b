#!/usr/bin/env bash
# One install path for laptops, CI and the Docker image: a virtual environment with torch,
# detectron2 (built by scripts/build_detectron2.py) and uwm_d2 in editable mode with test extras.
# Idempotent: when the stamp matches the install inputs and everything imports, it takes seconds.
#
#   scripts/install.sh [VENV]        VENV defaults to .venv; VENV=system installs into the
#                                     current interpreter (used by the Dockerfile).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)

if [[ "$VENV" == system ]]; then
    PY="$(command -v "$PYTHON")"
    STAMP_DIR=".cache"
else
    if [[ ! -x "$VENV/bin/python" ]]; then
        echo "install: creating virtual environment $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    PY="$VENV/bin/python"
    STAMP_DIR="$VENV"
fi
mkdir -p "$STAMP_DIR"
STAMP="$STAMP_DIR/.uwm-install-stamp"
# Anything that changes what gets installed changes the stamp.
inputs_hash="$(cat setup.py scripts/install.sh scripts/build_detectron2.py | sha256sum | cut -c1-16)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$inputs_hash" ]] \
    && "$PY" -c "import torch, torchvision, detectron2.modeling, uwm_d2" 2>/dev/null; then
    echo "install: up to date ($PY)"
    exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
    echo "install: torch and torchvision (${TORCH_PINS[*]})"
    "$PY" -m pip install --quiet "${TORCH_PINS[@]}"
fi
echo "install: detectron2"
"$PY" scripts/build_detectron2.py
echo "install: uwm_d2 (editable, with test extras)"
"$PY" -m pip install --quiet -e ".[test]"
echo "$inputs_hash" > "$STAMP"
echo "install: done ($PY)"
