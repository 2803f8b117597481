#!/usr/bin/env bash
# Fetch the ONNX Runtime shared library that myonode loads at run time
# (ort crate, feature load-dynamic), from the official PyPI wheel.
#
#   scripts/fetch-onnxruntime.sh            # CPU build
#   ONNXRUNTIME_PACKAGE=onnxruntime-gpu scripts/fetch-onnxruntime.sh   # CUDA build
#
# Downloads the wheel with `pip download --no-deps` (into .onnxruntime/wheels/),
# extracts onnxruntime/capi/libonnxruntime.so* (and, for the GPU build, the
# execution-provider libraries libonnxruntime_providers_*.so) into
# .onnxruntime/lib/, and prints the absolute path of libonnxruntime.so on stdout
# (progress goes to stderr), e.g. to export as ORT_DYLIB_PATH.
# Idempotent: does nothing but print the path when that package and version
# are already extracted.
#
# Environment:
#   ONNXRUNTIME_PACKAGE   onnxruntime (default) or onnxruntime-gpu
#   ONNXRUNTIME_VERSION   default 1.31.1
#   PYTHON                python with pip (default: <repo>/.venv/bin/python, else python3)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

package=${ONNXRUNTIME_PACKAGE:-onnxruntime}
version=${ONNXRUNTIME_VERSION:-1.31.1}
case $package in
    onnxruntime | onnxruntime-gpu) ;;
    *) echo "ONNXRUNTIME_PACKAGE must be onnxruntime or onnxruntime-gpu, not '$package'" >&2; exit 2 ;;
esac
if [[ -n ${PYTHON:-} ]]; then
    python=$PYTHON
elif [[ -x .venv/bin/python ]]; then
    python=.venv/bin/python
else
    python=python3
fi

root=.onnxruntime
lib_dir=$root/lib
wheel_dir=$root/wheels
stamp=$lib_dir/.source
want="$package==$version"

if [[ -f $stamp && $(cat "$stamp") == "$want" && -e $lib_dir/libonnxruntime.so ]]; then
    echo "[fetch-onnxruntime] $want already in $lib_dir" >&2
    echo "$repo/$lib_dir/libonnxruntime.so"
    exit 0
fi

mkdir -p "$wheel_dir"
echo "[fetch-onnxruntime] pip download $want" >&2
"$python" -m pip download --quiet --disable-pip-version-check --no-input --no-deps \
    --only-binary=:all: --dest "$wheel_dir" "$want" </dev/null >&2

# pip normalises the distribution name to onnxruntime_gpu in the wheel file name.
dist=${package//-/_}
wheel=$(ls -t "$wheel_dir"/"$dist"-"$version"-*.whl 2>/dev/null | head -n1 || true)
[[ -n $wheel ]] || { echo "[fetch-onnxruntime] no $dist-$version wheel in $wheel_dir after pip download" >&2; exit 1; }

rm -rf "$lib_dir"
mkdir -p "$lib_dir"
"$python" - "$wheel" "$lib_dir" <<'PY'
import os, re, shutil, sys, zipfile

wheel, dest = sys.argv[1], sys.argv[2]
wanted = re.compile(r"^onnxruntime/capi/(libonnxruntime\.so(\.[0-9.]+)?|libonnxruntime_providers_[a-z_]+\.so)$")
extracted = []
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if wanted.match(name):
            target = os.path.join(dest, os.path.basename(name))
            with z.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            os.chmod(target, 0o755)
            extracted.append(os.path.basename(name))
if not any(n.startswith("libonnxruntime.so") for n in extracted):
    sys.exit(f"{wheel} holds no onnxruntime/capi/libonnxruntime.so*")
print("[fetch-onnxruntime] extracted " + ", ".join(sorted(extracted)), file=sys.stderr)
PY

# Stable name libonnxruntime.so → the versioned file.
if [[ ! -e $lib_dir/libonnxruntime.so ]]; then
    versioned=$(cd "$lib_dir" && ls libonnxruntime.so.* | sort -V | tail -n1)
    ln -s "$versioned" "$lib_dir/libonnxruntime.so"
fi
echo "$want" >"$stamp"
echo "$repo/$lib_dir/libonnxruntime.so"
