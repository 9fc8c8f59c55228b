#!/usr/bin/env bash
# One install path for laptops, CI and the Docker image: a virtual environment with torch,
# detectron2 (built by scripts/build_detectron2.py) and uwm_d2 in editable mode with the train,
# export and test extras.
# Idempotent: when the stamp matches the install inputs and everything imports, it takes seconds
# and changes nothing.
#
#   scripts/install.sh [VENV]          VENV defaults to .venv; VENV=system installs into the
#                                      current interpreter.
#   scripts/install.sh --check [VENV]  exit 0 if VENV is up to date, 1 if not; changes nothing.
#
# Output: one line per step with its duration, a progress line every 15 s while a step runs, and
# pip's own warnings. The one warning this build machine's pip configuration prints for every
# package ("Location 'file:///opt/pypi/...' is ignored") is dropped. When a step fails, its whole
# output is shown, unfiltered. Sourcing this file only defines the functions (for the tests).
set -euo pipefail

PIP_NOISE_RE="^WARNING: Location 'file:[^']*' is ignored: it is neither a file nor a directory\.$"
HEARTBEAT_S="${UWM_INSTALL_HEARTBEAT_S:-15}"

# stdin to stdout without the one pip warning above; every other line, warnings and errors
# included, passes. (grep exits 1 when it prints nothing, which is fine here.)
filter_pip_noise() {
    grep -v -E -e "$PIP_NOISE_RE" || [[ $? == 1 ]]
}

human_duration() {
    local seconds="$1"
    if ((seconds >= 60)); then
        printf '%d min %d s' $((seconds / 60)) $((seconds % 60))
    else
        printf '%d s' "$seconds"
    fi
}

# run_step LABEL COMMAND...: run COMMAND with its output kept aside; print LABEL, a progress line
# every HEARTBEAT_S seconds, then what the command printed (filtered) and the step's duration.
# On failure, the command's whole output and its exit status.
run_step() {
    local label="$1"
    shift
    local log start pid status=0 next
    log="$(mktemp)"
    start=$SECONDS
    next=$HEARTBEAT_S
    echo "install: $label ..."
    "$@" >"$log" 2>&1 &
    pid=$!
    # A background command ignores Ctrl-C in a script: stop it ourselves rather than orphan it.
    trap 'kill "$pid" 2>/dev/null; rm -f "$log"; exit 130' INT TERM
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        if ((SECONDS - start >= next)) && kill -0 "$pid" 2>/dev/null; then
            echo "install:   ... $(human_duration $((SECONDS - start)))"
            next=$((next + HEARTBEAT_S))
        fi
    done
    wait "$pid" || status=$?
    trap - INT TERM
    if ((status != 0)); then
        echo "install: FAILED after $(human_duration $((SECONDS - start))): $label (exit $status)."
        echo "install: the command was: $*"
        echo "install: its whole output:"
        cat "$log"
        rm -f "$log"
        return "$status"
    fi
    filter_pip_noise <"$log" | sed -e '/^[[:space:]]*$/d' -e 's/^/install:   /'
    rm -f "$log"
    echo "install:   done in $(human_duration $((SECONDS - start)))"
}

# Everything below runs only when executed, not when sourced.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    return 0
fi

cd "$(dirname "$0")/.."
CHECK_ONLY=0
if [[ "${1:-}" == --check ]]; then
    CHECK_ONLY=1
    shift
fi
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
STARTED=$SECONDS

if [[ "$VENV" == system ]]; then
    PY="$(command -v "$PYTHON")"
    STAMP_DIR=".cache"
else
    PY="$VENV/bin/python"
    STAMP_DIR="$VENV"
fi
STAMP="$STAMP_DIR/.uwm-install-stamp"
# Anything that changes what gets installed changes the stamp.
inputs_hash="$(cat setup.py scripts/install.sh scripts/build_detectron2.py | sha256sum | cut -c1-16)"

up_to_date() {
    # No bytecode written: checking must leave the environment exactly as it was.
    [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$inputs_hash" ]] \
        && PYTHONDONTWRITEBYTECODE=1 "$PY" -c \
            "import torch, torchvision, detectron2.modeling, onnx, onnxruntime, uwm_d2" \
            >/dev/null 2>&1
}

if up_to_date; then
    echo "install: up to date ($PY; checked in $(human_duration $((SECONDS - STARTED))))"
    exit 0
fi
if ((CHECK_ONLY)); then
    echo "install: not up to date ($PY)"
    exit 1
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
if [[ "$VENV" != system && ! -x "$VENV/bin/python" ]]; then
    run_step "creating the virtual environment $VENV ($("$PYTHON" --version 2>&1))" \
        "$PYTHON" -m venv "$VENV"
fi
mkdir -p "$STAMP_DIR"
if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
    run_step "${TORCH_PINS[*]} (about 5.5 GB; a minute or two)" \
        "$PY" -m pip install --quiet "${TORCH_PINS[@]}"
fi
run_step "detectron2 (the patched wheel, built once into .cache/wheels)" \
    "$PY" scripts/build_detectron2.py --quiet
run_step "uwm_d2 (editable, with the train, export and test extras) and its dependencies" \
    "$PY" -m pip install --quiet -e ".[train,export,test]"
echo "$inputs_hash" >"$STAMP"
echo "install: done in $(human_duration $((SECONDS - STARTED))) ($PY)"
