#!/usr/bin/env bash
# Prepare a machine to build and test myonode. Idempotent and fast when done.
#
#   1. System tools (Debian/Ubuntu apt, needs root): orthanc (the PACS of
#      integration/test_orthanc.py), dcmtk (storescp, storescu,
#      echoscu, dcmdump — the PACS and scanner in tests and the demo), cmake and
#      pkg-config (native builds of codec crates), python3-venv. Skipped when the
#      tools are already on PATH, so it also runs without root once set up.
#   2. <repo>/.venv with the pinned Python tools of integration/requirements.txt
#      (pydicom, highdicom, dciodvfy, pytest, ...). Re-installed only when the
#      requirements file changed.
#   3. cargo build --all-targets (debug build of the node and all tests).
#   5. the pinned cargo-fuzz and the fuzz crate's dependencies (scripts/fuzz.sh setup), for the
#      bounded fuzz run of scripts/test.sh; skipped with MYONODE_FUZZ=0.
#
# Environment:
#   PYTHON                  interpreter that creates the venv (default: python3)
#   MYONODE_SKIP_CARGO=1    skip step 3
#   MYONODE_SKIP_VIEWER=1   skip the viewer test's Orthanc, Chromium, Node.js, OHIF
#   MYONODE_FUZZ=0          do not install cargo-fuzz (step 5; see fuzz/README.md)
#   CI                      honoured implicitly: nothing here reads stdin
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- 1. apt
python=${PYTHON:-python3}
missing_pkgs=()
for tool in storescp storescu echoscu dcmdump; do
    if ! command -v "$tool" >/dev/null 2>&1; then missing_pkgs+=(dcmtk); break; fi
done
command -v cmake >/dev/null 2>&1 || missing_pkgs+=(cmake)
command -v pkg-config >/dev/null 2>&1 || missing_pkgs+=(pkg-config)
if ! command -v "$python" >/dev/null 2>&1; then
    missing_pkgs+=(python3 python3-venv)
elif ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # Debian splits venv/ensurepip out of python3.
    missing_pkgs+=(python3-venv)
fi
# `ip netns`: scripts/test.sh runs the tests in a loopback-only network namespace.
command -v ip >/dev/null 2>&1 || missing_pkgs+=(iproute2)
# dcm2niix: the peer whose geometry the assemble tests compare with (tests/assemble_peers.rs).
command -v dcm2niix >/dev/null 2>&1 || missing_pkgs+=(dcm2niix)
# A C toolchain for crates with native parts (cc crate).
command -v cc >/dev/null 2>&1 || missing_pkgs+=(build-essential)
# Orthanc: the PACS of integration/test_orthanc.py (the test starts its own instance).
command -v Orthanc >/dev/null 2>&1 || missing_pkgs+=(orthanc)
# Headless browser for the status-page test (integration/test_service.py).
command -v chromium >/dev/null 2>&1 || missing_pkgs+=(chromium)
# systemd-analyze verify of systemd/myonode.service (tests/systemd_unit.rs).
command -v systemd-analyze >/dev/null 2>&1 || missing_pkgs+=(systemd)
# openssl CLI: integration/test_tls.py makes a throwaway CA and certificates for DICOM TLS.
command -v openssl >/dev/null 2>&1 || missing_pkgs+=(openssl)

# Viewer test (integration/test_viewer.py, issue #9): Orthanc with its DICOMweb
# plugin as the PACS, Chromium driven by Node.js (playwright-core) running OHIF.
# MYONODE_SKIP_VIEWER=1 skips these installs (the viewer test then skips too).
if [[ ${MYONODE_SKIP_VIEWER:-0} != 1 ]]; then
    [[ -x /usr/sbin/Orthanc ]] || command -v Orthanc >/dev/null 2>&1 || missing_pkgs+=(orthanc)
    [[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]] || missing_pkgs+=(orthanc-dicomweb)
    command -v chromium >/dev/null 2>&1 || missing_pkgs+=(chromium)
    command -v node >/dev/null 2>&1 || missing_pkgs+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing_pkgs+=(npm)
fi

if ((${#missing_pkgs[@]})); then
    mapfile -t missing_pkgs < <(printf '%s\n' "${missing_pkgs[@]}" | sort -u)
    log "installing system packages: ${missing_pkgs[*]}"
    command -v apt-get >/dev/null 2>&1 \
        || die "missing ${missing_pkgs[*]} and no apt-get: install them with your package manager"
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo_cmd=(sudo -n env DEBIAN_FRONTEND=noninteractive)
        else
            die "missing ${missing_pkgs[*]}: run this script as root once (apt-get install -y ${missing_pkgs[*]})"
        fi
    else
        sudo_cmd=()
    fi
    "${sudo_cmd[@]}" apt-get update -q </dev/null
    "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing_pkgs[@]}" </dev/null
    # The package enables a system Orthanc service (ports 4242/8042 on all interfaces) on
    # systemd hosts; the tests do not use it.
    if [[ " ${missing_pkgs[*]} " == *" orthanc "* ]] && command -v systemctl >/dev/null 2>&1 \
        && systemctl is-enabled --quiet orthanc 2>/dev/null; then
        "${sudo_cmd[@]}" systemctl disable --now orthanc || log "could not disable the orthanc service"
    fi
else
    log "system tools present (dcmtk, orthanc, cmake, pkg-config, python venv): apt skipped"
fi

# ---------------------------------------------------------------- 2. venv
req=integration/requirements.txt
venv=.venv
stamp=$venv/.myonode-requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "creating $venv with $("$python" --version 2>&1)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    rm -f "$stamp"
fi
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    log "installing $req into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input -r "$req" </dev/null
    echo "$want" >"$stamp"
else
    log "$venv up to date with $req"
fi
[[ -x $venv/bin/dciodvfy ]] || die "$venv/bin/dciodvfy missing after installing $req"

# ---------------------------------------------------------------- 3. ONNX Runtime
# The node loads libonnxruntime at run time (ort load-dynamic); the config default
# segment.onnxruntime_library points into .onnxruntime/lib/.
log "ONNX Runtime library: $(scripts/fetch-onnxruntime.sh)"

# ---------------------------------------------------------------- 3b. viewer test
# integration/viewer/: playwright-core from package-lock.json (npm ci), and the OHIF
# viewer's prebuilt dist/ unpacked from its registry tarball into viewer/ohif/ after
# checking the tarball's sha512 against package.json ("ohif": package, integrity).
# Both folders are gitignored; stamps make a second run a no-op.
if [[ ${MYONODE_SKIP_VIEWER:-0} == 1 ]]; then
    log "MYONODE_SKIP_VIEWER=1: viewer test dependencies skipped"
else
    viewer=integration/viewer
    lock_sum=$(sha256sum "$viewer/package-lock.json" | cut -d' ' -f1)
    if [[ ! -f $viewer/node_modules/.myonode-lock.sha256 || $(cat "$viewer/node_modules/.myonode-lock.sha256") != "$lock_sum" ]]; then
        log "npm ci in $viewer"
        (cd "$viewer" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error </dev/null)
        echo "$lock_sum" >"$viewer/node_modules/.myonode-lock.sha256"
    else
        log "$viewer/node_modules up to date with package-lock.json"
    fi
    ohif_pkg=$(node -p 'require("./'"$viewer"'/package.json").ohif.package')
    ohif_sri=$(node -p 'require("./'"$viewer"'/package.json").ohif.integrity')
    if [[ ! -f $viewer/ohif/.myonode-integrity || $(cat "$viewer/ohif/.myonode-integrity") != "$ohif_sri" ]]; then
        log "fetching $ohif_pkg into $viewer/ohif"
        tmp=$(mktemp -d)
        (cd "$tmp" && npm pack "$ohif_pkg" --silent </dev/null >/dev/null)
        tgz=$(ls "$tmp"/*.tgz)
        got=$(node -e 'const c = require("crypto"), f = require("fs");
            console.log("sha512-" + c.createHash("sha512").update(f.readFileSync(process.argv[1])).digest("base64"))' "$tgz")
        [[ $got == "$ohif_sri" ]] || { rm -rf "$tmp"; die "$ohif_pkg: tarball integrity $got, expected $ohif_sri"; }
        rm -rf "$viewer/ohif"
        mkdir -p "$viewer/ohif"
        tar -xzf "$tgz" -C "$viewer/ohif" --strip-components=1
        rm -rf "$tmp"
        [[ -f $viewer/ohif/dist/index.html ]] || die "$ohif_pkg has no dist/index.html"
        echo "$ohif_sri" >"$viewer/ohif/.myonode-integrity"
    else
        log "$viewer/ohif is $ohif_pkg"
    fi
fi

# ---------------------------------------------------------------- 4. cargo
if [[ ${MYONODE_SKIP_CARGO:-0} == 1 ]]; then
    log "MYONODE_SKIP_CARGO=1: cargo build skipped"
else
    command -v cargo >/dev/null 2>&1 \
        || die "cargo not found: install Rust >= $(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml) with rustup (https://rustup.rs)"
    log "cargo build --all-targets"
    cargo build --all-targets
fi

# ---------------------------------------------------------------- 5. cargo-fuzz
# The pinned cargo-fuzz and the fuzz crate's dependencies for the bounded fuzz run at the end
# of scripts/test.sh (scripts/fuzz.sh); skipped with MYONODE_FUZZ=0.
if [[ ${MYONODE_FUZZ:-1} == 0 || ${MYONODE_SKIP_CARGO:-0} == 1 ]]; then
    log "cargo-fuzz setup skipped"
else
    scripts/fuzz.sh setup
fi
log "done"
