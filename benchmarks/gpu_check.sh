#!/usr/bin/env bash
# The whole GPU check in one call of a lent CUDA machine (no network; it already holds torch,
# transformers, peft, sentence-transformers, scikit-learn and pyarrow):
#   make gpu-wheels                      # here, once: pytest's wheels into .gpu-wheels/ (ignored)
#   device run: bash benchmarks/gpu_check.sh   with carry [".gpu-wheels"]
# Runs the gpu-marked tests (CUDA against CPU) and benchmarks/bench_gpu.py on randomly
# initialised models of the real configs (nothing downloaded); writes gpu_tests.txt, gpu.md and
# gpu.json into $OUT (or ./gpu-out), to be pasted into docs/benchmarks.md's GPU block.
set -uo pipefail
out="$(realpath -m "${OUT:-gpu-out}")"
mkdir -p "$out"
export PYTHONPATH="$PWD" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_tests.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu_tests.txt"
python -m pytest --version >/dev/null 2>&1 \
  || python -m pip install -q --no-index --find-links .gpu-wheels pytest \
  || echo "pytest not installable: carry .gpu-wheels (make gpu-wheels)"
python -m pytest -q -rs -p no:cacheprovider -o addopts="" tests/test_gpu.py 2>&1 | tail -25 \
  | tee -a "$out/gpu_tests.txt"
(cd benchmarks && timeout 420 python bench_gpu.py --json "$out/gpu.json") 2>&1 | tail -40 \
  | tee "$out/gpu_bench.txt"
cp benchmarks/results/gpu.md "$out/gpu.md" 2>/dev/null || true
