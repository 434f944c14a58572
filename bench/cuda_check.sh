#!/usr/bin/env bash
# The CUDA path, checked on a machine with one NVIDIA GPU, in about 5 minutes (run from the
# repository root). The machine may have its own torch and lack the project's other dependencies
# and any network: the pure-Python ones come from bench/wheels (made beforehand, on a machine with
# a network, by `bash bench/cuda_check.sh --fetch-wheels`; the folder is git-ignored and travels
# beside the working tree, e.g. as a carried path) and are installed into OUT_DIR/site, never into
# the machine's own Python. The project runs from this tree (OUT_DIR/site/traintop links to it).
#  0. what the machine has: GPU, torch, CUDA, the binary dependencies; stops at once, saying what
#     is missing, when it cannot run;
#  1. the precision, engine and checkpoint tests with run.device = "auto" (= cuda);
#  2. host syncs inside each training step after the first two (must be 0) for fp32, bf16 and
#     compiled; the first two compile and pick kernels, counted apart (fp16's GradScaler reads its
#     overflow flag on the host once a step, by design: reported); the stack behind each kind of
#     sync goes to OUT_DIR/syncs.txt;
#  3. the engine against a bare loop: a CIFAR-sized CNN and a small transformer, fp32, bf16, compiled,
#     with the phases of the engine's sampled steps as the Timing view shows them (CUDA events);
#  4. the resources events (what the header and the Resources view show) against nvidia-smi.
#     bash bench/cuda_check.sh [OUT_DIR]        (default $OUT, else /tmp/cuda-check)
#     bash bench/cuda_check.sh --fetch-wheels   (needs a network; fills bench/wheels)
set -u
cd "$(dirname "$0")/.."
wheels=bench/wheels
pure="textual platformdirs pytest>=8 pytest-asyncio>=0.23 hypothesis>=6.100 nvidia-ml-py"

if [ "${1:-}" = "--fetch-wheels" ]; then
    # Pure-Python wheels only (py3-none-any), so they install on whatever Python the GPU machine has.
    for v in 3.10 3.11 3.12 3.13; do
        "${PYTHON:-python3}" -m pip download -q -d "$wheels" --only-binary=:all: --platform any --python-version "$v" \
            --implementation py $pure || exit 1
    done
    # plotext >= 6 has no wheel on the index: its (pure-Python) package is copied from this Python
    src=$("${PYTHON:-python3}" -c "import os, plotext; print(os.path.dirname(plotext.__file__))") || exit 1
    rm -rf "$wheels/plotext"; cp -r "$src" "$wheels/plotext"; rm -rf "$wheels/plotext/__pycache__"
    du -sh "$wheels"; exit 0
fi

out=${1:-${OUT:-/tmp/cuda-check}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TRAINTOP_RUNS_DIR="$out/runs"
start=$SECONDS
fail() { echo "CUDA CHECK CANNOT RUN: $*" >&2; exit 3; }

echo "== 0. what this machine has"
command -v nvidia-smi >/dev/null || fail "no nvidia-smi: this machine has no NVIDIA driver"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || fail "nvidia-smi sees no GPU"
py=$(command -v python3 || command -v python) || fail "no python3"
$py - <<'EOF' || fail "see above"
import importlib, sys
print("python", sys.version.split()[0])
try:
    import torch
except ImportError:
    sys.exit("no torch: this check uses the machine's own torch with CUDA")
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if not torch.cuda.is_available():
    sys.exit("torch cannot use the GPU (a CPU-only build, or a driver too old for its CUDA)")
print("gpu", torch.cuda.get_device_name(), f"bf16 {torch.cuda.is_bf16_supported()}")
missing = [m for m in ("numpy", "sklearn", "pandas", "PIL") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing binary dependencies, not carried as wheels: {', '.join(missing)} "
             "(pip install numpy scikit-learn pandas pillow where a network is at hand)")
EOF
site="$out/site"
mkdir -p "$site"
need=$($py - <<'EOF'
import importlib.util
names = {"textual": "textual", "platformdirs": "platformdirs", "pytest": "pytest",
         "pytest_asyncio": "pytest-asyncio", "hypothesis": "hypothesis", "pynvml": "nvidia-ml-py"}
print(" ".join(pkg for mod, pkg in names.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$need" ]; then
    [ -d "$wheels" ] || fail "missing $need and no $wheels folder to install them from (make it with --fetch-wheels)"
    $py -m pip install -q --no-index --find-links "$wheels" --target "$site" $need \
        || fail "could not install $need from $wheels"
fi
if ! $py -c "import plotext, sys; sys.exit(int(plotext.__version__.split('.')[0]) < 6)" 2>/dev/null; then
    [ -d "$wheels/plotext" ] || fail "no plotext >= 6 and none in $wheels (make it with --fetch-wheels)"
    rm -rf "$site/plotext"; cp -r "$wheels/plotext" "$site/plotext"
fi
mkdir -p "$site/traintop"
for f in __init__.py lightning.py transformers.py; do ln -sf "$PWD/api/$f" "$site/traintop/$f"; done
ln -sfn "$PWD/engine" "$site/traintop/engine"
ln -sfn "$PWD/tui" "$site/traintop/tui"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
$py -c "import traintop.engine.loop, traintop.tui.app" || fail "the project does not import (see above)"
echo "ready after $((SECONDS - start))s"

echo "== 1. tests on the GPU"
# in parallel where pytest-xdist is there and works with the pytest in use (a quick collection says)
parallel=""
timeout 30 $py -m pytest -q --co -p no:cacheprovider -n 2 tests/test_precision.py >/dev/null 2>&1 && parallel="-n 6"
echo "   pytest ${parallel:-in one process}"
# each test's result goes to tests.log as it comes (-v), so a run cut at its limit still names them
timeout 180 $py -m pytest -v -p no:cacheprovider -rfE --tb=short $parallel tests/test_precision.py tests/test_engine.py \
    tests/test_checkpoints.py 2>&1 | tee "$out/tests.log" | grep -E '^(FAILED|ERROR)|^E  |passed|failed' | tail -25
echo "   (exit ${PIPESTATUS[0]}; 124 = cut at 180 s) after $((SECONDS - start))s"

echo "== 2. host syncs inside each training step"
timeout 90 $py bench/gpu_bench.py syncs --where "$out/syncs.txt"; echo "   (exit $?) after $((SECONDS - start))s"

echo "== 3. engine against a bare loop (steps/s, after one warm-up epoch each)"
timeout 100 $py bench/gpu_bench.py speed --epochs 3; echo "   (exit $?) after $((SECONDS - start))s"

echo "== 4. the resources events against nvidia-smi"
timeout 25 $py bench/gpu_bench.py resources --samples 4; echo "   (exit $?) after $((SECONDS - start))s"
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv
echo "done in $((SECONDS - start))s"
