#!/usr/bin/env bash
# The GPU checks of impl="flex" (issue 17), for a machine with one CUDA GPU, in about 10 minutes:
# the attention tests on CUDA (test_flex.py parametrises its device with cuda when
# torch.cuda.is_available()), then the two benches. Everything lands under $OUT.
#   usage: OUT=/some/dir scripts/gpu_check.sh        (from the repository root)
# Each step has its own timeout, so a slow compile cannot eat the others' time; a step that times
# out still leaves its partial output (and "exit 124" in summary.txt).
set -u
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi; $PY -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  $PY -c "import flash_attn; print('flash_attn', flash_attn.__version__)" || echo "flash_attn: not installed"; } \
  > "$OUT/env.txt" 2>&1
step() {  # name, timeout in s, command...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "$name: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}
# 1. correctness on CUDA: compiled flex (and blocked) against the reference, default grid + dropout
step test_flex_cuda 150 $PY -m pytest -q -x tests/attention/test_flex.py -k cuda --durations=10
# 2. attention bench in bf16 (flash SDPA and flash-attn need 16-bit): flex, blocked, transformers,
#    dense SDPA, flash-attn's window_size, T = 4096 16384 65536; flex's compile time in its own column
step bench_attention_bf16 300 $PY -m longformer bench attention --device cuda --dtype bfloat16 --repeats 5 \
  --lengths 4096 16384 65536 --impls flex blocked transformers sdpa-dense flash-attn \
  --json "$OUT/bench_attention_bf16.json"
# 3. model bench: our encoder with flex attention against transformers' LongformerModel, T=4096
step bench_model_flex 150 $PY -m longformer bench model --device cuda --attention-impl flex --layers 2 \
  --length 4096 --modes forward-bf16,train-fp32 --json "$OUT/bench_model_flex.json"
