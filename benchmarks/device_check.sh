#!/usr/bin/env bash
# The GPU measurements of the training issue as one call of the device tool (the GPU machine is lent to some
# sessions only, for 15 minutes in all, 10 per command): the trainer's share of the bare training step of bot_r50,
# then the best teacher recipe (sbs_r50_ibn) and bot_r50 trained in full on market1501-holdout, each stopped at the
# deadline. Every result lands in $OUT as it is made, so a run cut short still returns what it finished.
#
# Prepare here once per checkout (both paths are git-ignored; the link keeps the research data out of the tree):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
#   ln -s ../shared/data .devdata
# then call the device tool's run with
#   command: bash benchmarks/device_check.sh      carry: [".whl", ".devdata/market1501-train"]    timeout_s: 570
# DEADLINE_S (default 540) is the seconds the script may take; SMOKE=1 shrinks every step to a few iterations on
# mini-market1501, to try the script on a CPU before spending device time on it.
set -uo pipefail
started=$SECONDS
deadline=${DEADLINE_S:-540}
out=${OUT:-/tmp/device_check}
mkdir -p "$out"
log=$out/device_check.log

export PYTHONPATH=$PWD
# The GPU machine lacks pydantic: the carried wheels supply it (a Python that has it, like a CPU try, skips them).
if ! python3 -c "import pydantic" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export EDGEREID_DATA=${EDGEREID_DATA:-$PWD/.devdata} PYTHONUNBUFFERED=1

left() { echo $((deadline - (SECONDS - started))); }

{
    date -u
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    nproc
} >"$log" 2>&1

bench_args=(--iters 200)
train_args=()
if [ "${SMOKE:-0}" = 1 ]; then
    small_data=(--set "data.root=$EDGEREID_DATA/mini-market1501" --set data.format=market1501
                --set data.sampler.p=4 --set data.sampler.k=2)
    bench_args=(--iters 2 --warmup 1 "${small_data[@]}")
    # The recipes' own epochs (their schedules are validated against them), one 64x32 iteration each.
    train_args=(--set solver.iters_per_epoch=1 --set "data.size=[64, 32]" "${small_data[@]}")
fi

echo "== bench_training bot_r50 ($(left) s left)" >>"$log"
timeout "$(left)" python3 benchmarks/bench_training.py --recipe bot_r50 "${bench_args[@]}" \
    --out "$out/training-bot_r50.json" >>"$log" 2>&1
echo "exit $?" >>"$log"

for recipe in sbs_r50_ibn bot_r50; do
    if [ "$(left)" -lt 60 ]; then
        echo "== $recipe skipped: $(left) s left" >>"$log"
        continue
    fi
    echo "== train $recipe ($(left) s left)" >>"$log"
    timeout "$(left)" python3 -m edgereid train "$recipe" --set "train.output_dir=/tmp/runs/{name}" \
        "${train_args[@]}" --json >"$out/train-$recipe.json" 2>>"$log"
    echo "exit $? after $((SECONDS - started)) s" >>"$log"
    cp "/tmp/runs/$recipe/metrics.jsonl" "$out/metrics-$recipe.jsonl" 2>>"$log"
done
echo "== done after $((SECONDS - started)) s" >>"$log"
