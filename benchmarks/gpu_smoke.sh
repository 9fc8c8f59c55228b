#!/usr/bin/env bash
# GPU readiness in one command: install uwm_d2 and the patched detectron2 from a wheel folder onto
# a machine's own torch, make phantom data, then measure on CUDA (benchmarks/gpu_smoke.py):
#   (a) the instant config with AMP, 20 iterations;
#   (b) R50-FPN GN from scratch at 384 px, AMP, 50 iterations: img/s and peak GPU memory;
#   (c) infer_submit's slices/s (plain, flip TTA, and the tool end to end);
#   (d) the semantic demo config on CUDA, 20 iterations;
# and print ONE table at the end (also written to OUT/table.md). Made to fit one 10-minute run.
#
#   benchmarks/gpu_smoke.sh [--wheels DIR] [--python PY] [--venv DIR] [--out DIR]
#                           [--work DIR] [--torch-site DIR] [--budget SECONDS] [--install-only]
#
#   --wheels DIR      wheel folder (default: wheelhouse-cpXY for PY's version if present, else
#                     wheelhouse); build it here with `make wheelhouse PYTHON_VERSION=3.12
#                     LEAVE_OUT=gpu-image` and carry it to the GPU machine
#   --python PY       the interpreter whose torch is used (default: python3)
#   --venv DIR        the virtual environment to install into (default: /tmp/uwm_d2-gpu-venv);
#                     it sees PY's packages through a .pth file, so torch is not reinstalled
#   --torch-site DIR  the folder holding torch (default: where PY's torch lives)
#   --out DIR         results.jsonl, table.md and the logs, 5 files (default: /tmp/uwm_d2-gpu-smoke)
#   --work DIR        phantom data and training outputs (default: /tmp/uwm_d2-gpu-smoke-work)
#   --budget SECONDS  stop measuring in time to print the table within this (default: 540)
#   --install-only    only the install step (needs no GPU; the tests run it on the CPU)
#
# Without a CUDA device it stops at once with one line and exit status 2 (--install-only aside).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="python3"
WHEELS=""
VENV="/tmp/uwm_d2-gpu-venv"
TORCH_SITE=""
OUT_DIR="/tmp/uwm_d2-gpu-smoke"
WORK_DIR="/tmp/uwm_d2-gpu-smoke-work"
BUDGET=540
INSTALL_ONLY=0
STARTED=$SECONDS

say() { echo "gpu_smoke: $*" >&2; }
die() {
    echo "error: $*" >&2
    exit 2
}

while (($#)); do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        --venv) VENV="$2"; shift 2 ;;
        --torch-site) TORCH_SITE="$2"; shift 2 ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        --work) WORK_DIR="$2"; shift 2 ;;
        --budget) BUDGET="$2"; shift 2 ;;
        --install-only) INSTALL_ONLY=1; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

command -v "$PYTHON" >/dev/null || die "no interpreter $PYTHON (--python)"
# One probe: Python version, torch version, CUDA, where torch lives (through --torch-site if given).
probe_env=()
[[ -z "$TORCH_SITE" ]] || probe_env=(PYTHONPATH="$TORCH_SITE")
probe="$(env "${probe_env[@]}" "$PYTHON" - <<'PYTHON'
import os, sys
try:
    import torch
except Exception as error:
    print(f"{sys.version_info[0]}.{sys.version_info[1]} none none -", type(error).__name__, error)
    raise SystemExit
cuda = "yes" if torch.cuda.is_available() else "no"
site = os.path.dirname(os.path.dirname(torch.__file__))
print(f"{sys.version_info[0]}.{sys.version_info[1]} {torch.__version__} {cuda} {site}")
PYTHON
)" || die "$PYTHON failed to start"
read -r PY_VERSION TORCH_VERSION HAS_CUDA PROBED_SITE _ <<<"$probe"
[[ "$TORCH_VERSION" != none ]] || die "$PYTHON has no importable torch (${probe#* * * * }); \
gpu_smoke installs onto an existing torch"
if ((!INSTALL_ONLY)) && [[ "$HAS_CUDA" != yes ]]; then
    die "no CUDA device: torch $TORCH_VERSION in $PROBED_SITE sees none \
(torch.cuda.is_available() is False). Run this on a GPU machine; --install-only checks the install \
step anywhere."
fi
TORCH_SITE="${TORCH_SITE:-$PROBED_SITE}"
if [[ -z "$WHEELS" ]]; then
    WHEELS="$REPO_ROOT/wheelhouse-cp${PY_VERSION/./}"
    [[ -d "$WHEELS" ]] || WHEELS="$REPO_ROOT/wheelhouse"
fi
compgen -G "$WHEELS/*.whl" >/dev/null || die "no wheels in $WHEELS: build them with \
\`make wheelhouse PYTHON_VERSION=$PY_VERSION LEAVE_OUT=gpu-image\` (or pass --wheels)"
mkdir -p "$OUT_DIR"
# Absolute paths, then work from OUT_DIR: Python puts the current folder on sys.path for -c and
# stdin, and this checkout's uwm_d2 must never stand in for the installed one.
WHEELS="$(realpath "$WHEELS")"
VENV="$(realpath -m "$VENV")"
TORCH_SITE="$(realpath "$TORCH_SITE")"
OUT_DIR="$(realpath "$OUT_DIR")"
WORK_DIR="$(realpath -m "$WORK_DIR")"
cd "$OUT_DIR"
RESULTS="$OUT_DIR/results.jsonl"

# The install step: a virtual environment that sees TORCH_SITE through a .pth file (pip counts
# what is there as installed and, it being outside the environment, never uninstalls from it),
# then `pip install --no-index --find-links WHEELS "uwm_d2[detectron2]"` with pip's own
# configuration switched off, so nothing but the wheel folder can be used.
install_step() {
    local stamp log site_packages
    stamp="$(cd "$WHEELS" && stat -c '%n %s' -- *.whl | sha256sum | cut -c1-16) $TORCH_SITE"
    if [[ -f "$VENV/.uwm-smoke-stamp" && "$(cat "$VENV/.uwm-smoke-stamp")" == "$stamp" ]] \
        && "$VENV/bin/python" -c "import torch, detectron2.modeling, uwm_d2" 2>/dev/null; then
        say "install: $VENV is up to date with $WHEELS"
        return 0
    fi
    if [[ -e "$VENV" ]]; then
        [[ -f "$VENV/pyvenv.cfg" ]] || die "$VENV exists and is not a virtual environment"
        rm -rf "$VENV"
    fi
    log="$OUT_DIR/install.log"
    # No ensurepip in some system Pythons: then the environment borrows pip from TORCH_SITE.
    "$PYTHON" -m venv "$VENV" >"$log" 2>&1 \
        || { rm -rf "$VENV" && "$PYTHON" -m venv --without-pip "$VENV" >>"$log" 2>&1; } \
        || { cat "$log" >&2; die "could not create the virtual environment $VENV"; }
    site_packages="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    # addsitedir, not a bare path: .pth files in TORCH_SITE are processed too, as they are there.
    "$VENV/bin/python" -c 'import sys; print(f"import site; site.addsitedir({sys.argv[1]!r})")' \
        "$TORCH_SITE" >"$site_packages/_uwm_d2_torch_site.pth"
    # Python 3.11's ensurepip also puts an old setuptools (65) into the environment, which would
    # shadow the one beside torch (torch 2.14 requires setuptools >= 77): use that one.
    if compgen -G "$TORCH_SITE/setuptools-*.dist-info" >/dev/null \
        && compgen -G "$site_packages/setuptools-*.dist-info" >/dev/null; then
        "$VENV/bin/python" -m pip uninstall --yes --quiet setuptools >>"$log" 2>&1
    fi
    say "install: pip install --no-index --find-links $WHEELS \"uwm_d2[detectron2]\""
    if ! env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT \
        PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$VENV/bin/python" -m pip install --no-index --find-links "$WHEELS" --no-compile \
        --quiet "uwm_d2[detectron2]" >>"$log" 2>&1; then
        cat "$log" >&2
        die "installing from $WHEELS failed (pip's output above)"
    fi
    "$VENV/bin/python" - <<'PYTHON' >&2 || die "the installed packages do not import"
import detectron2, detectron2.modeling, torch, uwm_d2
print(f"gpu_smoke: install: torch {torch.__version__} from {torch.__file__.rsplit('/', 2)[0]}")
print(f"gpu_smoke: install: detectron2 from {detectron2.__file__.rsplit('/', 2)[0]}")
print(f"gpu_smoke: install: uwm_d2 from {uwm_d2.__file__.rsplit('/', 2)[0]}")
PYTHON
    echo "$stamp" >"$VENV/.uwm-smoke-stamp"
}

step_started=$SECONDS
install_step
install_s=$((SECONDS - step_started))
if ((INSTALL_ONLY)); then
    say "install-only: done in ${install_s} s ($VENV)"
    exit 0
fi
PY="$VENV/bin/python"
SMOKE=("$PY" "$REPO_ROOT/benchmarks/gpu_smoke.py")
rm -f "$RESULTS" "$OUT_DIR/gpu_smoke.log" "$OUT_DIR/table.md"
"${SMOKE[@]}" record "$RESULTS" install "$install_s" \
    "$(find "$WHEELS" -name '*.whl' | wc -l) wheels from $(basename "$WHEELS")"
# The installed uwm_d2 is what runs; say so if it is not this working tree's code.
installed_pkg="$("$PY" -c 'import os, uwm_d2; print(os.path.dirname(uwm_d2.__file__))')"
if ! diff -rq -x __pycache__ "$REPO_ROOT/uwm_d2" "$installed_pkg" >/dev/null 2>&1; then
    say "WARNING: the wheel folder's uwm_d2 differs from this working tree's; rebuild it with make wheelhouse"
fi

step_started=$SECONDS
DATA="$WORK_DIR/data"
COCO="$WORK_DIR/coco"
rm -rf "$WORK_DIR"
say "phantom data and COCO files -> $WORK_DIR"
if "$PY" "$REPO_ROOT/tools/make_phantom.py" --out "$DATA" --cases 8 --test-cases 2 \
    --max-slices 48 --seed 0 >"$OUT_DIR/data.log" 2>&1 \
    && "$PY" "$REPO_ROOT/tools/make_coco.py" --data-root "$DATA" --out "$COCO" --folds 4 \
        >>"$OUT_DIR/data.log" 2>&1; then
    "${SMOKE[@]}" record "$RESULTS" data $((SECONDS - step_started)) \
        "$(find "$DATA" -name '*.png' | wc -l) slices, 8 + 2 cases"
    # Whatever is left of the budget, less a margin for the table.
    remaining=$((BUDGET - (SECONDS - STARTED) - 15))
    say "measuring on CUDA (at most ${remaining} s; log: $OUT_DIR/gpu_smoke.log)"
    if ((remaining > 30)); then
        timeout --kill-after=10 "$remaining" "${SMOKE[@]}" run --data "$DATA" --coco "$COCO" \
            --work "$WORK_DIR" --results "$RESULTS" \
            || say "the measurements stopped early (exit $?); the table shows what finished"
    fi
else
    tail -n 20 "$OUT_DIR/data.log" >&2
    "${SMOKE[@]}" record "$RESULTS" data $((SECONDS - step_started)) --failed "see data.log"
fi
echo
"${SMOKE[@]}" table "$RESULTS" --markdown "$OUT_DIR/table.md"
echo
say "total $((SECONDS - STARTED)) s; in $OUT_DIR: table.md, results.jsonl and the logs"
