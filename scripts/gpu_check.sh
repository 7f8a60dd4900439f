#!/usr/bin/env bash
# The GPU checks of impl="flex" (issue 17), for a machine with one CUDA GPU: the attention tests on
# CUDA (test_flex.py parametrises its device with cuda when torch.cuda.is_available()), then the two
# benches. Everything lands under $OUT (default ./gpu-check-out). About 10 minutes on an H200.
#   usage: OUT=/some/dir scripts/gpu_check.sh        (from the repository root)
set -u
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi; $PY -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  $PY -c "import flash_attn; print('flash_attn', flash_attn.__version__)" || echo "flash_attn: not installed"; } \
  > "$OUT/env.txt" 2>&1
# 1. correctness on CUDA: flex (compiled) and blocked against the reference, default grid
timeout 240 $PY -m pytest -q -x tests/attention/test_flex.py -k cuda > "$OUT/test_flex_cuda.txt" 2>&1
echo "test_flex cuda: exit $?" >> "$OUT/summary.txt"
# 2. attention bench: flex, blocked, transformers, dense SDPA, flash-attn (when importable), bf16 and
#    fp32, T = 4096 16384 65536; compile cost reported in its own column
for dtype in bfloat16 float32; do
  timeout 300 $PY -m longformer bench attention --device cuda --dtype "$dtype" --repeats 5 \
    --lengths 4096 16384 65536 --impls flex blocked transformers sdpa-dense flash-attn \
    --json "$OUT/bench_attention_$dtype.json" > "$OUT/bench_attention_$dtype.txt" 2>&1
  echo "bench attention $dtype: exit $?" >> "$OUT/summary.txt"
done
# 3. model bench: our encoder (blocked, then flex) against transformers' LongformerModel, T=4096
for impl in blocked flex; do
  timeout 200 $PY -m longformer bench model --device cuda --attention-impl "$impl" --layers 2 --length 4096 \
    --modes forward-fp32,forward-bf16,train-fp32 --json "$OUT/bench_model_$impl.json" > "$OUT/bench_model_$impl.txt" 2>&1
  echo "bench model $impl: exit $?" >> "$OUT/summary.txt"
done
cat "$OUT/summary.txt"
