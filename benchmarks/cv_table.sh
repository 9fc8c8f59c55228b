#!/usr/bin/env bash
# The README's cross-validation table on the demo phantom (CPU; about two hours on 2 cores):
# semantic 4-fold CV, Mask R-CNN from scratch and started from the semantic folds, one semantic
# model trained on every case for the folds' total iterations; each scored out-of-fold
# (cv_summary.json) and on the phantom's unseen test patients (config's rule and chosen rule).
#   bash benchmarks/cv_table.sh OUT [PYTHON]
set -euo pipefail
OUT="$1"
PY="${2:-.venv/bin/python}"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DATA="$OUT/data"
SEM=configs/demo/semantic_R_18_FPN_cpu_demo.yaml
MRC=configs/demo/mask_rcnn_R_18_FPN_cpu_demo.yaml
COMMON=(UWM.DATA_ROOT "$DATA" UWM.COCO_DIR "$OUT/coco" UWM.NUM_FOLDS 4)
mkdir -p "$OUT"
stamp() { printf '%s %s\n' "$(date +%T)" "$*" | tee -a "$OUT/timeline.txt"; }

if [[ ! -d "$DATA" ]]; then
    "$PY" tools/make_phantom.py --out "$DATA" --cases 8 --test-cases 2 --max-slices 40 --seed 0
    "$PY" tools/make_coco.py --data-root "$DATA" --out "$OUT/coco" --folds 4
fi

# Score an ensemble file on the test split: the file's own rule, and the config's rule.
score() {  # NAME ENSEMBLE (skipped when its score is there: a rerun resumes)
    local name="$1" ensemble="$2"
    [[ -f "$OUT/$name.json" ]] && return
    "$PY" tools/infer_submit.py --ensemble "$ensemble" --data-root "$DATA" --tta \
        --out "$OUT/$name.csv"
    "$PY" tools/evaluate.py --data-root "$DATA" --truth "$DATA/test_truth.csv" \
        --pred "$OUT/$name.csv" --reading all --json "$OUT/$name.json"
}
untuned() {  # ENSEMBLE -> the same members without the merge section
    "$PY" - "$1" <<'PYTHON'
import sys, yaml
path = sys.argv[1]
document = yaml.safe_load(open(path))
document.pop("merge", None)
open(path.replace(".yaml", "_default.yaml"), "w").write(yaml.safe_dump(document))
PYTHON
}

for kind in sem mrc mrc_init; do
    case "$kind" in
        sem) config=$SEM; extra=() ;;
        mrc) config=$MRC; extra=() ;;
        mrc_init) config=$MRC; extra=(--init-from "$OUT/cv_sem") ;;
    esac
    stamp "cross-validation $kind"
    /usr/bin/time -v -o "$OUT/cv_$kind.time" "$PY" tools/cross_validate.py --config-file "$config" \
        --out "$OUT/cv_$kind" --resume "${extra[@]}" "${COMMON[@]}" > "$OUT/cv_$kind.log" 2>&1
    tail -n 14 "$OUT/cv_$kind.log"
    untuned "$OUT/cv_$kind/ensemble.yaml"
    score "test_${kind}_tuned" "$OUT/cv_$kind/ensemble.yaml"
    score "test_${kind}_default" "$OUT/cv_$kind/ensemble_default.yaml"
done

stamp "one semantic model on every training case, 4 x 300 iterations"
[[ -f "$OUT/all/model_final.pth" ]] || /usr/bin/time -v -o "$OUT/all.time" "$PY" tools/train_net.py --config-file "$SEM" "${COMMON[@]}" \
    OUTPUT_DIR "$OUT/all" DATASETS.TRAIN '("uwm_all",)' SOLVER.MAX_ITER 1200 \
    SOLVER.CHECKPOINT_PERIOD 600 TEST.EVAL_PERIOD 0 > "$OUT/all.log" 2>&1
for rule in default tuned; do
    "$PY" - "$OUT" "$rule" <<'PYTHON'
import sys, yaml
out, rule = sys.argv[1:]
document = {"members": [{"config": "configs/demo/semantic_R_18_FPN_cpu_demo.yaml",
                          "weights": [f"{out}/all/model_final.pth"]}]}
if rule == "tuned":  # the rule the semantic cross-validation chose
    document["merge"] = yaml.safe_load(open(f"{out}/cv_sem/ensemble.yaml"))["merge"]
open(f"{out}/all_{rule}.yaml", "w").write(yaml.safe_dump(document))
PYTHON
    score "test_all_$rule" "$OUT/all_$rule.yaml"
done
stamp "done"
