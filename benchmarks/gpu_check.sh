#!/usr/bin/env bash
# The GPU rows of issue 12, in one call of about 9 minutes on one NVIDIA GPU (written for the project's H200
# machine: its python3 has JAX with CUDA, PyTorch with CUDA, transformers, flax, optax; nothing is downloaded).
#
#     bash benchmarks/gpu_check.sh                 # results under $OUT (or benchmarks/results/runs/gpu-<time>)
#
# Through the device tool, from the repository root (no carry needed; the L12-shaped random checkpoint is
# built there with transformers, and pairs are random token ids when the packaged tokenizer is absent):
#
#     run(command="bash benchmarks/gpu_check.sh", timeout_s=600)
#
# Stages, each bounded by `timeout` so that the call ends inside the tool's 10-minute limit and every JSON
# written so far comes back (the benchmarks rewrite their JSON after every row). Default order "1 2 4 3":
#   1. environment: GPU, versions, `import jaxmech`, one fp32 forward against PyTorch on the GPU.
#   2. compile time (bench_compile.py, L12 shapes, fresh processes): cold and warm persistent cache for
#      head_by_pos_z and block_every at fp32 (target: first call <= 5 s, rerun from the cache < 1 s).
#      "2b" (opt-in): head_by_pos_z again with XLA's autotuning off and with Triton GEMMs off.
#   4. the README's main job (configs/demo.toml, packaged model, compilation cache off) in one process:
#      programs per family and bucket, compile seconds against wall time (target: compile < a tenth of the
#      wall), and the pairs_per_chunk chosen from compiled memory (benchmarks/count_programs.py).
#      GPU_CHECK_TINY=1 runs it on a narrow random model instead (the CPU dry run).
#   3. throughput (bench_patching.py, L12 shapes, every position): fp32 for four families against the PyTorch
#      loop and batched hooks (B = 128, 512) on the same GPU with TF32 off; tf32, bf16x3 and bf16 for
#      head_by_pos_z with their error against fp32; attribution patching. Every row has FLOPs per site and
#      the fraction of the matmul rate measured in the same run.
# Record the JSON files in benchmarks/results/ (bench_compile_gpu*.json, bench_patching_gpu.json,
# programs_demo_gpu.json) with the device named, and the numbers in README's benchmark section.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
OUT="${OUT:-benchmarks/results/runs/gpu-$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
export JAXMECH_CACHE="${JAXMECH_CACHE:-/tmp/jaxmech-gpu-check}"
PY="${PYTHON:-python3}"
LOG="$OUT/gpu_check.log"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
say() { echo "[$(elapsed) s] $*" | tee -a "$LOG"; }

STAGES="${GPU_CHECK_STAGES:-1 2 4 3}"  # e.g. GPU_CHECK_STAGES=1 for a dry run of the environment check
has() { case " $STAGES " in *" $1 "*) return 0;; *) return 1;; esac; }

if has 1; then
say "stage 1: environment"
{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; "$PY" - <<'EOF'
import jax, torch, transformers, flax
print("jax", jax.__version__, jax.devices(), "| torch", torch.__version__, torch.cuda.is_available(),
      "| transformers", transformers.__version__, "| flax", flax.__version__)
import numpy as np
from transformers import BertConfig, BertForSequenceClassification
import jaxmech
from jaxmech import runtime
from jaxmech.config import MINILM_L12_H384
from jaxmech.config import EncoderConfig
from jaxmech.hf.convert import from_hf_state_dict
print(runtime.device_line(), runtime.compilation_cache_status())
torch.manual_seed(0)
hf = BertForSequenceClassification(BertConfig(**{**MINILM_L12_H384.to_hf_config(), "architectures": None,
                                                 "num_labels": 1})).eval()
model, _ = from_hf_state_dict({k: v.numpy() for k, v in hf.state_dict().items()},
                              EncoderConfig.from_hf_config(hf.config), "cross")
import jax.numpy as jnp
dev = "cuda" if torch.cuda.is_available() else "cpu"
ids = np.random.RandomState(0).randint(1000, 30000, (4, 128))
tt, mask = np.zeros_like(ids), np.ones_like(ids)
torch.set_float32_matmul_precision("highest")
with torch.no_grad():
    ref = hf.to(dev)(input_ids=torch.tensor(ids).to(dev), attention_mask=torch.tensor(mask).to(dev)).logits[:, 0]
ref = ref.cpu().numpy()
for name in runtime.PRECISIONS:
    with runtime.precision(name):
        ours = np.asarray(jax.jit(lambda m, a, b, c: m(a, b, c).score)(model, *map(jnp.asarray, (ids, tt, mask))))
    print(f"{name}: max |jaxmech - torch fp32 ({dev})| = {np.abs(ours - ref).max():.2e} (logits ~{np.abs(ref).max():.2f})")
EOF
} 2>&1 | tee -a "$LOG" | tail -n 12
fi

if has 2; then
say "stage 2: compile time"
timeout 230 "$PY" benchmarks/bench_compile.py --setups l12 --families head_by_pos_z,block_every --out "$OUT" \
    2>&1 | tee -a "$LOG" | grep -v Warning
fi

if has 2b; then
say "stage 2b: compile time without autotuning, without Triton GEMMs"
timeout 110 "$PY" benchmarks/bench_compile.py --setups l12 --families head_by_pos_z --no-warm --out "$OUT" \
    --xla-flags=--xla_gpu_autotune_level=0 --tag autotune0 2>&1 | tee -a "$LOG" | grep -v Warning
timeout 90 "$PY" benchmarks/bench_compile.py --setups l12 --families head_by_pos_z --no-warm --out "$OUT" \
    --xla-flags=--xla_gpu_enable_triton_gemm=false --tag no_triton_gemm 2>&1 | tee -a "$LOG" | grep -v Warning
fi

if has 4; then
say "stage 4: the main job's programs and compile share (configs/demo.toml)"
tiny=""; [ "${GPU_CHECK_TINY:-0}" = 1 ] && tiny="--tiny"
timeout 240 "$PY" benchmarks/count_programs.py demo $tiny --label demo_gpu --out "$OUT/programs_demo_gpu.json" \
    2>&1 | tee -a "$LOG" | grep -v Warning | tail -n 30
fi

if has 3; then
say "stage 3: throughput (the compilation cache of stage 2 is warm for its programs)"
left=$(( 560 - $(elapsed) ))
if [ "$left" -gt 60 ]; then
  timeout "$left" "$PY" benchmarks/bench_patching.py --setups l12 \
      --families head_by_pos_z,block_every,head_all_pos_v,path_to_score --fast-families head_by_pos_z \
      --precisions fp32,tf32,bf16x3,bf16 --batch-sizes 128,512 --torch-sites 400 --repeats 3 --out "$OUT" \
      2>&1 | tee -a "$LOG" | grep -v Warning
else
  say "skipped: only $left s left"
fi
fi
say "done; files in $OUT:"
ls -la "$OUT" | tee -a "$LOG"
