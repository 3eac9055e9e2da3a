#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script (docs/benchmarks.md, docs/results.md).
#
#   benchmarks/cuda.sh pac2d RESULTS_DIR
#       benchmarks/pac2d.py --device cuda: pac2d against unfold and Conv2d.
#   benchmarks/cuda.sh pretrain RESULTS_DIR
#       1. benchmarks/train.py --device cuda: samples/s of the default and authors' configs in
#          bf16 on the OSCD store, the DataLoader's patches/s beside each;
#       2. trains CONFIG (authors.yaml) for about TRAIN_SECONDS, its steps fixed in advance
#          from the samples/s just measured, so the run stays deterministic given its steps;
#       3. evaluates the checkpoint on the labelled OSCD cities (matter, its untrained twin and
#          CVA in each run): the whole-city protocol with both feature choices, then the
#          authors' protocol over change tiles and over all tiles.
#
# Settings from the environment: PY (python3), OSCD_ROOT (../shared/data/oscd), PATCH_STORE
# (.demo/oscd/patches, from `python -m pipelines.oscd_patches`), CONFIG (authors),
# DEVICE (cuda), TRAIN_SECONDS (240), TIMED (default: the config timed beside CONFIG), CITIES
# (every labelled city), RUN (.demo/oscd/cuda-run).
# Everything the script writes that is worth keeping lands in RESULTS_DIR.
set -euo pipefail

stage=${1:?usage: benchmarks/cuda.sh pac2d|pretrain RESULTS_DIR}
results=${2:?usage: benchmarks/cuda.sh pac2d|pretrain RESULTS_DIR}
PY=${PY:-python3}
OSCD_ROOT=${OSCD_ROOT:-../shared/data/oscd}
PATCH_STORE=${PATCH_STORE:-.demo/oscd/patches}
CONFIG=${CONFIG:-authors}
DEVICE=${DEVICE:-cuda}
TRAIN_SECONDS=${TRAIN_SECONDS:-240}
TIMED=${TIMED:-default}
RUN=${RUN:-.demo/oscd/cuda-run}
mkdir -p "$results"
# The repository's packages, where the GPU node's Python has not installed the project.
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

stamp() { echo "== $(date -u +%H:%M:%S) $*"; }

pac2d() {
    stamp "pac2d on $DEVICE"
    "$PY" benchmarks/pac2d.py --device "$DEVICE" --repeats 50 --warmup 5 \
        --out "$results/pac2d-$DEVICE.json"
}

# The steps that fill TRAIN_SECONDS at the samples/s train-DEVICE.json measured for CONFIG.
steps_for_budget() {
    "$PY" - "$results/train-$DEVICE.json" "$CONFIG" "$TRAIN_SECONDS" <<'EOF'
import json, sys
row = json.load(open(sys.argv[1]))["configs"][sys.argv[2]]
print(max(1, int(float(sys.argv[3]) * row["train_samples_per_s"] / row["batch_size"])))
EOF
}

evaluate() {  # NAME, then evaluate's options
    local name=$1
    shift
    stamp "evaluate $name"
    "$PY" -m matter_model.evaluate oscd --root "$OSCD_ROOT" --checkpoint "$RUN/checkpoint.pt" \
        --device "$DEVICE" --out "$results/oscd-$name.json" ${CITIES:+--cities "$CITIES"} "$@"
}

pretrain() {
    stamp "training throughput on $DEVICE"
    "$PY" benchmarks/train.py --device "$DEVICE" --config "$TIMED" --config "$CONFIG" \
        --patch-store "$PATCH_STORE" --steps 20 --warmup 5 --batches 50 \
        --out "$results/train-$DEVICE.json"
    local steps
    steps=$(steps_for_budget)
    stamp "train $CONFIG for $steps steps"
    "$PY" -m matter_model.train --config "matter_model/configs/$CONFIG.yaml" --device "$DEVICE" \
        --patch-store "$PATCH_STORE" --out "$RUN" --steps "$steps" \
        --checkpoint-every "$steps" --set log_every=50
    cp "$RUN/metrics.json" "$results/pretrain-$CONFIG.json"
    evaluate city
    evaluate authors-change --protocol authors --tiles change
    evaluate authors-all --protocol authors --tiles all
    evaluate city-authors-features --features authors
    stamp done
}

case $stage in
    pac2d) pac2d ;;
    pretrain) pretrain ;;
    *) echo "unknown stage $stage: pac2d or pretrain" >&2; exit 2 ;;
esac
