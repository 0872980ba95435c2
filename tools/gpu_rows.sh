#!/usr/bin/env bash
# Issue #13's training rows on a lent GPU machine (the `device` tool), as one prepared call: resume or start
# the named rows of tools/reproduce_table.sh with --device cuda for at most BUDGET seconds, then copy every
# checkpoint (finished or not) and every finished evaluation to $OUT. Rows resume per epoch, so a later
# call (or this machine's CPU) goes on where this one stopped.
#
#   tools/gpu_rows.sh ROW [ROW...]        e.g. cifar10-48-e200-kd (resumes from checkpoints/in-progress/)
#
# That machine's python3 has torch, h5py, click, tqdm and Pillow but no Faiss, it has no ../shared/data, and a
# call carries at most 64 MiB. The CIFAR-10 tars gzip to 20 MB (train 16.4 MB, test 3.3 MB: tar headers and
# padding are most of them). The tracked tree is 48 MB (2026-12-04, session 44: six finished checkpoints of
# ~4 MB and one in-progress of ~10 MB), 60 KB too many beside the data: `gpu_train.py --pack` says by how much
# and which checkpoints to move out of the work tree for the call (those of rows it does not train or read;
# back after). The Faiss wheel (18.8 MB) no longer fits beside them: without it the rows train, and are evaluated here
# afterwards (rerun the same rows here). One row alone trains at ~20,000 images/s on the H200 (2.5 s an epoch
# of CIFAR-10; a --width 2 row ~18,000, with TrivialAugment ~16,500) and rows run at once share that, so one
# call trains one long row; a row longer than a call (200 epochs with TrivialAugment, ~11 minutes) resumes in
# a second call while the machine is warm (it keeps runs/ for 30 s after a call; a cold one starts bare, and
# the parts that came back must then travel as checkpoints/in-progress/ROW.pt). Here, once:
#
#   python tools/gpu_train.py --pack .gpudata --for-rows ROW,ROW   # train.tar.gz and test.tar.gz (.gitignore keeps
#       them out); --for-rows: the checkpoints to move aside are those these rows do not read
#
# then run(carry=[".gpudata"], timeout_s=590, command="BUDGET=540 tools/gpu_rows.sh ROW..."). (Should the
# tree shrink, a Faiss wheel in .whl/ is installed and used: `python3 -m pip download --no-deps
# --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 -d .whl
# faiss-cpu==1.15.1`, and carry .whl too.)
# Unfinished checkpoints travel in git (checkpoints/in-progress/, copied to runs/table/ unless a newer one
# is there); the tars are unpacked to ../shared/data/cifar10-jpeg/, the path the checkpoints were begun
# with (resume checks it). Bring the results home: cp $FILES_AT/table/*.pt runs/table/ (and the eval-*
# folders), then rerun the row here: it finds them finished or resumes them.
#
# env: BUDGET (seconds of training and evaluation, default 540), DEVICE (default cuda; "cpu" to try the
# script here), OUT (default runs/gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
budget=${BUDGET:-540} device=${DEVICE:-cuda} out=${OUT:-runs/gpu-out}
py=${PYTHON:-python3}
[ $# -gt 0 ] || { echo "usage: tools/gpu_rows.sh ROW [ROW...] (rows of tools/reproduce_table.sh)" >&2; exit 2; }

if ! $py -c "import faiss" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        $py -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 2
        export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
    else  # the tracked tree (34 MB and more) and the data (20 MB) leave no room for the wheel in 64 MiB
        echo "no Faiss here and no .whl/ carried: the rows train; evaluate them at home (rerun the rows there)"
        export NO_EVAL=1
    fi
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
data=../shared/data/cifar10-jpeg
mkdir -p "$data" || { echo "cannot make $data (the path the checkpoints were begun with)" >&2; exit 2; }
for f in train test; do
    [ -f "$data/$f.tar" ] && continue
    [ -f ".gpudata/$f.tar.gz" ] || { echo "no $data/$f.tar and no .gpudata/$f.tar.gz carried" >&2; exit 2; }
    gunzip -c ".gpudata/$f.tar.gz" > "$data/$f.tar.tmp" && mv "$data/$f.tar.tmp" "$data/$f.tar"
done

mkdir -p runs/table
for c in checkpoints/in-progress/*.pt; do  # an in-progress checkpoint, unless this tree holds a newer one
    [ -f "$c" ] && { [ -f "runs/table/$(basename "$c")" ] || cp "$c" runs/table/; }
done
hx="$py -m hashindex"
[ -f runs/table/cifar10-48-e100.pt ] || $hx -q derive nin-cifar10-48-v2 --no-test-flip --out runs/table/cifar10-48-e100.pt

$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
start=$(date +%s)
HASHINDEX="$hx" PYTHON=$py TRAIN_ARGS="--device $device" EXTRACT_ARGS="--device $device" \
    timeout "$budget" tools/reproduce_table.sh "$@"
rc=$?
echo "rows ended with rc $rc after $(( $(date +%s) - start )) s (124: the budget ran out; the rows resume)"

mkdir -p "$out/table"
for d in runs/table/eval-*; do
    [ -f "$d/metrics.json" ] && mkdir -p "$out/table/$(basename "$d")" && cp "$d/metrics.json" "$out/table/$(basename "$d")/"
done
# the rows' checkpoints only, each with its state: at most 8 files come back, 16 MiB each, so a larger one (an
# unfinished --width 2 row: weights, momentum and teacher logits, ~26 MB) comes back in parts of 15 MiB:
# at home, cat $FILES_AT/table/ROW.pt.part-* > runs/table/ROW.pt
for row in "$@"; do
    c=runs/table/$row.pt
    [ -f "$c" ] || continue
    if [ "$(stat -c %s "$c")" -le $((15 * 1024 * 1024)) ]; then cp "$c" "$out/table/"
    else split -b 15M -d "$c" "$out/table/$row.pt.part-"; fi
    $py -c 'import sys; from hashindex.checkpoint import read_checkpoint
c = read_checkpoint(sys.argv[1]); h = c["history"]
print(sys.argv[1], c["epochs"], "epochs,", "unfinished" if "train_state" in c else "finished", "val_acc", h[-1].get("val_acc") if h else None)' "$c"
done
exit 0
