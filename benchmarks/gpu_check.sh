#!/usr/bin/env bash
# The GPU checks, in one short run (under 5 minutes on one H100/H200): the GPU tests, then the
# throughput ratios against the hand-written script and SentenceTransformer.encode on the GPU,
# packing, batched generation and (with vLLM) the engines.
#   bash benchmarks/gpu_check.sh            # from the repository root, with the venv installed
set -uo pipefail
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -m pytest -q -m "gpu or multigpu" tests/ -p no:cacheprovider
"$PY" benchmarks/bench_throughput.py --nproc "${NPROC:-1}" --rows "${ROWS:-32768}" --reps 3
# packed (FlashAttention varlen) against padded batches, alternating, in half precision
"$PY" benchmarks/bench_packing.py --device cuda --dtype float16 --rows 8192 --max-tokens 16384
"$PY" benchmarks/bench_generate.py --prompts 512 --new-tokens 32
# task.engine=vllm against engine=hf and vLLM alone (when vLLM is installed: pip install -e '.[vllm]')
if "$PY" -c "import vllm" 2>/dev/null; then
  "$PY" benchmarks/bench_engines.py --device cuda --prompts 1024 --vllm-nproc 1 --hf-nproc 1
fi
