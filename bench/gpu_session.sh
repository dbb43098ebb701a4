#!/usr/bin/env bash
# Every GPU figure issue 10 asks for, in one call on a machine with a CUDA device, written under $OUT
# (default bench/gpu-out/). Run from the project root:  bash bench/gpu_session.sh [stage ...]
# Stages (default: all, in this order; each has its own time limit so one slow stage cannot eat the rest):
#   speed    bench/gpu_speed.py: fit vs a bare loop for fast/1024, custom_resnet/512, resnet18/128 (eager)
#   graphs   the same with train.compile=reduce-overhead (captured steps; resnet18/128 needs them for 20k img/s)
#   syncs    pytest -m gpu: no CUDA sync inside a training step (set_sync_debug_mode="error"), augmentation
#   fast     `cifarlab train fast` on CIFAR-shaped synthetic data: eager, then train.compile=reduce-overhead
#   fmnist   `cifarlab train fast` on real Fashion-MNIST (accuracy on real data), when it is installed;
#            SEEDS="0 1 2" for several seeds
#   augment  bench/augment_cost.py: launches and GPU ms per batch of each augmentation (not in the default set)
#   precision  bench/precision.py at each model's batch: fp32 (TF32), bf16, fp16 side by side, and what
#            `precision: auto`'s probe picks (issue 25: within 15% of the fastest?); not in the default set
#   auto     `cifarlab train fast` (4 epochs, CIFAR-shaped): precision auto (its probe line), then each
#            candidate pinned, images/s from summary.json side by side; not in the default set
# Issue 25's GPU call, most important first:  bash bench/gpu_session.sh precision syncs auto fmnist speed
# Where one call may run at most 10 minutes, split them: `speed graphs`, then `syncs fast`, then `fmnist`.
# If .device/whl holds wheels (a machine without our pure-Python dependencies), they are installed first.
set -uo pipefail
[ -f pyproject.toml ] || { echo "run this from the project root" >&2; exit 2; }
OUT=${OUT:-bench/gpu-out}
mkdir -p "$OUT"
if compgen -G ".device/whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .device/whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
  if [ -d .device/data/fashion-mnist ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then
    mkdir -p /usr/share/datasets && cp -r .device/data/fashion-mnist /usr/share/datasets/
  fi
else
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
CIFAR_SHAPED=("data.dataset=synthetic" "data.options={num_train: 50000, num_test: 10000, image_size: 32, channels: 3}")
QUIET=("output.report=false" "output.progress=none")

stage() {  # name, seconds, command...: output to $OUT/name.txt and the terminal
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee "$OUT/$name.txt"
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$name.txt"
  echo "== $name exit ${PIPESTATUS[0]}" | tee -a "$OUT/$name.txt"
}

summary_line() {  # the newest run's summary.json, the fields the README table needs
  "$PY" - "$1" <<'EOF'
import json, pathlib, sys
runs = sorted(pathlib.Path(sys.argv[1]).glob("*/*/summary.json"), key=lambda p: p.stat().st_mtime)
s = json.loads(runs[-1].read_text())
keys = ("status", "final_test_acc", "best_test_acc", "train_seconds", "compile_seconds", "wall_seconds",
        "train_images_per_second", "precision", "precision_source", "device")
print({k: s.get(k) for k in keys})
EOF
}

run_fast() {  # label, overrides...
  local label=$1; shift
  stage "fast-$label" 240 "$PY" -m cifarlab train fast "output.dir=$OUT/runs-$label" "${QUIET[@]}" "$@"
  summary_line "$OUT/runs-$label" | tee -a "$OUT/fast-$label.txt"
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(speed graphs syncs fast fmnist)
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA DEVICE')" | tee "$OUT/device.txt"
for s in "${stages[@]}"; do
  case $s in
    speed) stage speed 200 "$PY" bench/gpu_speed.py ;;
    graphs) stage graphs 360 "$PY" bench/gpu_speed.py --compile reduce-overhead ;;
    syncs) stage syncs 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_no_sync.py tests/test_augment.py \
             tests/test_precision_probe.py ;;
    fast)
      run_fast eager "${CIFAR_SHAPED[@]}"
      run_fast reduce-overhead "${CIFAR_SHAPED[@]}" train.compile=reduce-overhead ;;
    fmnist)  # SEEDS="0 1 2" for the spread
      for seed in ${SEEDS:-0}; do run_fast "fmnist-seed$seed" data.dataset=fashion_mnist "seed=$seed"; done ;;
    augment) stage augment 120 "$PY" bench/augment_cost.py ;;
    precision)
      for case in fastnet:1024 custom_resnet:512 resnet18:128 convnet:512; do
        stage "precision-${case%%:*}" 60 "$PY" bench/precision.py --models "${case%%:*}" --batch-size "${case##*:}" \
          --steps 20 --repeats 5
      done ;;
    auto)
      for precision in auto fp32 bf16 fp16; do
        run_fast "auto-$precision" "${CIFAR_SHAPED[@]}" train.epochs=4 "train.precision=$precision"
      done ;;
    *) echo "unknown stage $s (speed, graphs, syncs, fast, fmnist, augment, precision, auto)" >&2; exit 2 ;;
  esac
done
