#!/usr/bin/env bash
# Build llama-cpp-python from source if it is missing (about 7 minutes on 2 cores), train a tiny run
# llama.cpp's bitnet graph can hold, and compare llama.cpp's perplexity with bittern's on held-out text,
# for TQ2_0 and TQ1_0. HELD_OUT: a text file the run did not train on; unset, the built-in Shakespeare
# corpus's validation split (the default training data minus that split is what the run trains on).
set -euo pipefail
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/gguf-check}
STEPS=${STEPS:-300}
$PY -c "import llama_cpp" 2>/dev/null || $PY -m pip install --no-binary llama-cpp-python llama-cpp-python
if [ ! -d "$RUN" ]; then
  $PY -m bittern train --out "$RUN" --quiet --train.steps="$STEPS" \
    --model.norm_placement=sublayer --model.tie_embeddings=true \
    --model.dim=256 --model.ffn_dim=768 --model.n_layers=4 --model.n_heads=4 --model.n_kv_heads=2
fi
for t in TQ2_0 TQ1_0; do
  $PY benchmarks/llamacpp_check.py "$RUN" ${HELD_OUT:+--text "$HELD_OUT"} --gguf-type "$t" \
    --out "benchmarks/results/llamacpp_check_$t.json"
done
