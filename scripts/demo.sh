#!/usr/bin/env bash
# End-to-end demo: a real knee MR series goes scanner → myonode → PACS and
# comes back as a DICOM-SEG.
#
#   1. installs what it needs (apt dcmtk when missing — needs root then;
#      cargo build --release);
#   2. starts DCMTK storescp as the PACS: AE PACS on port 11113, files into
#      out/demo/pacs/;
#   3. starts `target/release/myonode serve` with the embedded default
#      configuration (AE MYONODE on 127.0.0.1:11112, destination PACS at
#      127.0.0.1:11113), except: quiet period 2 s instead of 10 s
#      (MYONODE__ASSEMBLE__QUIET_PERIOD_SECONDS=2) to keep the demo short, and a
#      fresh spool in out/demo/spool (MYONODE__SPOOL__DIR) so that every run
#      processes the series anew;
#   4. checks the node with echoscu, sends $MYONODE_DATA/series/mr-knee-dess-echo1
#      with storescu;
#   5. waits (at most DEMO_TIMEOUT_SECONDS, default 120) for the SEG at the
#      PACS, prints a dcmdump summary and where the label map and job files are;
#   6. stops both servers (also on error or Ctrl-C). Exits non-zero if no SEG arrived.
#
# Environment:
#   MYONODE_DATA          test data (default <repo>/../shared/data)
#   MYONODE_BIN           use this node binary instead of building target/release/myonode
#   DEMO_TIMEOUT_SECONDS  how long to wait for the SEG (default 120)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

say() { printf '\n==> %s\n' "$*"; }
die() { printf '\n[demo] ERROR: %s\n' "$*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
export TCP_NODELAY=1 # DCMTK: no Nagle delay per instance

node_port=11112
pacs_port=11113
timeout=${DEMO_TIMEOUT_SECONDS:-120}
data=${MYONODE_DATA:-$repo/../shared/data}
series=$data/series/mr-knee-dess-echo1
out=$repo/out/demo
pacs_dir=$out/pacs
spool=$out/spool
seg_class=1.2.840.10008.5.1.4.1.1.66.4

[[ -d $series ]] || die "series not found: $series (set MYONODE_DATA to the shared data folder)"

# ------------------------------------------------------------ 1. install
if ! command -v storescp >/dev/null || ! command -v storescu >/dev/null \
    || ! command -v echoscu >/dev/null || ! command -v dcmdump >/dev/null; then
    say "installing DCMTK (apt)"
    [[ $(id -u) -eq 0 ]] || die "DCMTK is missing: run as root, or apt-get install dcmtk"
    apt-get update -q </dev/null
    apt-get install -y -q --no-install-recommends dcmtk </dev/null
fi
if [[ -n ${MYONODE_BIN:-} ]]; then
    node_bin=$MYONODE_BIN
else
    command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
    say "cargo build --release"
    cargo build --release
    node_bin=$repo/target/release/myonode
fi
[[ -x $node_bin ]] || die "node binary $node_bin is not executable"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $node_port $pacs_port; do
    if port_busy "$p"; then die "port $p on 127.0.0.1 is already in use (another node or PACS running?)"; fi
done

# ------------------------------------------------------------ 2./3. servers
rm -rf "$pacs_dir" "$spool"
mkdir -p "$pacs_dir" "$spool"
pacs_pid=
node_pid=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $node_pid ]] && kill -0 "$node_pid" 2>/dev/null; then
        echo "[demo] stopping myonode (pid $node_pid)"
        kill -TERM "$node_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$node_pid" 2>/dev/null || true
    fi
    if [[ -n $pacs_pid ]] && kill -0 "$pacs_pid" 2>/dev/null; then
        echo "[demo] stopping storescp (pid $pacs_pid)"
        kill -TERM "$pacs_pid" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "starting the PACS: storescp AE PACS on port $pacs_port → $pacs_dir"
storescp -v -aet PACS -od "$pacs_dir" +xa "$pacs_port" >"$out/storescp.log" 2>&1 </dev/null &
pacs_pid=$!

say "starting myonode: $node_bin serve (AE MYONODE, port $node_port, spool $spool, quiet period 2 s)"
# the calling AE allow-list is on by default: admit this demo's echoscu/storescu (AE DEMO)
MYONODE__ASSEMBLE__QUIET_PERIOD_SECONDS=2 MYONODE__SPOOL__DIR=$spool MYONODE__RECEIVE__ALLOWED_CALLING_AE_TITLES=DEMO \
    "$node_bin" serve >"$out/myonode.log" 2>&1 </dev/null &
node_pid=$!

ready=
for _ in $(seq 1 300); do # 30 s
    kill -0 "$node_pid" 2>/dev/null || { cat "$out/myonode.log" >&2; die "myonode exited during start-up"; }
    kill -0 "$pacs_pid" 2>/dev/null || { cat "$out/storescp.log" >&2; die "storescp exited during start-up"; }
    if grep -q "listening on" "$out/myonode.log" && port_busy "$pacs_port"; then ready=1; break; fi
    sleep 0.1
done
[[ -n $ready ]] || { cat "$out/myonode.log" >&2; die "myonode did not report 'listening on' within 30 s"; }
grep -m1 "listening on" "$out/myonode.log"

# ------------------------------------------------------------ 4. send
say "C-ECHO: echoscu -aet DEMO -aec MYONODE 127.0.0.1 $node_port"
echoscu -v -aet DEMO -aec MYONODE 127.0.0.1 "$node_port" </dev/null

nfiles=$(find "$series" -type f | wc -l)
say "C-STORE: storescu $nfiles instances of $series"
storescu -aet DEMO -aec MYONODE -R +sd +r 127.0.0.1 "$node_port" "$series" </dev/null
echo "sent $nfiles instances"

# ------------------------------------------------------------ 5. wait for SEG
say "waiting up to $timeout s for a DICOM-SEG at the PACS"
seg=
deadline=$((SECONDS + timeout))
while ((SECONDS < deadline)); do
    kill -0 "$node_pid" 2>/dev/null || { tail -n 50 "$out/myonode.log" >&2; die "myonode exited"; }
    for f in "$pacs_dir"/*; do
        [[ -f $f ]] || continue
        # A file still being written fails to parse; try again next round.
        class=$(dcmdump -q -s -Un +P 0008,0016 "$f" 2>/dev/null | sed -n 's/.*\[\(.*\)\].*/\1/p') || true
        if [[ $class == "$seg_class" ]]; then seg=$f; break 2; fi
    done
    sleep 1
done
if [[ -z $seg ]]; then
    echo "--- last lines of $out/myonode.log ---" >&2
    tail -n 50 "$out/myonode.log" >&2
    die "no DICOM-SEG arrived at $pacs_dir within $timeout s"
fi
elapsed=$((timeout - (deadline - SECONDS)))
say "DICOM-SEG received by the PACS after ~${elapsed} s: $seg"
# Top-level elements only: with +p nested ones print as (gggg,eeee).(gggg,eeee).
top_level() { local f=$1; shift; dcmdump -q +s +p "$@" "$f" | grep -v '^([0-9a-fA-F,]*)\.' || true; }
top_level "$seg" +P SOPClassUID +P Modality +P PatientID +P StudyInstanceUID +P SeriesInstanceUID \
    +P FrameOfReferenceUID +P SegmentationType +P NumberOfFrames +P Rows +P Columns
echo "segments (SegmentSequence):"
dcmdump -q +s +P SegmentNumber +P SegmentLabel "$seg" | sed 's/^/  /'
echo "referenced series (ReferencedSeriesSequence > SeriesInstanceUID):"
dcmdump -q +s +p +P SeriesInstanceUID "$seg" | grep -F '(0008,1115).' | sed 's/^/  /' || echo "  (none)"
echo "source series:"
top_level "$(find "$series" -type f | head -n1)" +P SeriesInstanceUID | sed 's/^/  /'

say "result files"
echo "label maps and job files (spool jobs/<job_id>/: labels.npy uint8 [z][y][x], job.json, seg.dcm):"
find "$spool/jobs" -maxdepth 2 -type f 2>/dev/null | sort | sed 's/^/  /' || true
echo "delivered copies: $spool/sent/"
echo "node log: $out/myonode.log   PACS log: $out/storescp.log"
say "demo OK"
