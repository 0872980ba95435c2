#!/usr/bin/env bash
# Ship check: a candidate default model against the shipped one on the flowers protocol (736 test photos vs the
# 2,934 training photos; classes CIFAR-10 does not have), zero-shot and after a 6-epoch fine-tune, both in one run
# (docs/RESULTS.md "The demo on classes of your own": a candidate ships only if no photo row drops).
#
#   tools/ship_check_flowers.sh CANDIDATE OUT [SHIPPED]      # SHIPPED defaults to hashindex.DEFAULT_MODEL
#   tools/ship_check_flowers.sh runs/table/cifar10-48-ta-ckd6-flip.pt runs/v4ckd6 nin-cifar10-48-v3
#   SEEDS="0 1 2" tools/ship_check_flowers.sh CANDIDATE OUT       # 3 fine-tunes each
#
# Writes OUT/fl-NAME/{zero,tuned}/metrics.json and OUT/fl-NAME/ft.pt (NAME: candidate, shipped); every step
# resumes. env: HASHINDEX, PYTHON, DATA (default ../shared/data), SEEDS (default "0": the fine-tune's --seed
# values; seed S > 0 writes ft-sS.pt and tuned-sS/, and the table gives each model's mean over the seeds, since
# two fine-tunes of one model from different seeds differ by about as much as two models do; then the difference
# of the means in standard errors, past -2 marked a drop); it ends with the zero-shot comparison query by query
# (`eval --compare`: B - A with a 95% interval).
set -euo pipefail
{  # read whole before it runs
candidate=$1 out=$2
shipped=${3:-$(${PYTHON:-python} -c 'import hashindex; print(hashindex.DEFAULT_MODEL)')}
hx=${HASHINDEX:-hashindex} data=${DATA:-../shared/data}
train=$data/flowers/train.tar test=$data/flowers/test.tar
here=$(dirname "$0")
for pair in "candidate:$candidate" "shipped:$shipped"; do
    name=${pair%%:*} model=${pair#*:} o=$out/fl-${pair%%:*}
    echo "== $name ($model): $(date -u +%FT%TZ)"
    HASHINDEX=$hx "$here/eval_protocol.sh" "$model" "$train" "$test" "$o/zero"
    for seed in ${SEEDS:-0}; do
        tag=$([ "$seed" = 0 ] || echo "-s$seed")
        [ -f "$o/ft$tag.pt" ] || $hx -q train --init "$model" --data "$train" --val "$test" --epochs 6 \
            --seed "$seed" --out "$o/ft$tag.pt"
        HASHINDEX=$hx "$here/eval_protocol.sh" "$o/ft$tag.pt" "$train" "$test" "$o/tuned$tag"
    done
done
${PYTHON:-python} - "$out" ${SEEDS:-0} <<'PY'
import json, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
FIGURES = ("Hamming mAP@all", "mAP@1000", "default mAP@all", "P@10 default")
def figures(path):
    m = json.load(open(f"{out}/{path}/metrics.json"))
    return [m["hamming"]["map"], m["hamming"]["map@1000"], m["reranked"]["map"], m["precision_at_k_reranked"][9]]
print("| model | " + " | ".join(FIGURES) + " |")
print("| --- |" + " --- |" * len(FIGURES))
tuned = {}
for name in ("shipped", "candidate"):
    print(f"| {name}, zero-shot | " + " | ".join(f"{v:.4f}" for v in figures(f"fl-{name}/zero")) + " |")
    runs = tuned[name] = [figures(f"fl-{name}/tuned" + ("" if s == "0" else f"-s{s}")) for s in seeds]
    for s, r in zip(seeds, runs):
        print(f"| {name}, fine-tuned, seed {s} | " + " | ".join(f"{v:.4f}" for v in r) + " |")
    if len(runs) > 1:  # mean, and the spread (sample standard deviation) over the seeds
        cols = list(zip(*runs))
        print(f"| {name}, fine-tuned, mean of {len(runs)} | "
              + " | ".join(f"{statistics.mean(c):.4f} (sd {statistics.stdev(c):.4f})" for c in cols) + " |")
if len(seeds) > 1:  # candidate - shipped over the seeds, in standard errors of that difference: past -2, a drop
    from hashindex.significance import mean_interval
    cells = []
    for a, b in zip(zip(*tuned["shipped"]), zip(*tuned["candidate"])):
        ma, mb = mean_interval(a), mean_interval(b)  # each mean's standard error, the project's one computation
        diff, se = mb["mean"] - ma["mean"], (ma["se"] ** 2 + mb["se"] ** 2) ** 0.5
        drop = ", a drop" if diff < -2 * se else ""
        cells.append(f"{diff:+.4f} ({diff / se:+.1f} SE{drop})" if se else f"{diff:+.4f}")
    print("| candidate - shipped, fine-tuned means | " + " | ".join(cells) + " |")
PY
# zero-shot, query by query (a fine-tune's seed noise is in the table's spread, not in this interval)
z=$out/fl-shipped/zero c=$out/fl-candidate/zero
$hx -q eval "$z/index" --queries "$z/shards/queries" --compare "$c/index" --compare-queries "$c/shards/queries" \
    | sed -n '/^paired comparison/,$p'

exit
}
