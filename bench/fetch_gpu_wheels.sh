#!/usr/bin/env bash
# Fill DIR with the wheels the GPU image lacks (docs/performance.md, "The GPU campaign"), for its
# Python 3.12 on x86-64: pure-Python or cp312 manylinux wheels only, no dependencies resolved here
# (the image has them), at most 40 MB in all. The campaign installs them with --no-index.
#
#   bash bench/fetch_gpu_wheels.sh .whl
#
# The image (Python 3.12, torch 2.11 + CUDA 13, triton 3.6, accelerate, transformers, safetensors 0.8,
# huggingface-hub 1.33, pytest-benchmark, hypothesis, peft) lacks diffusers and its one missing
# requirement, importlib_metadata. torchao is left out: its wheels are built against one torch
# release, and the float8 / 8-bit-optimizer rows that need it are skipped with that reason.
set -euo pipefail
dir=${1:?usage: bench/fetch_gpu_wheels.sh DIR}
limit_mb=40
wheels=(diffusers==0.42.1 importlib_metadata==10.2.0)

mkdir -p "$dir"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dir" "${wheels[@]}"

total=0
for whl in "$dir"/*.whl; do
    case "$(basename "$whl")" in
        *-py3-none-any.whl | *-cp312-*manylinux*x86_64*.whl | *-abi3-*manylinux*x86_64*.whl) ;;
        *) echo "fetch_gpu_wheels: $whl is neither pure Python nor a cp312 manylinux x86-64 wheel" >&2; exit 1 ;;
    esac
    total=$((total + $(stat -c %s "$whl")))
done
# The device machine gets a copy of the tree without git: the campaign reads the commit from here.
(cd "$(dirname "$0")/.." && git rev-parse HEAD 2>/dev/null || echo unknown) > "$dir/commit.txt"
echo "fetch_gpu_wheels: $(ls "$dir"/*.whl | wc -l) wheels, $((total / 1000000)) MB in $dir"
if [ "$total" -gt $((limit_mb * 1000000)) ]; then
    echo "fetch_gpu_wheels: $dir holds more than $limit_mb MB" >&2
    exit 1
fi
