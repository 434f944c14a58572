#!/usr/bin/env bash
# The CUDA path, checked on a machine with an NVIDIA GPU (run from the repository root):
#  1. the engine, predict, inference view, image and lifecycle tests with run.device = "auto" (= cuda);
#  2. host syncs per step while training on the GPU (the loop must not sync every step);
#  3. the demo and the shapes CNN trained headless on the GPU;
#  4. bench/overhead.py on the GPU: the engine against a bare loop.
# Needs torch with CUDA and the project installed (pip install -e '.[test]').
#     bash bench/cuda_check.sh [OUT_DIR]
set -u
out=${1:-${OUT:-/tmp/cuda-check}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TRAINTOP_RUNS_DIR="$out/runs"

python3 - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF

echo "== tests on the GPU"
parallel=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
timeout 400 python3 -m pytest -q -p no:cacheprovider --tb=line $parallel tests/test_engine.py tests/test_predict.py \
    tests/test_inference_view.py tests/test_images.py tests/test_headless.py tests/test_lifecycle.py \
    tests/test_dashboard.py tests/test_text.py tests/test_python_source.py tests/test_predict_kinds.py 2>&1 | tail -25

echo "== host syncs while training on the GPU"
python3 - <<'EOF'
import warnings
import torch
from traintop.engine.config import load_config
from traintop.engine.run import Run

cfg = load_config(None, ["train.epochs=20", "early_stopping.enabled=false", "run.device=\"cuda\""])
run = Run.prepare(cfg)
torch.cuda.set_sync_debug_mode("warn")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    status = run.train()
torch.cuda.set_sync_debug_mode(0)
syncs = [w for w in caught if "synchroniz" in str(w.message)]
validations = cfg.train.epochs
print(f"status {status}: {run.trainer.step} steps, {validations} validations, {len(syncs)} host syncs "
      f"({len(syncs) / run.trainer.step:.2f} per step)")
EOF

echo "== the demo and the shapes CNN, headless, on the GPU"
python3 -m traintop.tui run --headless --set train.epochs=20 2>&1 | tail -4
python3 -m traintop.tui run sample_configs/shapes_cnn.toml --headless 2>&1 | tail -4

echo "== bench/overhead.py on the GPU"
timeout 200 python3 bench/overhead.py --device cuda --rounds 5 --epochs 30 2>&1 | tail -6
