#!/usr/bin/env bash
# Every GPU measurement of the speed work in one run, sized for about 8 minutes on one H100 or H200: the CUDA tests
# (the graphed chain bit for bit), the reverse chain four ways, minibigr against the authors' loop on the BiGR-L
# shape (bf16) with the chain eager and from CUDA graphs, and the compiled training loss. Needs only python3 with
# torch, numpy, safetensors, pytest and hypothesis; minibigr is imported from this checkout. Each step's output is
# also written to LOG_DIR/<step>.log.
#
#     bash benchmarks/gpu_check.sh [LOG_DIR]          # default runs/gpu-check
set -uo pipefail
log_dir=${1:-runs/gpu-check}
mkdir -p "$log_dir"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

step() {   # step NAME SECONDS COMMAND...: run COMMAND for at most SECONDS, its output to the screen and the log
    local name=$1 seconds=$2
    shift 2
    echo "== $name: $*"
    timeout "$seconds" "$@" 2>&1 | tee "$log_dir/$name.log"
}

nvidia-smi -L 2>&1 | tee "$log_dir/gpu.log"
step tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py
step chain 60 python3 benchmarks/chain_compile.py --device cuda --bf16 --tokens 16384 --steps 100 --repeat 5
step graphs 150 python3 benchmarks/vs_official.py --device cuda --configs BiGR-L --repeat 2 --cuda-graphs
step eager 150 python3 benchmarks/vs_official.py --device cuda --configs BiGR-L --repeat 2
step compile 120 python3 benchmarks/vs_official.py --device cuda --configs BiGR-L --repeat 2 --compile
