#!/usr/bin/env bash
# First contact with a GPU machine: one prepared command that proves (or disproves) the GPU paths in ≤ 8 minutes
# on an H100/H200, and leaves every log, profile and figure under one folder.
#
#   bench/gpu_first_contact.sh [--dry-run] [OUT_DIR]        (OUT_DIR defaults to bench/out/)
#
# Steps, each with its own log (OUT_DIR/<step>.log) and a time limit, run in turn; a failing step does not stop
# the others, and the script exits non-zero if any failed. OUT_DIR/summary.txt lists each step's status and time.
#   versions     python, torch (+ CUDA, cuDNN), torchvision, Lightning, torchmetrics, hydra, omegaconf; the GPU
#   pytest_gpu   python -m pytest -m gpu, in its own process (JUnit XML in OUT_DIR/pytest_gpu.xml)
#   smoke_*      tl-train runs: gradient clipping under bf16, compiled (CUDA graphs) style transfer, AdaIN and
#                restoration, a DDP job on one GPU, a profiled run (Lightning's simple profiler)
#   nvjpeg       nvJPEG decoding of real JPEGs checked against the CPU decode (bench/nvjpeg_check.py)
#   bench        three bench/throughput.py rows, each against its hand-written loop in the same process:
#                ResNet-18 eager b512, RandAugment end to end b512, DnCNN-17 b128 (OUT_DIR/throughput.json)
#
# --dry-run runs the very same steps on the CPU at tiny sizes (CPU bf16, eager instead of CUDA graphs: inductor's
# C++ build takes minutes per model on a small CPU; 2 gloo processes instead of NCCL): CI runs it (tests/test_bench.py), so the script itself is never
# what fails on first contact.
#
# On a machine without hydra-core/omegaconf (the GPU box has torch, torchvision, Lightning, torchmetrics,
# tensorboard and scikit-image, but no package index), carry the pure-Python wheels in .whl/ (BENCHMARKS.md,
# "Running on a GPU machine"): the script installs them into a private folder and puts src/ on PYTHONPATH.
set -uo pipefail

DRY_RUN=0
OUT=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    -*) echo "error: unknown option $arg. Usage: bench/gpu_first_contact.sh [--dry-run] [OUT_DIR]" >&2; exit 2 ;;
    *) OUT="$arg" ;;
  esac
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$ROOT/bench/out}"
mkdir -p "$OUT" || { echo "error: cannot create the output folder $OUT. Pass a writable OUT_DIR" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"

# -- dependencies: installed ones, else the carried wheels ------------------------------------------------
if ! "$PYTHON" -c "import transferlab, hydra, omegaconf" 2>/dev/null; then
  if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
    SITE="${TL_CARRIED_SITE:-/tmp/transferlab-site}"
    "$PYTHON" -m pip install -q --no-index --no-deps --target "$SITE" "$ROOT"/.whl/*.whl || exit 2
    export PYTHONPATH="$SITE:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
  else
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
if ! "$PYTHON" -c "import transferlab, hydra, omegaconf, pytorch_lightning, torchmetrics" 2>"$OUT/imports.log"; then
  echo "error: transferlab's dependencies do not import ($(tail -1 "$OUT/imports.log")). Install them, or carry" \
    "hydra-core, omegaconf and antlr4 wheels in .whl/ as BENCHMARKS.md says" >&2
  exit 2
fi
TL_TRAIN=("$PYTHON" -c "from transferlab.cli import train; train()")  # tl-train, entry point installed or not

# -- sizes and device settings: the GPU run, or the same steps tiny on the CPU --------------------------
if [ "$DRY_RUN" = 1 ]; then
  TRAINER=(trainer=cpu trainer.enable_progress_bar=false)
  BF16=(trainer.precision=bf16-mixed)
  GRAPHS=null                    # CUDA graphs need CUDA, and inductor's CPU build takes minutes a model
  DDP=(trainer=ddp_sim)
  CLASSIFY=(debug=tiny)
  PHOTOS=(data=photos data.patch_size=32 data.batch_size=2 data.train_patches=4 data.val_patches=2)
  BENCH=(--smoke --no-folder)
  LIMIT=300
else
  TRAINER=(trainer=gpu trainer.enable_progress_bar=false)
  BF16=()
  GRAPHS=reduce-overhead
  DDP=(trainer=ddp trainer.devices=1)
  CLASSIFY=(debug=tiny trainer.accelerator=gpu data.train_size=2000 data.batch_size=64 trainer.max_epochs=2)
  PHOTOS=(data=photos data.patch_size=64 data.batch_size=16 data.train_patches=256 data.val_patches=16)
  BENCH=(--repeats 3 --steps 100 --no-folder)
  LIMIT=240
fi
SHORT=(trainer.max_steps=6 trainer.limit_val_batches=2 trainer.limit_test_batches=2 logger=tensorboard)

FAILED=0
: >"$OUT/summary.txt"
step() {  # step NAME TIMEOUT_S COMMAND…: run, log, time and record one step
  local name="$1" limit="$2"
  shift 2
  local started=$SECONDS status
  echo "== $name: $*" | tee -a "$OUT/summary.txt"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  status=$?
  local took=$((SECONDS - started))
  if [ "$status" = 0 ]; then
    echo "   ok ($took s)" | tee -a "$OUT/summary.txt"
  else
    FAILED=$((FAILED + 1))
    [ "$status" = 124 ] && why="timed out after $limit s" || why="exit $status"
    echo "   FAILED ($why, $took s): last lines of $OUT/$name.log" | tee -a "$OUT/summary.txt"
    tail -n 15 "$OUT/$name.log" | sed 's/^/   | /' | tee -a "$OUT/summary.txt"
  fi
}
train() {  # train NAME OVERRIDES…: one tl-train run whose directory is OUT_DIR/runs/NAME
  local name="$1"
  shift
  step "smoke_$name" "$LIMIT" "${TL_TRAIN[@]}" "$@" "hydra.run.dir=$OUT/runs/$name"
}

step versions 60 "$PYTHON" - <<'EOF'
import platform, sys
import hydra, omegaconf, pytorch_lightning as pl, torch, torchmetrics, torchvision
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("torchvision", torchvision.__version__, "lightning", pl.__version__, "torchmetrics", torchmetrics.__version__)
print("hydra", hydra.__version__, "omegaconf", omegaconf.__version__)
if torch.cuda.is_available():
    free, total = torch.cuda.mem_get_info()
    print("gpu", torch.cuda.get_device_name(), f"capability {torch.cuda.get_device_capability()}",
          f"{total / 2**30:.0f} GiB ({free / 2**30:.0f} free)", "bf16", torch.cuda.is_bf16_supported())
else:
    print("gpu: none (CPU only)")
EOF
cat "$OUT/versions.log" >>"$OUT/summary.txt"

if [ "$DRY_RUN" = 1 ]; then  # no CUDA: the GPU tests are collected (they import and parametrise), not run
  step pytest_gpu 120 "$PYTHON" -m pytest -m gpu --collect-only -q -p no:cacheprovider
else
  step pytest_gpu 300 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider -x --junitxml="$OUT/pytest_gpu.xml"
fi

train clip "${TRAINER[@]}" "${BF16[@]}" "${CLASSIFY[@]}" "${SHORT[@]}" trainer.gradient_clip_val=1.0
train style_compiled "${TRAINER[@]}" "${BF16[@]}" "${PHOTOS[@]}" "${SHORT[@]}" model=style_transfer \
  "model.compile=$GRAPHS"
train adain_compiled "${TRAINER[@]}" "${BF16[@]}" "${PHOTOS[@]}" "${SHORT[@]}" model=adain "model.compile=$GRAPHS"
train restore_compiled "${TRAINER[@]}" "${BF16[@]}" "${PHOTOS[@]}" "${SHORT[@]}" model=denoise \
  data/degrade=gaussian_noise "model.compile=$GRAPHS"
train ddp "${DDP[@]}" "${CLASSIFY[@]}" "${SHORT[@]}" trainer.enable_progress_bar=false
train profile "${TRAINER[@]}" "${BF16[@]}" "${CLASSIFY[@]}" +trainer.profiler=simple trainer.max_epochs=1 \
  trainer.limit_train_batches=20 trainer.limit_val_batches=2 trainer.limit_test_batches=2
step nvjpeg 120 "$PYTHON" bench/nvjpeg_check.py $([ "$DRY_RUN" = 1 ] && echo --cpu)
step bench 420 "$PYTHON" bench/throughput.py "${BENCH[@]}" --case eager_b512 --case e2e_randaugment_b512 \
  --case dncnn17_b128 --json "$OUT/throughput.json"

echo "== $FAILED step(s) failed; logs, runs and figures in $OUT" | tee -a "$OUT/summary.txt"
[ "$FAILED" = 0 ]
