#!/usr/bin/env bash
# The CUDA checks of issue 16, as one prepared script for a lent GPU machine (it has never run: no GPU was lent
# so far). From the repository root:
#
#     bash benchmarks/gpu_check.sh        # writes its report to $OUT (or ./gpu-check) and prints it
#
# 1. float32 parity of the CUDA path against the CPU path (max |logit difference| <= 1e-4, TF32 off);
# 2. float16 and bfloat16 agreement with float32 on CUDA (max/mean |logit difference|, top-1 and top-5 agreement);
# 3. `mvit bench` for every variant and dtype on CUDA (default batch and batch 1);
# 4. a 2-process NCCL `eval` equal to the CPU's (counts) on a generated set.
# Figures go to benchmarks/RESULTS.md by hand. Needs about 6 minutes with a fresh venv.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check}
mkdir -p "$OUT"
report="$OUT/report.txt"
exec > >(tee "$report") 2>&1

if [ ! -x .venv-gpu/bin/python ]; then
  python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install -q "torch>=2.1,<3" && .venv-gpu/bin/pip install -q -e '.[test]'
fi
PY=.venv-gpu/bin/python
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

echo "== 1-2. parity and agreement"
$PY - <<'EOF'
import torch
from mvit_cli import runners
from mvit_cli.random_weights import random_model, structured_images

x = structured_images(16, 256, seed=3)
for variant in ("xxs", "xs", "s"):
    model = random_model(variant)
    cpu = runners.prepare(model, torch.device("cpu"))(x)
    gpu = runners.prepare(model, torch.device("cuda"))(x)
    print(f"{variant} float32 cuda vs cpu: max |diff| {float((gpu - cpu).abs().max()):.2e} (bound 1e-4)")
    for dtype in ("float16", "bfloat16"):
        if dtype not in runners.native_dtypes(torch.device("cuda")):
            print(f"{variant} {dtype}: not native here")
            continue
        out = runners.prepare(model, torch.device("cuda"), dtype=dtype)(x)
        d = (out - gpu).abs()
        top1 = float((out.argmax(1) == gpu.argmax(1)).float().mean())
        top5 = sum(set(a.topk(5).indices.tolist()) == set(b.topk(5).indices.tolist()) for a, b in zip(out, gpu)) / len(x)
        print(f"{variant} {dtype}: max |diff| {float(d.max()):.3f} mean {float(d.mean()):.4f} top-1 {top1:.0%} top-5 {top5:.0%}")
EOF

echo "== 3. bench"
for variant in xxs xs s; do
  for dtype in float32 float16 bfloat16; do
    for batch in 1 64; do
      $PY -m mvit_cli bench -m "$variant" --device cuda --dtype "$dtype" -b "$batch" --format json \
        | $PY -c "import json,sys; r=json.load(sys.stdin); print(r['variant'], r['dtype'], r['batch_size'], round(r['images_per_second'],1), 'img/s', round(r['latency_ms'],2), 'ms')" \
        || echo "$variant $dtype $batch: refused or failed"
    done
  done
done

echo "== 4. 2-process NCCL eval vs CPU"
$PY - <<'EOF'
import json, os, subprocess, sys, tempfile
from pathlib import Path
sys.path.insert(0, "tests")
from eval_helpers import make_checkpoint, make_val_set, write_class_folders
root = Path(tempfile.mkdtemp())
model = make_checkpoint(root / "w.safetensors")
val = write_class_folders(make_val_set(model, root / "staged", 41), root / "val")
cpu = json.loads(subprocess.run([sys.executable, "-m", "mvit_cli", "eval", str(val), "--weights", str(root / "w.safetensors"),
                                 "--device", "cpu", "--format", "json"], capture_output=True, text=True).stdout)
run = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2", "-m", "mvit_cli", "eval",
                      str(val), "--weights", str(root / "w.safetensors"), "--device", "cuda", "--format", "json"],
                     capture_output=True, text=True)
gpu = json.loads(run.stdout)
print("cpu", cpu["images"], cpu["top1"], cpu["top5"], "| nccl x2", gpu["images"], gpu["top1"], gpu["top5"],
      "| equal" if (cpu["top1"], cpu["top5"], cpu["images"]) == (gpu["top1"], gpu["top5"], gpu["images"]) else "| DIFFERENT")
EOF
echo "report: $report"
