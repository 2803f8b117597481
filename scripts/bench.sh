#!/usr/bin/env bash
# Benchmarks of issue #8 (docs/PERFORMANCE.md): builds the release node and the inference
# example, creates a loopback-only network namespace (DCMTK storescp binds 0.0.0.0; nothing
# may reach the network), runs integration/bench.py inside it and removes it at exit.
# Prints a Markdown table and writes out/bench/bench.json (+ bench.md).
#
#   scripts/bench.sh [bench.py options]     e.g. --quick, --sections receive, --repeat 5
#
# Needs root (ip netns), DCMTK (storescp/storescu), the Python venv of scripts/setup.sh and the
# ONNX Runtime library (scripts/fetch-onnxruntime.sh) for the inference section.
# Environment:
#   MYONODE_DATA        test data (default <repo>/../shared/data)
#   MYONODE_PYTHON      interpreter with pydicom/numpy/onnx (default .venv/bin/python)
#   BENCH_COMPARE_BIN   an earlier myonode binary: measured as `myonode-before` in the same run
#   BENCH_NETNS         namespace name (default myo-bench-$$)
#   CARGO_BUILD_JOBS    build parallelism (default 1: the machine may be shared)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
python=${MYONODE_PYTHON:-$repo/.venv/bin/python}
ns=${BENCH_NETNS:-myo-bench-$$}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}
export MYONODE_DATA=${MYONODE_DATA:-$repo/../shared/data}

[[ $(id -u) -eq 0 ]] || { echo "bench: needs root for ip netns" >&2; exit 1; }
for t in storescp storescu ip; do command -v $t >/dev/null || { echo "bench: $t not found" >&2; exit 1; }; done

echo "==> cargo build --release (node and examples/bench_inference)"
cargo build --release --bin myonode --example bench_inference

cleanup() { ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up

extra=()
[[ -n ${BENCH_COMPARE_BIN:-} ]] && extra+=(--compare-bin "$BENCH_COMPARE_BIN")
echo "==> integration/bench.py in network namespace $ns (loopback only)"
ip netns exec "$ns" env TCP_NODELAY=1 "$python" integration/bench.py \
    --bin "$repo/target/release/myonode" --inference-bin "$repo/target/release/examples/bench_inference" \
    "${extra[@]}" "$@"
