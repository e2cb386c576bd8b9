#!/usr/bin/env bash
# Build llama-cpp-python from source if it is missing (about 7 minutes on 2 cores), then compare
# llama.cpp's perplexity with bittern's on held-out text for the built-in job's own run
# (`make train`: configs/shakespeare-tiny.toml into runs/shakespeare-tiny, trained here if it is
# missing), for TQ2_0 and TQ1_0. Its rows (128 and 352 codes) are not whole 256-code TQ blocks,
# so both types store its projections as F16; RUN= another run to check TQ blocks themselves.
# HELD_OUT: a text file the run did not train on; unset, the built-in Shakespeare corpus's
# validation split (the default training data minus that split is what the run trains on).
# STEPS=N trains a missing run for N steps instead of the job's 600.
set -euo pipefail
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/shakespeare-tiny}
$PY -c "import llama_cpp" 2>/dev/null || $PY -m pip install --no-binary llama-cpp-python llama-cpp-python
if [ ! -d "$RUN" ]; then
  $PY -m bittern train --config configs/shakespeare-tiny.toml --out "$RUN" --quiet ${STEPS:+--train.steps="$STEPS"}
fi
for t in TQ2_0 TQ1_0; do
  $PY benchmarks/llamacpp_check.py "$RUN" ${HELD_OUT:+--text "$HELD_OUT"} --gguf-type "$t" \
    --out "benchmarks/results/llamacpp_check_$(basename "$RUN")_$t.json"
done
