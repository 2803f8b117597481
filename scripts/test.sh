#!/usr/bin/env bash
# Run every test of myonode: set up (scripts/setup.sh), then the Rust unit and
# integration tests (cargo test), then the end-to-end pytest suite
# (integration/) that drives the built node with DCMTK and checks its DICOM-SEG.
#
# Both runners always run; the script exits non-zero if either failed.
# Then a bounded cargo-fuzz run of the parser fuzz targets (scripts/fuzz.sh, 60 s per target).
# Full logs: out/test/cargo-test.log, out/test/pytest.log, out/test/fuzz.log.
#
# Environment (defaults in brackets):
#   MYONODE_DATA     test data folder      [<repo>/../shared/data]
#   MYONODE_PYTHON   python for the tests  [<repo>/.venv/bin/python]
#   MYONODE_BIN      node binary under test [<repo>/target/debug/myonode]
#   PYTEST_ARGS      extra pytest arguments, e.g. "-k walking -x"
#   MYONODE_FUZZ=0   skip the bounded cargo-fuzz run (scripts/fuzz.sh) after the tests [1 = run]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

export MYONODE_DATA=${MYONODE_DATA:-$repo/../shared/data}
export MYONODE_PYTHON=${MYONODE_PYTHON:-$repo/.venv/bin/python}
export MYONODE_BIN=${MYONODE_BIN:-$repo/target/debug/myonode}
# DCMTK tools started by tests: no Nagle delay per instance.
export TCP_NODELAY=1

scripts/setup.sh

if [[ ! -d $MYONODE_DATA ]]; then
    echo "[test] ERROR: MYONODE_DATA=$MYONODE_DATA is not a directory (the shared test data must sit at ../shared/data or be named by MYONODE_DATA)" >&2
    exit 1
fi
MYONODE_DATA=$(cd "$MYONODE_DATA" && pwd)
if [[ ! -x $MYONODE_PYTHON ]]; then
    echo "[test] ERROR: MYONODE_PYTHON=$MYONODE_PYTHON is not an executable python (scripts/setup.sh creates .venv)" >&2
    exit 1
fi
echo "[test] MYONODE_DATA=$MYONODE_DATA MYONODE_PYTHON=$MYONODE_PYTHON MYONODE_BIN=$MYONODE_BIN" >&2

logdir=out/test
mkdir -p "$logdir"

# Isolation: DCMTK's storescp (the test PACS) has no bind option and listens on every
# interface. As root, run both runners inside a network namespace of our own that has
# only a loopback interface, so no test server is reachable from, and no test traffic
# can leave for, any other network. The namespace is removed on exit.
# MYONODE_TEST_NETNS=0 disables this (servers then still get only loopback traffic).
isolate=()
if [[ ${MYONODE_TEST_NETNS:-1} != 0 && $(id -u) -eq 0 ]] && command -v ip >/dev/null 2>&1; then
    netns="myonode-test-$$"
    if ip netns add "$netns" 2>/dev/null && ip netns exec "$netns" ip link set lo up; then
        trap 'ip netns del "$netns" 2>/dev/null || true' EXIT
        isolate=(ip netns exec "$netns")
        echo "[test] running the tests in network namespace $netns (loopback only)" >&2
    else
        ip netns del "$netns" 2>/dev/null || true
        echo "[test] WARNING: could not create a network namespace; running tests in the host namespace" >&2
    fi
fi
# Everything was built by setup.sh; the runners must not need the network.
export CARGO_NET_OFFLINE=true

echo "[test] cargo test" >&2
set +e
"${isolate[@]}" cargo test 2>&1 </dev/null | tee "$logdir/cargo-test.log"
cargo_rc=${PIPESTATUS[0]}
echo "[test] pytest integration/" >&2
# shellcheck disable=SC2086  # PYTEST_ARGS is a word list on purpose
"${isolate[@]}" "$MYONODE_PYTHON" -m pytest integration -ra ${PYTEST_ARGS:-} 2>&1 </dev/null | tee "$logdir/pytest.log"
pytest_rc=${PIPESTATUS[0]}
# Bounded coverage-guided fuzzing (60 s per target; scripts/fuzz.sh): a finding fails the run
# and its reproducer path is printed ("[fuzz] REPRODUCER ...", file under out/fuzz/artifacts/).
fuzz_rc=0
if [[ ${MYONODE_FUZZ:-1} != 0 ]]; then
    echo "[test] fuzz (scripts/fuzz.sh run)" >&2
    scripts/fuzz.sh run 2>&1 </dev/null | tee "$logdir/fuzz.log"
    fuzz_rc=${PIPESTATUS[0]}
fi
set -e

echo
echo "==================== summary ===================="
echo "cargo test (exit $cargo_rc):"
grep -E '^ +Running |^ +Doc-tests |^test result:|^error(\[|:)|^failures:$' "$logdir/cargo-test.log" | sed -E 's/^ +//; s/^/  /' || echo "  (no result lines: see $logdir/cargo-test.log)"
echo "pytest (exit $pytest_rc):"
grep -E '^(FAILED|ERROR) |^=+ .*(passed|failed|error|skipped|no tests ran).* =+$' "$logdir/pytest.log" | sed 's/^/  /' || echo "  (no summary line: see $logdir/pytest.log)"
if [[ ${MYONODE_FUZZ:-1} != 0 ]]; then
    echo "fuzz (exit $fuzz_rc):"
    grep -E '^\[fuzz\] (REPRODUCER|.*: (no finding|FAILED)|total)' "$logdir/fuzz.log" | sed 's/^/  /' || echo "  (no result lines: see $logdir/fuzz.log)"
fi
echo "================================================="

if ((cargo_rc != 0)); then exit "$cargo_rc"; fi
if ((pytest_rc != 0)); then exit "$pytest_rc"; fi
exit "$fuzz_rc"
