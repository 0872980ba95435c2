#!/usr/bin/env bash
# The standard deep-hashing protocol for one model: database = the training set, queries = the test set,
# mAP over the whole ranking (plus mAP@1000 and @5000, precision@k, radius 2, PR curve), written to OUT/metrics.json.
#
#   tools/eval_protocol.sh MODEL TRAIN_SRC TEST_SRC OUT
#   tools/eval_protocol.sh nin-cifar10-48 ../shared/data/cifar10-jpeg/train.tar ../shared/data/cifar10-jpeg/test.tar runs/eval-cifar10-48
#
# Every step resumes: rerun the same command after an interruption.
# env: EXTRACT_ARGS, extra options for both extractions (e.g. "--no-bf16"); HASHINDEX, PYTHON.
set -euo pipefail
{  # read whole before it runs (editing a running script changes what bash reads next)
model=$1 train=$2 test=$3 out=$4
hx=${HASHINDEX:-hashindex}
$hx -q extract --model "$model" --data "$train" --out "$out/shards/database" ${EXTRACT_ARGS:-}
$hx -q extract --model "$model" --data "$test" --out "$out/shards/queries" ${EXTRACT_ARGS:-}
[ -f "$out/index/index.json" ] || $hx -q build "$out/shards/database" --out "$out/index"
$hx -q eval "$out/index" --queries "$out/shards/queries" --at 1000 --at 5000 --plot "$out/plots" --json > "$out/metrics.json.tmp"
mv "$out/metrics.json.tmp" "$out/metrics.json"
${PYTHON:-python} -c 'import json, sys; from hashindex.evaluation import format_metrics; print(format_metrics(json.load(open(sys.argv[1]))))' "$out/metrics.json"
exit
}
