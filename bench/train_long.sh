#!/usr/bin/env bash
# The shipped model's image-first recipe as a long, resumable background run (issue 14, item 4):
# on a CUDA GPU when there is one (bf16 there), else on the CPU (fp32: bf16 is emulated on CPUs
# without bf16 units). Starts RUN, or resumes it exactly where it stopped; every epoch's weights
# are kept in RUN/epochs/ (to average late epochs); everything is logged to RUN.log. With
# SCORE_EVERY=N (default 5; 0: never) the run stops every N epochs to score its best checkpoint
# on one held-out ICBM subject (bench/heldout_warped.py -> RUN/heldout_epNNN.json) and goes on.
#
#   nohup bash bench/train_long.sh /path/to/run > /dev/null 2>&1 &     # start or resume
#   tail -f /path/to/run.log                                           # follow it
#   EPOCHS=200 SCORE_EVERY=0 bash bench/train_long.sh RUN --device cpu  # more flags go to `spatialseg train`
#
# EPOCHS (default 100) and the flags after RUN only matter when the run starts: a resumed run keeps
# its own. Starting from the shipped weights (--init default) continues the shipped model's
# training; the recipe's flags are those of bench/RESULTS.md ("image first"). Run it from the
# environment where spatialseg is installed; on a CPU, set OMP_NUM_THREADS to the cores it may take.
set -euo pipefail
run=${1:?usage: bench/train_long.sh RUN_DIR [more spatialseg train flags]}
shift
here=$(cd "$(dirname "$0")" && pwd)
log="${run%/}.log"
mkdir -p "$(dirname "$log")"
exec >> "$log" 2>&1  # from here on, everything (errors included) goes to the log
trap 'echo "$(date) train_long: stopped by an error (exit $?)"' ERR
py=$(dirname "$(command -v spatialseg)")/python  # the interpreter spatialseg runs with
every=${SCORE_EVERY:-5}
device=auto
prev=""
for a in "$@"; do  # the device given to spatialseg train decides the precision too
    [ "$prev" = "--device" ] && device=$a
    case $a in --device=*) device=${a#--device=} ;; esac
    prev=$a
done
precision=$("$py" -c "import sys, torch; d = sys.argv[1]; \
print('bf16' if d != 'cpu' and torch.cuda.is_available() else 'fp32')" "$device")
recipe=(--cohort wide --init default --pool 12 --refresh 2 --optimizer adam --lr 1e-3 --slab 4 --box 48
        --boxes-per-step 2 --sample-fraction 0.5 --position-dropout 0.7 --epochs "${EPOCHS:-100}"
        --steps-per-epoch 40 --val-subjects 3 --precision "$precision")
chunk=()
[ "$every" -gt 0 ] && chunk=(--stop-after "$every")
epoch_of() {  # "finished epochs total" of the run's last checkpoint
    "$py" -c "import sys; from spatialseg_fast.model.io import read_config; \
t = read_config(sys.argv[1])[1]['training']; print(t['epoch'] + 1, t['options']['epochs'])" "$run/last.safetensors"
}
echo "$(date) train_long: $run (device $device, precision $precision if new, scoring every $every epochs)"
before=0
while true; do
    if [ -f "$run/last.safetensors" ]; then
        spatialseg train "$run" --resume --keep-epochs ${chunk[@]+"${chunk[@]}"} "$@"
    else
        spatialseg train "$run" "${recipe[@]}" --keep-epochs ${chunk[@]+"${chunk[@]}"} "$@"
    fi
    read -r done total < <(epoch_of)
    if [ "$every" -gt 0 ] && [ "$done" -gt "$before" ]; then
        echo "$(date) train_long: scoring best.safetensors after epoch $done"
        "$py" "$here/heldout_warped.py" --model "$run/best.safetensors" --icbm 1 --cat12 0 \
            --json "$run/heldout_ep$(printf %03d "$done").json" || echo "$(date) train_long: scoring failed"
    fi
    # done: every epoch of the run, or no progress (nothing left to do)
    if [ "$every" -eq 0 ] || [ "$done" -ge "$total" ] || [ "$done" -le "$before" ]; then
        break
    fi
    before=$done
done
echo "$(date) train_long: stopped at epoch $done of $total"
