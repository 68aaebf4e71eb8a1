#!/usr/bin/env bash
# One-shot check for a lent GPU: GPU parity of kernels and backends, then the speed table,
# within five minutes; results (JSON, CSV, PNG, log) go to OUTDIR.
#   benchmarks/gpu_check.sh OUTDIR            on a CUDA machine
#   benchmarks/gpu_check.sh OUTDIR --dry-run  the same code at tiny sizes on a CPU (CI)
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: $0 OUTDIR [--dry-run]" >&2; exit 2; fi
here="$(cd "$(dirname "$0")" && pwd)"
exec python "$here/gpu_check.py" "$@"
