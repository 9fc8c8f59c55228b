#!/usr/bin/env bash
# `make demo`: the whole pipeline on the CPU in a few minutes, on the built-in phantom or your data.
#   data -> COCO files -> train the demo config -> submission with flip TTA -> score (and the
#   all-empty baseline) -> pictures. The last line printed is exactly `score=<S> baseline=<B>`.
#
#   scripts/demo.sh [PYTHON] [OUT]          phantom data generated into OUT/data
#   DATA=/path/to/root scripts/demo.sh ...   your competition-layout root instead (train.csv,
#                                            train/...); its test/ scans are predicted and scored
#                                            against test_truth.csv when both exist, otherwise the
#                                            held-out fold 0 of train/ is.
set -euo pipefail

PY="${1:-.venv/bin/python}"
OUT="${2:-demo_output}"
CONFIG="${DEMO_CONFIG:-configs/demo/semantic_R_18_FPN_cpu_demo.yaml}"
DATA="${DATA:-}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"

cd "$(dirname "$0")/.."
if [[ -n "$DATA" && ! -f "$DATA/train.csv" ]]; then
    echo "error: DATA=$DATA is not a competition-layout root (no train.csv there)" >&2
    exit 2
fi
# Only a folder an earlier demo made (it holds the marker) is replaced, and the demo says so.
MARKER="$OUT/.uwm_demo_output"
if [[ -e "$OUT" && ! -f "$MARKER" && -n "$(ls -A "$OUT" 2>/dev/null)" ]]; then
    echo "error: DEMO_DIR=$OUT exists and was not made by make demo; choose another DEMO_DIR" >&2
    exit 2
fi
if [[ -f "$MARKER" ]]; then
    echo "replacing $OUT (the previous demo's outputs: $(du -sh "$OUT" | cut -f1))" >&2
fi
rm -rf "$OUT"
mkdir -p "$OUT"
touch "$MARKER"
step() { printf '\n== %s\n' "$*" >&2; }

if [[ -z "$DATA" ]]; then
    step "1/6 phantom data (abdomen-like, unseen test patients) -> $OUT/data"
    "$PY" tools/make_phantom.py --out "$OUT/data" --cases 8 --test-cases 2 --max-slices 40 \
        --seed 0 >&2
    DATA="$OUT/data"
else
    step "1/6 your data: $DATA"
fi

step "2/6 COCO files -> $OUT/coco"
"$PY" tools/make_coco.py --data-root "$DATA" --out "$OUT/coco" --folds 4 >&2

step "3/6 training $CONFIG on the CPU -> $OUT/train (about 4 minutes on 2 cores)"
# Progress (iteration, losses, ETA, validation scores) on the console and in train.log alike.
"$PY" tools/train_net.py --config-file "$CONFIG" \
    UWM.DATA_ROOT "$DATA" UWM.COCO_DIR "$OUT/coco" UWM.NUM_FOLDS 4 OUTPUT_DIR "$OUT/train" \
    MODEL.DEVICE cpu 2>&1 | tee "$OUT/train.log" >&2

# What to predict and score: the data's own test split with its truth, or else the held-out fold.
if [[ -d "$DATA/test" && -f "$DATA/test_truth.csv" ]]; then
    SPLIT="test"
    SAMPLE="$DATA/sample_submission.csv"
    TRUTH="$DATA/test_truth.csv"
else
    SPLIT="train"
    SAMPLE="$OUT/heldout_sample.csv"
    TRUTH="$OUT/heldout_truth.csv"
    "$PY" - "$OUT/coco/val_fold0.json" "$DATA/train.csv" "$SAMPLE" "$TRUTH" <<'PYTHON'
import json, sys
import pandas as pd
from uwm_d2.core.layout import read_label_csv
val, labels, sample, truth = sys.argv[1:]
ids = {image["slice_id"] for image in json.load(open(val))["images"]}
rows = read_label_csv(labels)
rows = rows[rows["id"].isin(ids)]
rows.to_csv(truth, index=False)
rows.assign(predicted="")[["id", "class", "predicted"]].to_csv(sample, index=False)
PYTHON
fi

step "4/6 submission for $SPLIT scans (flip TTA) -> $OUT/submission.csv"
"$PY" tools/infer_submit.py --config-file "$CONFIG" --data-root "$DATA" --split "$SPLIT" \
    --sample-submission "$SAMPLE" --tta --out "$OUT/submission.csv" \
    MODEL.WEIGHTS "$OUT/train/model_final.pth" MODEL.DEVICE cpu >&2

step "5/6 scoring -> $OUT/score.json (every reading of the metric), $OUT/baseline.json"
"$PY" tools/evaluate.py --data-root "$DATA" --truth "$TRUTH" --pred "$OUT/submission.csv" \
    --rules all --json "$OUT/score.json" > /dev/null
"$PY" tools/evaluate.py --data-root "$DATA" --truth "$TRUTH" --pred "$SAMPLE" \
    --json "$OUT/baseline.json" > /dev/null 2>&1

step "6/6 pictures -> $OUT/pictures"
first_case_day="$("$PY" -c "
import sys
from uwm_d2.core.layout import read_label_csv
print(sorted({i.rsplit('_slice_', 1)[0] for i in read_label_csv(sys.argv[1])['id']})[0])
" "$TRUTH")"
"$PY" tools/visualize.py --data-root "$DATA" --split "$SPLIT" --case-day "$first_case_day" \
    --truth "$TRUTH" --pred "$OUT/submission.csv" --gif \
    --metrics "$OUT/train/metrics.json" --out "$OUT/pictures" >&2

"$PY" - "$OUT" <<'PYTHON'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
score = json.loads((out / "score.json").read_text())
baseline = json.loads((out / "baseline.json").read_text())
print(f"\nwhere everything went: {out}/", file=sys.stderr)
for name in ("coco", "train", "submission.csv", "score.json", "pictures"):
    print(f"  {out / name}", file=sys.stderr)
per_class = ", ".join(
    f"{name} dice {values['dice']:.3f} hd {values['hausdorff']:.3f}"
    for name, values in score["per_class"].items()
)
print(f"per class: {per_class}", file=sys.stderr)
readings = score.get("readings", {})
others = ", ".join(
    f"{name} {value['score']:.4f}"
    for name, value in readings.items()
    if name != "project" and value.get("score") is not None
)
if others:
    print(f"other readings of the metric: {others}", file=sys.stderr)
print(f"score={score['score']:.4f} baseline={baseline['score']:.4f}")
PYTHON
