#!/usr/bin/env bash
# Ship check: a candidate default model against the shipped one on the flowers protocol (736 test photos vs the
# 2,934 training photos; classes CIFAR-10 does not have), zero-shot and after a 6-epoch fine-tune, both in one run
# (docs/RESULTS.md "The demo on classes of your own": a candidate ships only if no photo row drops).
#
#   tools/ship_check_flowers.sh CANDIDATE OUT [SHIPPED]      # SHIPPED defaults to nin-cifar10-48-v3
#   tools/ship_check_flowers.sh runs/table/cifar10-48-ta-ckd6-flip.pt runs/v4ckd6
#
# Writes OUT/fl-NAME/{zero,tuned}/metrics.json and OUT/fl-NAME/ft.pt (NAME: candidate, shipped); every step
# resumes. env: HASHINDEX, PYTHON, DATA (default ../shared/data).
set -euo pipefail
{  # read whole before it runs
candidate=$1 out=$2 shipped=${3:-nin-cifar10-48-v3}
hx=${HASHINDEX:-hashindex} data=${DATA:-../shared/data}
train=$data/flowers/train.tar test=$data/flowers/test.tar
here=$(dirname "$0")
for pair in "candidate:$candidate" "shipped:$shipped"; do
    name=${pair%%:*} model=${pair#*:} o=$out/fl-${pair%%:*}
    echo "== $name ($model): $(date -u +%FT%TZ)"
    HASHINDEX=$hx "$here/eval_protocol.sh" "$model" "$train" "$test" "$o/zero"
    [ -f "$o/ft.pt" ] || $hx -q train --init "$model" --data "$train" --val "$test" --epochs 6 --out "$o/ft.pt"
    HASHINDEX=$hx "$here/eval_protocol.sh" "$o/ft.pt" "$train" "$test" "$o/tuned"
done
${PYTHON:-python} - "$out" <<'PY'
import json, sys
print("| model | Hamming mAP@all | mAP@1000 | default mAP@all (signal) | P@10 default |")
for name in ("shipped", "candidate"):
    for stage in ("zero", "tuned"):
        m = json.load(open(f"{sys.argv[1]}/fl-{name}/{stage}/metrics.json"))
        h, r = m["hamming"], m["reranked"]
        print(f"| {name}, {stage} | {h['map']:.4f} | {h['map@1000']:.4f} | {r['map']:.4f} ({r['signal']}) | "
              f"{m['precision_at_k_reranked'][9]:.4f} |")
PY
exit
}
