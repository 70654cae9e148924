#!/usr/bin/env bash
# The shipped model's image-first recipe as a long, resumable background run (issue 14, item 4):
# on a CUDA GPU when there is one (bf16 there), else on the CPU (fp32: bf16 is emulated on CPUs
# without bf16 units). Starts RUN, or resumes it exactly where it stopped; every epoch's checkpoint
# is kept in RUN/epochs/ (to average late epochs); the log goes to RUN.log. With SCORE_EVERY=N
# (default 5; 0: never) the run stops every N epochs to score its best checkpoint on one held-out
# ICBM subject (bench/heldout_warped.py, cached by model file) and then goes on.
#
#   nohup bash bench/train_long.sh /path/to/run > /dev/null 2>&1 &     # start or resume
#   tail -f /path/to/run.log                                           # follow it
#   EPOCHS=200 SCORE_EVERY=0 bash bench/train_long.sh RUN --device cpu  # more flags go to `spatialseg train`
#
# Starting from the shipped weights (--init default) continues the shipped model's training; the
# recipe's flags are those of bench/RESULTS.md ("image first"). On a CPU, run it with
# OMP_NUM_THREADS set to the cores it may take.
set -euo pipefail
run=${1:?usage: bench/train_long.sh RUN_DIR [more spatialseg train flags]}
shift
here=$(cd "$(dirname "$0")" && pwd)
log="${run%/}.log"
epochs=${EPOCHS:-100}
every=${SCORE_EVERY:-5}
precision=$(python3 -c "import torch; print('bf16' if torch.cuda.is_available() else 'fp32')")
recipe=(--cohort wide --init default --pool 12 --refresh 2 --optimizer adam --lr 1e-3 --slab 4 --box 48
        --boxes-per-step 2 --sample-fraction 0.5 --position-dropout 0.7 --epochs "$epochs" --steps-per-epoch 40
        --val-subjects 3 --precision "$precision")
chunk=()
[ "$every" -gt 0 ] && chunk=(--stop-after "$every")
echo "$(date -Is) train_long: $run (precision $precision, ${epochs} epochs, scoring every ${every})" >> "$log"
while true; do
    if [ -f "$run/last.safetensors" ]; then
        spatialseg train "$run" --resume --keep-epochs "${chunk[@]}" "$@" >> "$log" 2>&1
    else
        spatialseg train "$run" "${recipe[@]}" --keep-epochs "${chunk[@]}" "$@" >> "$log" 2>&1
    fi
    done_epochs=$(python3 -c "from spatialseg_fast.model.io import read_config; \
print(read_config('$run/last.safetensors')[1]['training']['epoch'] + 1)")
    if [ "$every" -gt 0 ]; then
        echo "$(date -Is) train_long: scoring best.safetensors after epoch $done_epochs" >> "$log"
        python3 "$here/heldout_warped.py" --model "$run/best.safetensors" --icbm 1 --cat12 0 \
            --json "$run/heldout_ep$(printf %03d "$done_epochs").json" >> "$log" 2>&1 || true
    fi
    [ "$every" -gt 0 ] && [ "$done_epochs" -lt "$epochs" ] || break
done
echo "$(date -Is) train_long: finished at epoch $done_epochs" >> "$log"
