#!/usr/bin/env bash
# `make demo`: the whole pipeline on built-in phantom data, on the CPU, in a few minutes.
#   phantom data -> COCO files -> train the CPU demo config -> submission for the test scans
#   -> score against the phantom's test_truth.csv (and the all-empty baseline) -> pictures.
# The last line printed is exactly `score=<S> baseline=<B>`.
set -euo pipefail

PY="${1:-.venv/bin/python}"
OUT="${2:-demo_output}"
CONFIG="${DEMO_CONFIG:-configs/demo/mask_rcnn_R_18_FPN_cpu_demo.yaml}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"

cd "$(dirname "$0")/.."
rm -rf "$OUT"
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*" >&2; }

step "1/6 phantom data -> $OUT/data"
"$PY" tools/make_phantom.py --out "$OUT/data" --cases 8 --test-cases 2 --max-slices 40 --seed 0 >&2

step "2/6 COCO files -> $OUT/coco"
"$PY" tools/make_coco.py --data-root "$OUT/data" --out "$OUT/coco" --folds 4 >&2

step "3/6 training $CONFIG on the CPU -> $OUT/train (a few minutes)"
"$PY" tools/train_net.py --config-file "$CONFIG" \
    UWM.DATA_ROOT "$OUT/data" UWM.COCO_DIR "$OUT/coco" OUTPUT_DIR "$OUT/train" MODEL.DEVICE cpu \
    > "$OUT/train.log" 2>&1 || { tail -n 30 "$OUT/train.log" >&2; exit 1; }
grep -E "uwm/score|Overall training speed" "$OUT/train.log" | tail -n 3 >&2 || true

step "4/6 submission for the phantom's test scans -> $OUT/submission.csv"
"$PY" tools/infer_submit.py --config-file "$CONFIG" --data-root "$OUT/data" --tta \
    --out "$OUT/submission.csv" MODEL.WEIGHTS "$OUT/train/model_final.pth" MODEL.DEVICE cpu >&2

step "5/6 scoring against test_truth.csv -> $OUT/score.json, $OUT/baseline.json"
"$PY" tools/evaluate.py --data-root "$OUT/data" --truth "$OUT/data/test_truth.csv" \
    --pred "$OUT/submission.csv" --json "$OUT/score.json" > /dev/null
"$PY" tools/evaluate.py --data-root "$OUT/data" --truth "$OUT/data/test_truth.csv" \
    --pred "$OUT/data/sample_submission.csv" --json "$OUT/baseline.json" > /dev/null

step "6/6 pictures -> $OUT/pictures"
first_test_case_day="$("$PY" -c "import sys; from uwm_d2.core.layout import index_scans; print(index_scans(sys.argv[1], 'test')['case_day'][0])" "$OUT/data")"
"$PY" tools/visualize.py --data-root "$OUT/data" --split test --case-day "$first_test_case_day" \
    --truth "$OUT/data/test_truth.csv" --pred "$OUT/submission.csv" --gif \
    --metrics "$OUT/train/metrics.json" --out "$OUT/pictures" >&2

"$PY" - "$OUT" <<'PYTHON'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
score = json.loads((out / "score.json").read_text())
baseline = json.loads((out / "baseline.json").read_text())
print(f"\nwhere everything went: {out}/", file=sys.stderr)
for name in ("data", "coco", "train", "submission.csv", "score.json", "pictures"):
    print(f"  {out / name}", file=sys.stderr)
per_class = ", ".join(
    f"{name} dice {values['dice']:.3f} hd {values['hausdorff']:.3f}"
    for name, values in score["per_class"].items()
)
print(f"per class: {per_class}", file=sys.stderr)
print(f"score={score['score']:.4f} baseline={baseline['score']:.4f}")
PYTHON
