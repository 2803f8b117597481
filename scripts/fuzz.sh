#!/usr/bin/env bash
# Bounded coverage-guided fuzzing of the network-facing parsers (cargo-fuzz, libFuzzer;
# targets in fuzz/, see fuzz/README.md). Used by scripts/setup.sh (setup) and
# scripts/test.sh (run, after the main tests).
#
#   scripts/fuzz.sh setup   install the pinned cargo-fuzz and fetch the fuzz crate's
#                           dependencies (needs the network; idempotent)
#   scripts/fuzz.sh run     build the targets, then run each for MYONODE_FUZZ_SECONDS
#                           (offline). Exit 0 when no target found anything; otherwise
#                           non-zero, with the reproducer's path printed as
#                           "[fuzz] REPRODUCER <target> <path>".
#
# The repository's corpus (fuzz/corpus/<target>/) is only read: libFuzzer writes the new
# inputs it finds to out/fuzz/corpus/<target>/ (scratch, not committed), findings to
# out/fuzz/artifacts/<target>/. Updating the seed corpus is a manual step (fuzz/README.md).
#
# cargo-fuzz passes nightly -Z flags (-Zsanitizer=address, ...) to rustc; on the stable
# toolchain RUSTC_BOOTSTRAP=1 allows them. Built without AddressSanitizer (safe Rust; see fuzz/README.md).
#
# Environment (defaults in brackets):
#   MYONODE_FUZZ_SECONDS    seconds per target                                 [60]
#   MYONODE_FUZZ_TARGETS    space-separated targets                            [all in fuzz/Cargo.toml]
#   MYONODE_FUZZ_RSS_MB     libFuzzer -rss_limit_mb (a bigger allocation is a finding) [1024]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

# Pinned: the version whose build flags and libFuzzer options this script was measured with.
CARGO_FUZZ_VERSION=0.13.2

log() { printf '[fuzz] %s\n' "$*" >&2; }
die() { printf '[fuzz] ERROR: %s\n' "$*" >&2; exit 2; }

export RUSTC_BOOTSTRAP=1

have_cargo_fuzz() {
    [[ $(cargo fuzz --version 2>/dev/null || true) == "cargo-fuzz $CARGO_FUZZ_VERSION"* ]]
}

# The fuzz crate is its own workspace; its lock file starts from the node's Cargo.lock so it
# builds the same dependency versions as `cargo test`, plus libfuzzer-sys.
sync_lock() {
    cp Cargo.lock fuzz/Cargo.lock
}

setup() {
    if have_cargo_fuzz; then
        log "cargo-fuzz $CARGO_FUZZ_VERSION installed"
    else
        log "cargo install cargo-fuzz --version $CARGO_FUZZ_VERSION --locked"
        cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
    fi
    sync_lock
    cargo fetch --manifest-path fuzz/Cargo.toml
}

run() {
    have_cargo_fuzz || die "cargo-fuzz $CARGO_FUZZ_VERSION is not installed: run scripts/fuzz.sh setup"
    local seconds=${MYONODE_FUZZ_SECONDS:-60} rss=${MYONODE_FUZZ_RSS_MB:-1024}
    local targets=${MYONODE_FUZZ_TARGETS:-$(cargo fuzz list)}
    [[ -f fuzz/Cargo.lock ]] || sync_lock
    local t0=$SECONDS
    log "cargo fuzz build (release, debug assertions, no sanitizer)"
    cargo fuzz build -O --debug-assertions --sanitizer none
    log "built in $((SECONDS - t0)) s"
    local failed=0 target
    for target in $targets; do
        local corpus=$repo/out/fuzz/corpus/$target artifacts=$repo/out/fuzz/artifacts/$target
        rm -rf "$artifacts"
        mkdir -p "$corpus" "$artifacts"
        local t1=$SECONDS rc=0
        log "$target: ${seconds} s from fuzz/corpus/$target"
        # first corpus folder = where new inputs go (scratch); the seed folder is only read
        cargo fuzz run -O --debug-assertions --sanitizer none "$target" "$corpus" "$repo/fuzz/corpus/$target" -- \
            -max_total_time="$seconds" -timeout=10 -rss_limit_mb="$rss" -artifact_prefix="$artifacts/" -print_final_stats=1 || rc=$?
        local found
        found=$(find "$artifacts" -type f | sort)
        if ((rc != 0)) || [[ -n $found ]]; then
            failed=1
            log "$target: FAILED (exit $rc) after $((SECONDS - t1)) s"
            for f in $found; do
                echo "[fuzz] REPRODUCER $target $f"
                echo "[fuzz]   reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a -s none $target $f"
            done
        else
            log "$target: no finding in $((SECONDS - t1)) s; $(find "$corpus" -type f | wc -l) new inputs in $corpus (not committed)"
        fi
    done
    log "total $((SECONDS - t0)) s"
    return $failed
}

case ${1:-} in
    setup) setup ;;
    run) run ;;
    *) die "usage: scripts/fuzz.sh setup|run" ;;
esac
