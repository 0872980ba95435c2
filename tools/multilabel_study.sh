#!/usr/bin/env bash
# The multi-label study of docs/RESULTS.md ("Multi-label collections"): CIFAR-10 pairs (tools/make_pairs.py:
# two images side by side, labelled with both classes), a 48-bit net trained on the label sets (binary
# cross-entropy per class) against the same net trained on one class per image (the left half's, softmax),
# and the shipped single-image model (nin-cifar10-48-v2, 32 px) as it is, each extracted, indexed and scored
# the same way: queries = 2,000 test pairs, database = 8,000 training pairs, relevance = a shared label.
# Resumable: run it again after an interruption.
#
#   PATH=$PWD/.venv/bin:$PATH tools/multilabel_study.sh        (EPOCHS=12, OUT=runs/pairs)
set -euo pipefail
{  # read whole before it runs (editing a running script changes what it does next)
out=${OUT:-runs/pairs}
epochs=${EPOCHS:-12}
data=${HASHINDEX_DATA:-../shared/data}
[ -f "$out/train/list.txt" ] || python tools/make_pairs.py --data "$data/cifar10-jpeg/train.tar" --out "$out/train" --n 8000 --seed 0
[ -f "$out/test/list.txt" ] || python tools/make_pairs.py --data "$data/cifar10-jpeg/test.tar" --out "$out/test" --n 2000 --seed 1
for kind in list single shipped; do
    ckpt=$out/$kind.pt
    [ $kind = shipped ] && ckpt=nin-cifar10-48-v2  # the shipped model, trained on single CIFAR-10 images: no training
    echo "== $kind: $(date -u +%FT%TZ)"
    state=$(python -c 'import sys, os; from hashindex.checkpoint import read_checkpoint
p = sys.argv[1]; print("none" if not os.path.exists(p) else "unfinished" if "train_state" in read_checkpoint(p) else "finished")' "$ckpt")
    [ $kind = shipped ] && state=finished
    case $state in
        none) hashindex -q train --data "$out/train/$kind.txt" --val "$out/test/$kind.txt" --bits 48 --epochs "$epochs" --out "$ckpt" ;;
        unfinished) hashindex -q train --data "$out/train/$kind.txt" --val "$out/test/$kind.txt" --bits 48 --epochs "$epochs" --out "$ckpt" --resume ;;
    esac
    # both nets are scored on the label sets: extraction of the pair lists (resumable), then a fresh index
    hashindex -q extract --model "$ckpt" --data "$out/train/list.txt" --out "$out/$kind-db"
    hashindex -q extract --model "$ckpt" --data "$out/test/list.txt" --out "$out/$kind-q"
    hashindex -q build "$out/$kind-db" --out "$out/$kind-index" --overwrite
    hashindex -q eval "$out/$kind-index" --queries "$out/$kind-q" --at 100 --at 1000 --json > "$out/eval-$kind.json"
    python -c 'import json, sys; m = json.load(open(sys.argv[1]))
r = m.get("reranked", {})
print(sys.argv[2], "Hamming mAP@all %.4f mAP@1000 %.4f P@10 %.4f NDCG@100 %.4f" % (m["hamming"]["map"], m["hamming"]["map@1000"], m["precision_at_k"][9], m["hamming"]["ndcg@100"]),
      "| re-ranked (%s) mAP@all %.4f" % (r.get("signal"), r.get("map", float("nan"))))' "$out/eval-$kind.json" "$kind"
done
exit
}
