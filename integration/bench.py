#!/usr/bin/env python3
"""myonode benchmark driver (issue #8): receive throughput against DCMTK storescp in the
same run, per-stage latency of one series, CPU inference, peak memory and 8-series scaling.

Run it through `scripts/bench.sh` (builds the release binary and the inference example,
creates a loopback-only network namespace, because DCMTK storescp binds 0.0.0.0, and
removes it at exit). Direct use, inside such a namespace:

    integration/bench.py [--quick] [--out out/bench] [--bin target/release/myonode]
                         [--sections receive,latency,inference,memory,scaling] [--repeat N]

Writes `<out>/bench.json` (all figures, raw and derived) and prints a Markdown table.
`--quick` is the CI-sized smoke run (a few small instances, 1 repetition, no inference,
no 1,000-slice series); it exercises every code path of the driver so it cannot rot.

Receive: wall time from starting the storescu processes until all have exited (each
sends its share of the files over one association; association set-up included),
same files, same PDU size (131072 bytes max receive PDU on both SCPs), TCP_NODELAY=1
for DCMTK (myonode sets TCP_NODELAY itself). Servers:
  myonode          `myonode serve`, spool.fsync = true (file + directory fsync before
                   the C-STORE-RSP), quiet period 1 h so no analysis runs while receiving;
  myonode-nofsync  the same with spool.fsync = false (shows what durability costs);
  storescp         DCMTK storescp writing each instance to disk (`-od`), no fsync
                   (DCMTK 3.6.7 storescp has no fsync option);
  storescp-sync    storescp with `-xcr "sync #p/#f" -xs`: coreutils `sync FILE` (fsync of the
                   file) runs synchronously before the C-STORE-RSP; costs a fork+exec per
                   instance, so it is a pessimistic durable baseline.
Data: the 80-slice knee MR series (real files) and N small instances generated from one
slice of the pelvis ADC series (real pixels, GENERATED headers: new UIDs, positions).

Latency: `myonode serve` with JSON logs; stage boundaries are read from the node's own
log events (timestamps are the node's clock, microsecond resolution):
  last instance stored (debug event "instance stored")
  → complete   ("series complete, volume assembled" timestamp minus its `ms`)
  → assembled  ("series complete, volume assembled")
  → released   (Dixon channels only: the pairer's "lone job" / "paired" event; the wait for
                partners, assemble.study_window_seconds, is a configured wait like the quiet
                period and is reported as `dixon_wait`, outside the overhead)
  → segmented  ("segmented"; its `ms` is the analysis time, the rest is queue wait)
  → measured   (last "measured" of the job)
  → encoded    ("results encoded"; older builds "SEG and SR encoded")
  → delivered  (last "delivered" of the job's SEG/SR: the PACS acknowledged the C-STORE).
Warm-up series go first, one per segment worker and at once (--latency-warmups), so
model loading is not counted in the measured series whichever worker takes it; their
segment time outside Session::run is reported as the cold start. Cases: every analysis but the
lumbar model on the knee series (warm-up: pelvis ADC); the shipped lumbar model, which takes
only Dixon water images, on its own kind of input (a held-out training volume as a sagittal
Dixon water series, REAL PIXELS, GENERATED HEADERS; warm-up: a second one), with the default
`assemble.dixon_channels` (waits for partners) and with `["water"]` (a site sending only water).

Memory: peak RSS (ru_maxrss of the child, from wait4) of `myonode process DIR --out OUT`
over the knee series and over a 1,000-slice series generated from the knee pixels (real
pixels, GENERATED headers), against the goal 3 x (f32 volume + model size).

Scaling: 8 copies of the knee series (GENERATED Study/Series/SOP UIDs, real pixels and
geometry) sent at once over 8 associations; per series: when its last instance arrived,
when it was complete, how long it waited for assembly and for a segment worker, when
its results were delivered.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import tomllib
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
CALLING_AE = "BENCH"
PDU = 131072
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


# ---------------------------------------------------------------------------- helpers
class BenchError(RuntimeError):
    """A benchmark step failed (a server did not start, a transfer failed, ...)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(pred, timeout: float, what: str, proc: Optional[subprocess.Popen] = None, log: Optional[Path] = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise BenchError(f"{what}: process exited with {proc.returncode}\n{tail}")
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise BenchError(f"timed out after {timeout} s waiting for {what}\n{tail}")


def stop(proc: Optional[subprocess.Popen], grace: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def dcmtk_env() -> dict:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def node_env(**overrides: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYONODE__")}
    env["MYONODE__SEGMENT__MODELS_DIR"] = str(REPO / "models")
    env["MYONODE__SEGMENT__ONNXRUNTIME_LIBRARY"] = str(REPO / ".onnxruntime" / "lib" / "libonnxruntime.so.1.31.1")
    env["MYONODE__RECEIVE__ALLOWED_CALLING_AE_TITLES"] = CALLING_AE  # allow-list is on by default
    env.pop("RUST_LOG", None)
    # as in production (systemd): with RUST_BACKTRACE set, every error value dicom-rs creates
    # internally (also on the success path) captures a backtrace, which costs ~0.1 ms each
    env.pop("RUST_BACKTRACE", None)
    env.pop("RUST_LIB_BACKTRACE", None)
    env.update(overrides)
    return env


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def count_files(folder: Path, suffix: str = "") -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and p.name.endswith(suffix)) if folder.exists() else 0


def new_uid() -> str:
    import uuid
    return "2.25." + str(uuid.uuid4().int)


# ---------------------------------------------------------------------------- servers
class Node:
    """`myonode serve` in its own working directory with a fresh spool."""

    def __init__(self, binary: Path, work: Path, pacs_port: Optional[int] = None, json_log: bool = False,
                 debug_receive: bool = False, **overrides: str):
        self.work = work
        self.port = free_port()
        self.spool = work / "spool"
        self.log = work / "myonode.log"
        work.mkdir(parents=True, exist_ok=True)
        conf = work / "bench.toml"
        dead = pacs_port or free_port()
        conf.write_text(
            "[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\n"
            f"port = {dead}\nmax_attempts = 3\nretry_delay_seconds = 0.5\n"
        )
        env = node_env(
            MYONODE__RECEIVE__PORT=str(self.port),
            MYONODE__RECEIVE__MAX_PDU_LENGTH=str(PDU),
            MYONODE__SPOOL__DIR=str(self.spool),
            MYONODE__LOG__JSON="true" if json_log else "false",
            **overrides,
        )
        if debug_receive:
            env["RUST_LOG"] = "info,ort=warn,myonode::receive::store=debug"
        self.proc = subprocess.Popen([str(binary), "serve", "--config", str(conf)], cwd=work, env=env,
                                     stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), stdin=subprocess.DEVNULL)
        wait_until(lambda: "listening on" in self.log.read_text(errors="replace"), 30, "myonode start-up",
                   self.proc, self.log)

    def stored(self) -> int:
        return count_files(self.spool / "incoming", ".dcm")

    def stop(self):
        stop(self.proc)

    def events(self) -> list[dict]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return out


class Storescp:
    """DCMTK storescp writing every instance to `work/od`; `sync_each` adds a synchronous fsync per file."""

    def __init__(self, work: Path, ae: str = "STORESCP", sync_each: bool = False):
        self.work = work
        self.od = work / "od"
        self.od.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = work / "storescp.log"
        cmd = ["storescp", "-aet", ae, "-od", str(self.od), "-pdu", str(PDU), "-uf"]
        if sync_each:
            cmd += ["-xcr", "sync #p/#f", "-xs"]
        cmd.append(str(self.port))
        self.proc = subprocess.Popen(cmd, env=dcmtk_env(), stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        wait_until(lambda: port_accepts(self.port), 30, "storescp start-up", self.proc, self.log)

    def stored(self) -> int:
        return count_files(self.od)

    def stop(self):
        stop(self.proc, 5)


def storescu_parallel(port: int, called_ae: str, files: list[Path], n: int, log_dir: Path) -> float:
    """Send `files` over `n` concurrent storescu processes (round-robin split); returns wall seconds."""
    return storescu_groups(port, called_ae, [files[i::n] for i in range(n)], log_dir)


def storescu_groups(port: int, called_ae: str, groups: list[list[Path]], log_dir: Path) -> float:
    """Send each group of files over its own storescu process, all at once; returns wall seconds."""
    procs = []
    t0 = time.perf_counter()
    for i, g in enumerate(groups):
        lf = (log_dir / f"storescu-{i}.log").open("wb")
        procs.append(subprocess.Popen(
            ["storescu", "-aet", CALLING_AE, "-aec", called_ae, "-pdu", str(PDU), "127.0.0.1", str(port)]
            + [str(f) for f in g], env=dcmtk_env(), stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    rcs = [p.wait() for p in procs]
    dt = time.perf_counter() - t0
    if any(rcs):
        raise BenchError(f"storescu failed (exit codes {rcs}); logs in {log_dir}")
    return dt


# ---------------------------------------------------------------------------- data
def write_copies(src_files: list[Path], out: Path, count: int, z_step: Optional[float] = None,
                 study_uid: Optional[str] = None, series_uid: Optional[str] = None) -> list[Path]:
    """`count` instances cycling through `src_files` with new UIDs (one new study/series).

    With `z_step`, slice i is placed at the first source slice's position + i * z_step mm along the
    slice normal (so the copies form one long volume); otherwise positions are kept."""
    import numpy as np
    import pydicom

    out.mkdir(parents=True, exist_ok=True)
    sources = [pydicom.dcmread(f) for f in src_files]
    study_uid = study_uid or new_uid()
    series_uid = series_uid or new_uid()
    base = sources[0]
    normal = None
    if z_step is not None:
        o = np.array([float(v) for v in base.ImageOrientationPatient])
        normal = np.cross(o[:3], o[3:])
        origin = np.array([float(v) for v in base.ImagePositionPatient])
    paths = []
    for i in range(count):
        ds = sources[i % len(sources)]
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        sop = new_uid()
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = i + 1
        if "ImagesInAcquisition" in ds:
            ds.ImagesInAcquisition = count  # the generated series' own size, not the source's
        if normal is not None:
            ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + normal * z_step * i]
        p = out / f"{i:05d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def copy_series(src: Path, out: Path) -> list[Path]:
    """The series in `src` with new Study/Series/SOP UIDs (positions and pixels unchanged)."""
    files = files_of(src)
    return write_copies(files, out, len(files))


# ---------------------------------------------------------------------------- receive
def bench_receive(args, out: Path, datasets: dict[str, list[Path]]) -> list[dict]:
    """Each repetition runs every server once, in turn (interleaved, so load drift from other
    processes on the machine affects all servers alike); the median over repetitions is reported."""
    servers = ["myonode", "myonode-nofsync", "storescp", "storescp-sync"]
    if args.compare_bin:
        servers.insert(1, "myonode-before")
    rows = []
    for name, files in datasets.items():
        nbytes = sum(f.stat().st_size for f in files)
        for par in args.parallel:
            times: dict[str, list[float]] = {s: [] for s in servers}
            for rep in range(args.repeat):
                for server in servers:
                    work = out / "receive" / f"{name}-p{par}-{server}-{rep}"
                    shutil.rmtree(work, ignore_errors=True)
                    work.mkdir(parents=True)
                    if server.startswith("myonode"):
                        binary = args.compare_bin if server == "myonode-before" else args.bin
                        srv = Node(binary, work, MYONODE__SPOOL__FSYNC="false" if server.endswith("nofsync") else "true",
                                   MYONODE__ASSEMBLE__QUIET_PERIOD_SECONDS="3600")
                        ae = "MYONODE"
                    else:
                        srv = Storescp(work, sync_each=server.endswith("sync"))
                        ae = "STORESCP"
                    try:
                        dt = storescu_parallel(srv.port, ae, files, par, work)
                        stored = srv.stored()
                    finally:
                        srv.stop()
                    if stored != len(files):
                        raise BenchError(f"{server}: {stored} of {len(files)} instances stored ({work})")
                    times[server].append(dt)
                    if not args.keep:
                        shutil.rmtree(work, ignore_errors=True)
            for server in servers:
                med = statistics.median(times[server])
                row = {"dataset": name, "instances": len(files), "bytes": nbytes, "associations": par,
                       "server": server, "seconds": times[server], "median_seconds": med,
                       "instances_per_s": len(files) / med, "mb_per_s": nbytes / med / 1e6}
                print(f"  receive {name:>10} x{par} {server:<16} {row['instances_per_s']:8.1f} inst/s "
                      f"{row['mb_per_s']:7.1f} MB/s", flush=True)
                rows.append(row)
    by = {(r["dataset"], r["associations"], r["server"]): r for r in rows}
    for r in rows:
        for base in ("storescp", "storescp-sync"):
            b = by.get((r["dataset"], r["associations"], base))
            r[f"ratio_vs_{base}"] = r["instances_per_s"] / b["instances_per_s"] if b else None
    return rows


# ---------------------------------------------------------------------------- log parsing
# assemble's log lines when the Dixon pairer lets a job go (src/assemble/dixon.rs)
DIXON_RELEASE_MESSAGES = ("Dixon series without partners on its grid: lone job", "Dixon channels paired into one job",
                          "Dixon channels paired; in-phase differs from water + fat")


def ts(ev: dict) -> float:
    return datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp()


def msg(ev: dict) -> str:
    return ev.get("fields", {}).get("message", "")


# the encode stage's event once a job's objects are in the outboxes (older builds: the first)
ENCODED_MESSAGES = ("SEG and SR encoded", "results encoded")


def span_field(ev: dict, key: str) -> Optional[str]:
    for sp in [ev.get("span") or {}] + list(reversed(ev.get("spans") or [])):
        if key in sp:
            return str(sp[key])
    return None


def series_timeline(events: list[dict], series_uid: str) -> dict:
    """Stage timestamps (node clock, seconds since the epoch) of the first job of `series_uid`."""
    stored_ev = [e for e in events if msg(e) == "instance stored" and series_uid in e["fields"].get("path", "")]
    stored = [ts(e) for e in stored_ev]
    asm = [e for e in events if msg(e) == "series complete, volume assembled" and span_field(e, "series") == series_uid]
    if not stored or not asm:
        raise BenchError(f"series {series_uid}: no receive/assemble events in the log")
    a = asm[0]
    job = span_field(a, "job") or a["fields"].get("job")
    seg = [e for e in events if msg(e) == "segmented" and span_field(e, "job") == job]
    meas = [ts(e) for e in events if msg(e) == "measured" and span_field(e, "job") == job]
    enc = [e for e in events if msg(e) in ENCODED_MESSAGES and span_field(e, "job") == job]
    if not seg or not enc:
        raise BenchError(f"job {job}: no segmented/encoded events in the log")
    uids = {enc[0]["fields"][k] for k in ("seg", "seg_labelmap", "sr") if enc[0]["fields"].get(k)}
    deliv = [ts(e) for e in events if msg(e) == "delivered"
             and any(u in e["fields"].get("path", "") for u in uids)]
    if len(deliv) < len(uids):
        raise BenchError(f"job {job}: {len(deliv)} of {len(uids)} objects delivered")
    # a Dixon channel waits in assemble for its partners (assemble.study_window_seconds), a
    # configured wait like the quiet period: from assembled to the pairer's release of the job
    dixon = [ts(e) for e in events if msg(e) in DIXON_RELEASE_MESSAGES and e["fields"].get("job") == job]
    a_ts = ts(a)
    s_ts = ts(seg[0])
    s_ms = float(seg[0]["fields"].get("ms", 0))
    e_ts = ts(enc[0])
    return {
        "job": job,
        "instances": len(stored),
        "first_received": min(stored),
        "last_received": max(stored),
        "complete": a_ts - float(a["fields"].get("ms", 0)) / 1e3,
        "assembled": a_ts,
        "dixon_released": dixon[0] if dixon else a_ts,
        "segment_started": s_ts - s_ms / 1e3,
        "segmented": s_ts,
        "measured": max(meas) if meas else s_ts,
        "encoded": e_ts,
        "delivered": max(deliv),
        "volume": [int(a["fields"].get(k, 0)) for k in ("slices", "rows", "columns")],
        # Session::run time of this job inside the node (absent for built-in analyses and older builds)
        "model_ms": float(seg[0]["fields"]["model_ms"]) if "model_ms" in seg[0]["fields"] else None,
        # per-instance receive work on the node (median µs): parsing the data set, spool write incl. fsync
        "receive_parse_us": statistics.median(float(e["fields"].get("parse_us", "nan")) for e in stored_ev),
        "receive_write_us": statistics.median(float(e["fields"].get("write_us", "nan")) for e in stored_ev),
    }


def stage_ms(t: dict, quiet: float) -> dict:
    ms = lambda a, b: round((t[b] - t[a]) * 1e3, 1)  # noqa: E731
    return {
        "completion_wait": ms("last_received", "complete"),
        "completion_wait_minus_quiet_period": round(ms("last_received", "complete") - quiet * 1e3, 1),
        "assemble": ms("complete", "assembled"),
        "dixon_wait": ms("assembled", "dixon_released"),
        "segment_queue": ms("dixon_released", "segment_started"),
        "segment": ms("segment_started", "segmented"),
        "measure": ms("segmented", "measured"),
        "encode": ms("measured", "encoded"),
        "send": ms("encoded", "delivered"),
        "total_after_last_instance": ms("last_received", "delivered"),
    }


def wait_delivered(node: Node, n: int, timeout: float) -> None:
    wait_until(lambda: sum(1 for e in node.events() if msg(e) == "delivered") >= n, timeout,
               f"{n} delivered objects", node.proc, node.log)


# ---------------------------------------------------------------------------- latency
def bench_latency(args, out: Path, cases: list[dict], model_compute_ms: dict) -> list[dict]:
    """Per case (dict: analysis, data name, series files, warm-up series files, extra node
    environment `env`) and binary (`myonode`, and `myonode-before`
    with --compare-bin), repeated `--latency-repeat` times interleaved; the row of the median
    total is reported with all totals. Model compute is the node's own `model_ms` of the job when
    logged (same process, same job), else the inference section's Session::run time."""
    binaries = [("myonode", args.bin)] + ([("myonode-before", args.compare_bin)] if args.compare_bin else [])
    rows = []
    for case in cases:
        analysis, data_name, series, warmup = case["analysis"], case["data"], case["series"], case["warmup"]
        env = case.get("env")
        runs: dict[str, list[dict]] = {name: [] for name, _ in binaries}
        for rep in range(args.latency_repeat):
            for name, binary in binaries:
                r = latency_once(args, out / "latency" / f"{analysis}-{len(rows)}-{name}-{rep}", binary, series,
                                 warmup, analysis, model_compute_ms, env)
                r["data"] = data_name
                runs[name].append(r)
        # a binary that does not log model_ms (an older build) is charged the median model_ms of
        # the runs that do: same model, same job, same machine
        logged = [r["timeline"]["model_ms"] for rr in runs.values() for r in rr if r["timeline"].get("model_ms")]
        for r in (r for rr in runs.values() for r in rr if not r["timeline"].get("model_ms") and logged):
            st, compute = r["stages_ms"], statistics.median(logged)
            overhead = (st["completion_wait_minus_quiet_period"] + st["assemble"] + st["segment_queue"]
                        + (st["segment"] - compute) + st["measure"] + st["encode"] + st["send"])
            r.update(model_compute_ms=round(compute, 1), model_compute_source="median model_ms of the other runs",
                     overhead_ms=round(overhead, 1), overhead_pct_of_compute=round(100 * overhead / compute, 1),
                     goal_overhead_lt_10pct=overhead < 0.1 * compute)
        for name, _ in binaries:
            rs = sorted(runs[name], key=lambda r: r["stages_ms"]["total_after_last_instance"])
            row = dict(rs[len(rs) // 2])
            row["binary"] = name
            row["all_totals_ms"] = [r["stages_ms"]["total_after_last_instance"] for r in runs[name]]
            row["all_overhead_pct"] = [r.get("overhead_pct_of_compute") for r in runs[name]]
            print(f"  latency {analysis} on {data_name} {name}: " + ", ".join(f"{k} {v}" for k, v in row["stages_ms"].items())
                  + f", overhead {row.get('overhead_pct_of_compute')} % (runs: {row['all_overhead_pct']})", flush=True)
            rows.append(row)
    return rows


def latency_once(args, work: Path, binary: Path, series: list[Path], warmup: list[Path], analysis: str,
                 model_compute_ms: dict, env: Optional[dict] = None) -> dict:
    quiet = args.quiet
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pacs = Storescp(work / "pacs", ae="PACS")
    node = None
    try:
        node = Node(binary, work / "node", pacs_port=pacs.port, json_log=True, debug_receive=True,
                    MYONODE__ASSEMBLE__QUIET_PERIOD_SECONDS=str(quiet), MYONODE__SEGMENT__ANALYSIS=analysis,
                    MYONODE__SPOOL__FSYNC="true", **(env or {}))
        # one warm-up series per segment worker, sent at once (a busy worker leaves the next
        # job to the other), so the measured series finds its model loaded on whichever worker
        # takes it; their first-job cost is reported as the cold start
        warm_sets = warmups_for(warmup, args.latency_warmups)
        storescu_groups(node.port, "MYONODE", warm_sets, work)
        wait_delivered(node, 2 * len(warm_sets), args.timeout)
        storescu_parallel(node.port, "MYONODE", series, 1, work)
        wait_delivered(node, 2 * len(warm_sets) + 2, args.timeout)
        import pydicom
        uid = pydicom.dcmread(series[0], stop_before_pixels=True).SeriesInstanceUID
        events = node.events()
        t = series_timeline(events, uid)
        cold = [series_timeline(events, pydicom.dcmread(w[0], stop_before_pixels=True).SeriesInstanceUID)
                for w in warm_sets]
    finally:
        if node:
            node.stop()
        pacs.stop()
    st = stage_ms(t, quiet)
    row = {"analysis": analysis, "quiet_period_s": quiet, "volume_zyx": t["volume"], "stages_ms": st,
           "receive_parse_us": t["receive_parse_us"], "receive_write_us": t["receive_write_us"], "timeline": t,
           # the warm-up jobs (first job of each worker, run side by side): segment stage time
           # outside Session::run, i.e. mostly creating the ONNX Runtime session
           "cold_start_segment_outside_model_ms": [
               round((c["segmented"] - c["segment_started"]) * 1e3 - (c["model_ms"] or 0.0), 1) for c in cold]}
    compute = t.get("model_ms") or model_compute_ms.get(analysis)
    if compute:
        overhead = (st["completion_wait_minus_quiet_period"] + st["assemble"] + st["segment_queue"]
                    + (st["segment"] - compute) + st["measure"] + st["encode"] + st["send"])
        row["model_compute_ms"] = round(compute, 1)
        row["model_compute_source"] = "node log (same job)" if t.get("model_ms") else "inference section"
        row["overhead_ms"] = round(overhead, 1)
        row["overhead_pct_of_compute"] = round(100 * overhead / compute, 1)
        row["goal_overhead_lt_10pct"] = overhead < 0.1 * compute
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return row


_WARMUP_COPIES: dict[tuple[Path, int], list[Path]] = {}


def warmups_for(warmup: list[Path], n: int) -> list[list[Path]]:
    """`warmup` and n-1 copies of it with new UIDs (generated once per process, beside it)."""
    sets = [warmup]
    for i in range(1, n):
        key = (warmup[0].parent, i)
        if key not in _WARMUP_COPIES:
            d = warmup[0].parent.with_name(f"{warmup[0].parent.name}-copy{i}")
            shutil.rmtree(d, ignore_errors=True)
            _WARMUP_COPIES[key] = write_copies(warmup, d, len(warmup))
        sets.append(_WARMUP_COPIES[key])
    return sets


def lumbar_case(args, gen: Path) -> Optional[tuple[str, list[Path], list[Path]]]:
    """The shipped model's own kind of input: its first held-out test volume
    (`models/lumbar-vertebrae-mr/metrics.json`) wrapped into a sagittal Dixon water series with
    GENERATED HEADERS (`lumbar_series.write_series`: real pixels, 1 mm isotropic, 224 x 224 x 77),
    and the second one as the warm-up series. Returns (data name, files, warm-up files); None
    when the training data is absent."""
    import scipy.io
    from lumbar_series import write_series

    metrics = REPO / "models" / "lumbar-vertebrae-mr" / "metrics.json"
    names = json.loads(metrics.read_text())["test"][:2]
    out = []
    for i, name in enumerate(names):
        mat = args.data / "training" / "lumbar-vertebrae-mr" / name
        if not mat.is_file():
            print(f"  latency: {mat} not found; the lumbar case is skipped", flush=True)
            return None
        folder = gen / f"lumbar-{i}"
        shutil.rmtree(folder, ignore_errors=True)
        write_series(scipy.io.loadmat(mat)["I"], folder, seed=i)
        out.append(files_of(folder))
    return f"lumbar-mr {names[0]} (generated headers)", out[0], out[1]


# ---------------------------------------------------------------------------- inference
def bench_inference(args, out: Path) -> list[dict]:
    models = out / "models"
    if not (models / "unet3d" / "model.onnx").exists():
        subprocess.run([sys.executable, str(REPO / "scripts" / "make-fixture-models.py"), "bench", str(models)],
                       check=True)
    rows = []
    for threads in (1, 2):
        p = subprocess.run([str(args.inference_bin), str(models), "", str(threads), str(args.slices_2d),
                            str(args.edge_3d), str(REPO / "models" / "lumbar-vertebrae-mr")],
                           env={**os.environ, "BENCH_JSON": "1"}, capture_output=True, text=True, cwd=REPO)
        if p.returncode:
            raise BenchError(f"bench_inference failed:\n{p.stdout}\n{p.stderr}")
        print(p.stdout, flush=True)
        js = [json.loads(l[len("JSON "):]) for l in p.stdout.splitlines() if l.startswith("JSON ")]
        for r in js:
            r["threads"] = threads
        rows += js
    return rows


# ---------------------------------------------------------------------------- memory
def peak_rss_process(binary: Path, src: Path, work: Path, **overrides: str) -> tuple[float, float]:
    """Run `myonode process src --out work/out`; (peak RSS MiB, seconds)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = (work / "process.log").open("wb")
    t0 = time.perf_counter()
    p = subprocess.Popen([str(binary), "process", str(src), "--out", str(work / "out")], cwd=work,
                         env=node_env(**overrides), stdout=log, stderr=subprocess.STDOUT)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    dt = time.perf_counter() - t0
    if p.returncode:
        raise BenchError(f"myonode process {src} failed ({p.returncode}); see {work / 'process.log'}")
    if not list((work / "out" / "jobs").glob("*/seg.dcm")):
        raise BenchError(f"myonode process {src}: no SEG written; see {work / 'process.log'}")
    return ru.ru_maxrss / 1024.0, dt


def bench_memory(args, out: Path, cases: dict[str, tuple[Path, tuple[int, int, int], str]]) -> list[dict]:
    """Peak RSS of `myonode process` per case: name -> (folder, volume shape (z, y, x), analysis).
    The analysis is what the default configuration chooses for the series (its [[routes]]:
    the lumbar series go to the shipped model); it is checked against the job's job.json. The
    goal's denominator is the f32 volume plus the model file (0 for built-in analyses).
    The peak varies between runs (the C library's heap), so each case runs `--memory-repeat`
    times, every binary once per repetition in turn (`myonode-before` with `--compare-bin`);
    the row gives the maximum (what the goal is judged on) and every repetition's figure."""
    binaries = [("myonode", args.bin)] + ([("myonode-before", args.compare_bin)] if args.compare_bin else [])
    rows = []
    for name, (src, shape, analysis) in cases.items():
        model = REPO / "models" / analysis / "model.onnx"
        want = ({tomllib.loads((REPO / "models" / analysis / "model.toml").read_text())["model"]["name"]}
                if model.is_file() else {f"myonode {analysis}"})
        vol_mib = shape[0] * shape[1] * shape[2] * 4 / 2**20
        model_mib = model.stat().st_size / 2**20 if model.is_file() else 0.0
        runs: dict[str, list[tuple[float, float]]] = {b: [] for b, _ in binaries}
        for _ in range(max(1, args.memory_repeat)):
            for label, binary in binaries:
                work = out / "memory" / name / label
                rss, dt = peak_rss_process(binary, src, work)
                jobs = [json.loads(p.read_text()) for p in (work / "out" / "jobs").glob("*/job.json")]
                ran = {j["analysis"]["name"] for j in jobs}
                if len(jobs) != 1 or ran != want:
                    raise BenchError(f"memory {name} ({label}): expected one job of {want}, got {len(jobs)} of {ran}")
                runs[label].append((rss, dt))
        for label, _ in binaries:
            rss = max(r for r, _ in runs[label])
            dt = statistics.median(d for _, d in runs[label])
            row = {"series": name, "binary": label, "volume_zyx": list(shape), "f32_volume_mib": round(vol_mib, 1),
                   "model_mib": round(model_mib, 1),
                   "analysis": analysis, "peak_rss_mib": round(rss, 1), "seconds": round(dt, 2),
                   "peak_rss_mib_runs": [round(r, 1) for r, _ in runs[label]],
                   "ratio_to_volume_plus_model": round(rss / (vol_mib + model_mib), 2),
                   "goal_lt_3x": rss < 3 * (vol_mib + model_mib)}
            print(f"  memory {name} ({analysis}, {label}): peak RSS {rss:.0f} MiB (runs "
                  f"{', '.join(f'{r:.0f}' for r, _ in runs[label])}) = {row['ratio_to_volume_plus_model']}x "
                  f"f32 volume + model ({vol_mib:.0f} + {model_mib:.0f} MiB), {dt:.1f} s", flush=True)
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------- scaling
def bench_scaling(args, out: Path, series_dirs: list[Path], **node_env_overrides: str) -> dict:
    import pydicom
    work = out / "scaling"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pacs = Storescp(work / "pacs", ae="PACS")
    node = None
    quiet = args.quiet
    try:
        node = Node(args.bin, work / "node", pacs_port=pacs.port, json_log=True, debug_receive=True,
                    MYONODE__ASSEMBLE__QUIET_PERIOD_SECONDS=str(quiet), MYONODE__SPOOL__FSYNC="true",
                    **node_env_overrides)
        lists = [files_of(d) for d in series_dirs]
        t0 = time.time()
        procs = []
        for i, files in enumerate(lists):
            lf = (work / f"storescu-{i}.log").open("wb")
            procs.append(subprocess.Popen(
                ["storescu", "-aet", CALLING_AE, "-aec", "MYONODE", "-pdu", str(PDU), "127.0.0.1", str(node.port)]
                + [str(f) for f in files], env=dcmtk_env(), stdout=lf, stderr=subprocess.STDOUT))
        if any(p.wait() for p in procs):
            raise BenchError(f"storescu failed; logs in {work}")
        sent = time.time()
        wait_delivered(node, 2 * len(lists), args.timeout)
        events = node.events()
    finally:
        if node:
            node.stop()
        pacs.stop()
    per = []
    for files in lists:
        uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
        t = series_timeline(events, uid)
        st = stage_ms(t, quiet)
        per.append({"series": uid, "instances": len(files),
                    **{k: round(t[k] - t0, 3) for k in ("first_received", "last_received", "complete", "assembled",
                                                        "segment_started", "segmented", "measured", "encoded",
                                                        "delivered")},
                    "stages_ms": st,
                    # time this series spent waiting behind others: assembly not started when it was
                    # complete (completion wait beyond the quiet period) + waiting for a segment worker
                    "waited_behind_others_ms": round(st["completion_wait_minus_quiet_period"] + st["segment_queue"], 1)})
    last = max(p["delivered"] for p in per)
    n_inst = sum(len(f) for f in lists)
    res = {"series": len(lists), "instances": n_inst, "quiet_period_s": quiet, "data": args.scaling_data,
           "send_seconds": round(sent - t0, 2), "receive_instances_per_s": round(n_inst / (sent - t0), 1),
           "all_delivered_seconds": round(last, 2),
           "series_per_minute_excl_quiet": round(60 * len(lists) / (last - quiet), 2),
           "max_waited_behind_others_ms": max(p["waited_behind_others_ms"] for p in per),
           "per_series": per}
    print(f"  scaling: {len(lists)} series, {n_inst} instances received in {res['send_seconds']} s, all delivered "
          f"after {res['all_delivered_seconds']} s; max wait behind others {res['max_waited_behind_others_ms']} ms",
          flush=True)
    return res


# ---------------------------------------------------------------------------- report
def machine() -> dict:
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) // 1024
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    dcmtk = subprocess.run(["storescp", "--version"], capture_output=True, text=True).stdout.splitlines()
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "memory_mib": mem, "kernel": platform.release(),
            "dcmtk": dcmtk[0] if dcmtk else "", "date_utc": datetime.utcnow().isoformat(timespec="seconds") + "Z"}


def table(res: dict) -> str:
    out = []
    if res.get("receive"):
        out += ["## Receive (median of %d)" % res["config"]["repeat"], "",
                "| data | assoc. | server | inst/s | MB/s | vs storescp | vs storescp-sync |",
                "|---|---:|---|---:|---:|---:|---:|"]
        for r in res["receive"]:
            f = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
            out.append(f"| {r['dataset']} ({r['instances']}) | {r['associations']} | {r['server']} | "
                       f"{r['instances_per_s']:.1f} | {r['mb_per_s']:.1f} | {f(r['ratio_vs_storescp'])} | "
                       f"{f(r['ratio_vs_storescp-sync'])} |")
        out.append("")
    if res.get("latency"):
        keys = list(res["latency"][0]["stages_ms"].keys())
        out += ["## Latency per stage (ms, one series)", "",
                "| analysis | data | binary | " + " | ".join(keys)
                + " | model compute | overhead % of compute | cold start: segment outside model (warm-ups) |",
                "|---|---|---|" + "---:|" * (len(keys) + 3)]
        for r in res["latency"]:
            cold = ", ".join(str(c) for c in r.get("cold_start_segment_outside_model_ms", []))
            out.append(f"| {r['analysis']} | {r.get('data', '')} | {r.get('binary', 'myonode')} | " + " | ".join(str(r["stages_ms"][k]) for k in keys)
                       + f" | {r.get('model_compute_ms', '')} | {r.get('overhead_pct_of_compute', '')} | {cold} |")
        out.append("")
    if res.get("inference"):
        out += ["## Inference (CPU)", "", "| model | input | threads | per unit ms | Session::run share % | peak RSS MiB |",
                "|---|---|---:|---:|---:|---:|"]
        for r in res["inference"]:
            out.append(f"| {r['model']} | {r['input']} | {r['threads']} | {r['per_unit_ms']:.1f}/{r['unit']} | "
                       f"{100 * r['run_ms'] / r['total_ms']:.1f} | {r['peak_rss_mib']:.0f} |")
        out.append("")
    if res.get("memory"):
        out += ["## Memory (myonode process)", "",
                "| series | binary | analysis | shape z,y,x | f32 volume MiB | model MiB | peak RSS MiB (max) | runs | ratio | < 3x | s |",
                "|---|---|---|---|---:|---:|---:|---|---:|---|---:|"]
        for r in res["memory"]:
            out.append(f"| {r['series']} | {r.get('binary', 'myonode')} | {r['analysis']} | {r['volume_zyx']} | "
                       f"{r['f32_volume_mib']} | {r['model_mib']} | {r['peak_rss_mib']} | "
                       f"{', '.join(str(x) for x in r.get('peak_rss_mib_runs', []))} | "
                       f"{r['ratio_to_volume_plus_model']} | {r['goal_lt_3x']} | {r['seconds']} |")
        out.append("")
    if res.get("scaling"):
        s = res["scaling"]
        out += ["## Scaling (%d series at once, quiet period %s s)" % (s["series"], s["quiet_period_s"]), "",
                f"received {s['instances']} instances in {s['send_seconds']} s ({s['receive_instances_per_s']} inst/s); "
                f"all results delivered {s['all_delivered_seconds']} s after the start; "
                f"max wait behind other series {s['max_waited_behind_others_ms']} ms", "",
                "| series | last received s | complete s | delivered s | waited behind others ms |", "|---|---:|---:|---:|---:|"]
        for p in s["per_series"]:
            out.append(f"| …{p['series'][-8:]} | {p['last_received']} | {p['complete']} | {p['delivered']} | "
                       f"{p['waited_behind_others_ms']} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized smoke run")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "bench")
    ap.add_argument("--bin", type=Path, default=Path(os.environ.get("MYONODE_BIN", REPO / "target" / "release" / "myonode")))
    ap.add_argument("--inference-bin", type=Path, default=REPO / "target" / "release" / "examples" / "bench_inference")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("MYONODE_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--sections", default="receive,latency,inference,memory,scaling")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scaling-data", choices=["knee", "lumbar"], default="knee",
                    help="scaling: 8 copies of the knee series (body-mask), or 8 lumbar water series with "
                         "GENERATED HEADERS from the shipped model's test and validation volumes (the shipped model)")
    ap.add_argument("--latency-warmups", type=int, default=2,
                    help="warm-up series sent at once before each measured series: one per segment worker "
                         "(conf default segment.workers = 2)")
    ap.add_argument("--latency-repeat", type=int, default=1, help="repetitions of the latency section (median reported)")
    ap.add_argument("--memory-repeat", type=int, default=1,
                    help="repetitions of each memory case (the maximum peak RSS is reported)")
    ap.add_argument("--analyses", default=None, help="latency analyses, comma-separated (default body-mask[,lumbar-vertebrae-mr])")
    ap.add_argument("--lumbar-cases", choices=["both", "water-only"], default="both",
                    help="latency of the lumbar model: with the default assemble.dixon_channels (waits "
                         "assemble.study_window_seconds for partners) and with [water], or only the latter")
    ap.add_argument("--small", type=int, default=1000, help="number of generated small instances")
    ap.add_argument("--parallel", default="1,4")
    ap.add_argument("--quiet", type=float, default=2.0, help="completion quiet period (s) for latency/scaling")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--slices-2d", type=int, default=8)
    ap.add_argument("--edge-3d", type=int, default=128)
    ap.add_argument("--keep", action="store_true", help="keep the servers' output folders")
    ap.add_argument("--compare-bin", type=Path, default=None,
                    help="an earlier myonode binary, measured as `myonode-before` in the receive and memory sections")
    args = ap.parse_args(argv)
    sections = set(args.sections.split(","))
    if args.quick:
        args.repeat, args.small, args.parallel = 1, 24, "1,2"
        sections.discard("inference")
    args.parallel = [int(x) for x in args.parallel.split(",")]
    for tool in ("storescp", "storescu"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} (DCMTK) not found")
    if not args.bin.exists():
        raise SystemExit(f"bench: node binary {args.bin} not found (cargo build --release)")
    series = args.data / "series"
    knee = series / ("mr-pelvis-adc" if args.quick else "mr-knee-dess-echo1")
    pelvis = series / "mr-pelvis-adc"
    if not knee.is_dir():
        raise SystemExit(f"bench: test data not found at {series} (set MYONODE_DATA)")
    out = args.out.resolve()  # the node runs in its own work folder: paths must be absolute
    out.mkdir(parents=True, exist_ok=True)
    gen = out / "generated"
    res = {"machine": machine(), "config": {"quick": args.quick, "repeat": args.repeat, "pdu": PDU,
                                            "node_binary": str(args.bin), "parallel": args.parallel,
                                            "compare_binary": str(args.compare_bin) if args.compare_bin else None}}
    print(f"machine: {res['machine']}", flush=True)

    pelvis_files = files_of(pelvis)
    knee_files = files_of(knee)
    if "receive" in sections:
        small = write_copies(pelvis_files[:1], gen / "small", args.small, z_step=1.0)
        res["receive"] = bench_receive(args, out, {knee.name: knee_files, f"small-{args.small}": small})
    inference = []
    if "inference" in sections:
        res["inference"] = inference = bench_inference(args, out)
    if "latency" in sections:
        warm = copy_series(pelvis, gen / "warmup")
        analyses = (args.analyses.split(",") if args.analyses
                    else ["body-mask"] + ([] if args.quick else ["lumbar-vertebrae-mr"]))
        compute = {}
        for r in inference:
            if r.get("shipped") and r["threads"] == 2:
                compute["lumbar-vertebrae-mr"] = r["run_ms"]
        # in quick mode the "knee" is the pelvis series itself: use a copy so the warm-up differs
        lat_series = copy_series(knee, gen / "latency") if args.quick else knee_files
        # the lumbar model takes only Dixon water images (the node refuses the knee for it):
        # it is measured on its own kind of input, the other analyses on the knee
        cases = [dict(analysis=a, data=knee.name, series=lat_series, warmup=warm)
                 for a in analyses if a != "lumbar-vertebrae-mr"]
        lumbar = lumbar_case(args, gen) if "lumbar-vertebrae-mr" in analyses else None
        if lumbar:
            data_name, files, warm_lumbar = lumbar
            case = dict(analysis="lumbar-vertebrae-mr", data=data_name, series=files, warmup=warm_lumbar)
            # a site that sends only the water image says so: no wait for partners
            water_only = dict(case, data=data_name + ", dixon_channels = [water]",
                              env={"MYONODE__ASSEMBLE__DIXON_CHANNELS": "water"})
            cases += [water_only] if args.lumbar_cases == "water-only" else [case, water_only]
        res["latency"] = bench_latency(args, out, cases, compute)
    if "memory" in sections:
        import pydicom
        d0 = pydicom.dcmread(knee_files[0], stop_before_pixels=True)
        n_long = 60 if args.quick else 1000
        long_dir = gen / f"long-{n_long}"
        if not long_dir.exists() or len(files_of(long_dir)) != n_long:
            shutil.rmtree(long_dir, ignore_errors=True)
            o = [float(v) for v in d0.ImageOrientationPatient]
            write_copies(knee_files, long_dir, n_long, z_step=float(getattr(d0, "SpacingBetweenSlices", 0) or
                                                                      getattr(d0, "SliceThickness", 1.0)))
        cases = {
            knee.name: (knee, (len(knee_files), d0.Rows, d0.Columns), "body-mask"),
            f"{n_long}-slice": (long_dir, (n_long, d0.Rows, d0.Columns), "body-mask"),
        }
        # the shipped model on its own kind of input (GENERATED HEADERS, see lumbar_case): the
        # test volume as it is, and 1,000 sagittal slices cycling through it at 1 mm (a volume
        # no scanner makes, 1 m left-right; for memory only)
        lumbar = None if args.quick else lumbar_case(args, gen)
        if lumbar:
            _, files, _ = lumbar
            import pydicom
            l0 = pydicom.dcmread(files[0], stop_before_pixels=True)
            cases["lumbar-mr (generated headers)"] = (files[0].parent, (len(files), l0.Rows, l0.Columns),
                                                      "lumbar-vertebrae-mr")
            long_lumbar = gen / "lumbar-long-1000"
            shutil.rmtree(long_lumbar, ignore_errors=True)
            ordered = sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber))
            write_copies(ordered, long_lumbar, 1000, z_step=1.0)
            cases["lumbar-mr 1000-slice (generated)"] = (long_lumbar, (1000, l0.Rows, l0.Columns), "lumbar-vertebrae-mr")
        res["memory"] = bench_memory(args, out, cases)
    if "scaling" in sections:
        dirs = []
        if args.scaling_data == "lumbar":
            # the shipped model's own input: its 5 test and 3 of its validation volumes, each a
            # sagittal Dixon water series with GENERATED HEADERS (lumbar_series.write_series);
            # the site sends only water images (no wait for Dixon partners)
            import scipy.io
            from lumbar_series import write_series
            m = json.loads((REPO / "models" / "lumbar-vertebrae-mr" / "metrics.json").read_text())
            for i, name in enumerate((m["test"] + m["validation"])[:8]):
                d = gen / f"scaling-{i}"
                shutil.rmtree(d, ignore_errors=True)
                write_series(scipy.io.loadmat(args.data / "training" / "lumbar-vertebrae-mr" / name)["I"], d, seed=i)
                dirs.append(d)
            res["scaling"] = bench_scaling(args, out, dirs, MYONODE__ASSEMBLE__DIXON_CHANNELS="water")
        else:
            for i in range(8):
                d = gen / f"scaling-{i}"
                shutil.rmtree(d, ignore_errors=True)
                copy_series(knee, d)
                dirs.append(d)
            res["scaling"] = bench_scaling(args, out, dirs)
    if not args.keep:
        shutil.rmtree(gen, ignore_errors=True)
    (out / "bench.json").write_text(json.dumps(res, indent=2))
    md = table(res)
    (out / "bench.md").write_text(md + "\n")
    print("\n" + md)
    print(f"\nwritten: {out / 'bench.json'}, {out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
