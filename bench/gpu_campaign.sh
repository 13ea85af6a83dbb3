#!/usr/bin/env bash
# The GPU campaign in one command (docs/performance.md, "The GPU campaign"): on a bare machine of the
# GPU image, install the carried wheels, then run bench/gpu_campaign.py within a 9-minute budget.
#
#   bash bench/gpu_campaign.sh [--wheels DIR] [--out DIR] [--budget-s S] [--rounds N] [--dry-run]
#
# --wheels DIR (default .whl): the folder bench/fetch_gpu_wheels.sh filled; installed with --no-index
# into a private target folder put first on PYTHONPATH (nothing of the image is changed).
# --out DIR (default $OUT, else runs/gpu-campaign): every result file. --dry-run: CPU, seconds.
set -euo pipefail
started=$(date +%s)
cd "$(dirname "$0")/.."

wheels=.whl
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) wheels=$2; shift 2 ;;
        --wheels=*) wheels=${1#--wheels=}; shift ;;
        *) args+=("$1"); shift ;;
    esac
done

if compgen -G "$wheels/*.whl" >/dev/null; then
    site=${TMPDIR:-/tmp}/soar-fast-site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$wheels"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 -m bench.gpu_campaign --started "$started" --wheels "$wheels" ${args[@]+"${args[@]}"}
