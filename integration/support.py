"""Helpers shared by the end-to-end tests: locating inputs, running DCMTK and
the node binary, waiting (bounded) for files, reading DICOM results.

Nothing here asserts on timing: every wait polls for a condition up to a
generous limit and fails with a description of what never happened.
"""

from __future__ import annotations

import os
import signal
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, TypeVar

import pydicom

REPO = Path(__file__).resolve().parent.parent

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
"""SOP Class UID of Segmentation Storage (PS3.4 B.5)."""

BASIC_TEXT_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"
"""SOP Class UID of Basic Text SR Storage (PS3.4 B.5): a class the node must not accept."""

DEFAULT_WAIT_SECONDS = float(os.environ.get("MYONODE_TEST_WAIT_SECONDS", "300"))
"""Upper bound for waiting on an asynchronous result (SEG arrival, quarantine).
Generous because the debug build runs on 2 shared cores; override with
MYONODE_TEST_WAIT_SECONDS."""

T = TypeVar("T")


def env_path(var: str, default: Path) -> Path:
    """Path from environment variable `var`, else `default`."""
    value = os.environ.get(var)
    return Path(value) if value else default


def data_dir() -> Path:
    """The shared test data (MYONODE_DATA, default <repo>/../shared/data)."""
    return env_path("MYONODE_DATA", REPO.parent / "shared" / "data").resolve()


def node_binary() -> Path:
    """The node under test (MYONODE_BIN, default <repo>/target/debug/myonode)."""
    return env_path("MYONODE_BIN", REPO / "target" / "debug" / "myonode").resolve()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound with port 0 and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for(
    what: str,
    probe: Callable[[], Optional[T]],
    timeout: float = DEFAULT_WAIT_SECONDS,
    interval: float = 0.2,
    alive: Optional[Callable[[], Optional[str]]] = None,
) -> T:
    """Poll `probe` until it returns a truthy value and return that value.

    `alive`, if given, is called on every round and returns an error text when
    waiting is pointless (e.g. the node process died). Raises AssertionError
    naming `what` after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if alive is not None:
            problem = alive()
            if problem:
                raise AssertionError(f"while waiting for {what}: {problem}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def require_tool(name: str) -> str:
    """Absolute path of an executable on PATH; fails the test clearly when absent."""
    path = shutil.which(name)
    assert path, f"`{name}` not found on PATH (install DCMTK: scripts/setup.sh)"
    return path


def run(
    cmd: Iterable[object], timeout: float = 600, env: Optional[dict] = None, cwd: Optional[Path] = None
) -> subprocess.CompletedProcess:
    """Run a command to completion (no stdin), capturing text output."""
    args = [str(c) for c in cmd]
    return subprocess.run(
        args,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def describe(proc: subprocess.CompletedProcess) -> str:
    """Command line, exit status and output of a finished process, for assertion messages."""
    return (
        f"$ {' '.join(proc.args)}\nexit status {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )


def dcmtk_env() -> dict:
    """Environment for DCMTK tools: TCP_NODELAY=1 (DCMTK honours it; avoids ~40 ms Nagle stalls)."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def echoscu(port: int, called_ae: str, calling_ae: str = "ECHOSCU") -> subprocess.CompletedProcess:
    """C-ECHO (PS3.7 9.1.5) from DCMTK echoscu to 127.0.0.1:port."""
    return run(
        [require_tool("echoscu"), "-aet", calling_ae, "-aec", called_ae, "127.0.0.1", port],
        timeout=120,
        env=dcmtk_env(),
    )


def storescu(
    port: int,
    called_ae: str,
    paths: Iterable[Path],
    calling_ae: str = "STORESCU",
    extra: Iterable[str] = (),
) -> subprocess.CompletedProcess:
    """C-STORE (PS3.4 B.2) every file under `paths` (directories recursively) with DCMTK storescu.

    Proposes only the presentation contexts needed for the files (`-R`); pass
    `extra=["-xv"]` to also propose JPEG 2000 lossless so compressed files go
    unchanged (storescu cannot transcode JPEG 2000).
    """
    cmd = [
        require_tool("storescu"),
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        "-R",
        "+sd",
        "+r",
        *extra,
        "127.0.0.1",
        port,
        *paths,
    ]
    return run(cmd, timeout=900, env=dcmtk_env())


def dicom_files(folder: Path) -> list[Path]:
    """All regular files under `folder` that pydicom reads as DICOM Part-10, sorted."""
    out = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        try:
            pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:
            continue
        out.append(p)
    return out


def read_header(path: Path) -> pydicom.Dataset:
    """Header of a Part-10 file (no Pixel Data)."""
    return pydicom.dcmread(path, stop_before_pixels=True)


COMPREHENSIVE_3D_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"


def storescp_completion_args(folder: Path) -> list[str]:
    """storescp options that mark each received file complete: storescp writes an object under its
    final name, so a test reading the folder meanwhile can see a truncated file (which pydicom may
    still parse, without its later attributes). `-xcr … -xs` runs `touch` synchronously after the
    file is saved and before the C-STORE-RSP, so the marker `<folder>.complete/<file name>` exists
    exactly for complete files, and for every file the sender has seen acknowledged."""
    markers = completion_markers(folder)
    markers.mkdir(parents=True, exist_ok=True)
    return ["-xcr", f"touch {markers}/#f", "-xs"]


def completion_markers(folder: Path) -> Path:
    """Folder of the completion markers of a storescp writing to `folder` (see storescp_completion_args)."""
    return folder.parent / f"{folder.name}.complete"


def find_by_sop_class(folder: Path, sop_class_uid: str, with_pixels: bool = False) -> list[Path]:
    """Complete Part-10 files of one SOP class under `folder`. When `folder` is a storescp output
    folder with completion markers (storescp_completion_args), a file counts only once its marker
    exists; otherwise (and in any case) a file that does not parse, and with `with_pixels` one
    whose Pixel Data cannot be read, is skipped as partly written."""
    found = []
    if not folder.exists():
        return found
    markers = completion_markers(folder)
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        if markers.is_dir() and not (markers / p.name).exists():
            continue
        try:
            ds = pydicom.dcmread(p)
            if ds.get("SOPClassUID") != sop_class_uid:
                continue
            if with_pixels:
                _ = ds.PixelData  # a truncated file fails here
        except Exception:
            continue
        found.append(p)
    return found


def find_srs(folder: Path) -> list[Path]:
    """Complete Comprehensive 3D SR files under `folder`."""
    return find_by_sop_class(folder, COMPREHENSIVE_3D_SR_STORAGE)


def find_segs(folder: Path) -> list[Path]:
    """Complete Segmentation Storage files under `folder`."""
    return find_by_sop_class(folder, SEGMENTATION_STORAGE, with_pixels=True)


def files_under(folder: Path) -> list[Path]:
    """Regular files under `folder` (empty list if it does not exist)."""
    if not folder.exists():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file())


def check_seg(seg: Path, labels: Path, source_dir: Path, python: Path) -> subprocess.CompletedProcess:
    """Run integration/check_seg.py (dciodvfy, highdicom read, references, positions, mask == labels)."""
    script = REPO / "integration" / "check_seg.py"
    assert script.is_file(), f"{script} is missing (it is written by the SEG engineer)"
    env = dict(os.environ)
    # dciodvfy lives next to the venv python.
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    return run([python, script, seg, "--labels", labels, "--source-dir", source_dir, "--require-dcmqi"], timeout=900, env=env)


def tools_python() -> Path:
    """Interpreter with the pinned tools for check_seg.py: MYONODE_PYTHON, else the one running pytest.

    Fails the test clearly when MYONODE_PYTHON names a missing file.
    """
    explicit = os.environ.get("MYONODE_PYTHON")
    python = Path(explicit) if explicit else Path(sys.executable)
    assert python.exists(), f"MYONODE_PYTHON={python} does not exist (run scripts/setup.sh to create .venv)"
    return python


# ------------------------------------------------------------- processes
@dataclass
class Pacs:
    """A running DCMTK storescp: called AE `ae_title` on 127.0.0.1:`port`, files under `folder`."""

    ae_title: str
    port: int
    folder: Path
    log: Path
    proc: subprocess.Popen

    def segs(self) -> list[Path]:
        """Complete Segmentation Storage files received so far."""
        return find_segs(self.folder)

    def srs(self) -> list[Path]:
        """Comprehensive 3D SR (TID 1500 measurement report) files received so far."""
        return find_srs(self.folder)

    def files(self) -> list[Path]:
        return files_under(self.folder)


def stop(proc: subprocess.Popen, grace: float = 15.0) -> Optional[int]:
    """SIGTERM, then SIGKILL after `grace` seconds; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    return proc.returncode


@dataclass
class Node:
    """A running `myonode serve`: AE `ae_title` on 127.0.0.1:`port`, spool at `spool`."""

    ae_title: str
    port: int
    spool: Path
    config: Path
    log: Path
    proc: subprocess.Popen
    env: dict = field(repr=False)

    def problem(self) -> Optional[str]:
        """Why waiting for this node is pointless (it exited), else None."""
        if self.proc.poll() is None:
            return None
        return f"myonode exited with status {self.proc.returncode}; log:\n{self.log_text()}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def incoming_files(self) -> list[Path]:
        return files_under(self.spool / "incoming")

    def quarantine_reason(self, series_uid: str) -> Optional[Path]:
        p = self.spool / "quarantine" / series_uid / "REASON.txt"
        return p if p.is_file() and p.stat().st_size > 0 else None

    def job_dir_of_seg(self, sop_instance_uid: str) -> Optional[Path]:
        """The jobs/<job_id>/ folder whose seg.dcm has this SOPInstanceUID."""
        for seg in sorted((self.spool / "jobs").glob("*/seg.dcm")):
            try:
                if read_header(seg).SOPInstanceUID == sop_instance_uid:
                    return seg.parent
            except Exception:
                continue
        return None


def launch_node(node_bin: Path, root: Path, config_text: str, **overrides: str) -> Node:
    """Start `myonode serve --config root/myonode.toml` (written from `config_text`) in `root`, on a free
    loopback port, spool `root/spool`, quiet period 1 s, log `root/myonode.log`; wait until the port accepts.

    Keyword arguments become environment overrides: `RECEIVE__MAX_ASSOCIATIONS="2"` sets
    MYONODE__RECEIVE__MAX_ASSOCIATIONS. The caller stops the node (`stop(node.proc)`).
    Raises AssertionError (with the log) when the node exits or does not listen within 60 s.
    """
    root.mkdir(parents=True, exist_ok=True)
    config = root / "myonode.toml"
    config.write_text(config_text)
    port = free_port()
    env = clean_env()
    env.update(
        {
            "MYONODE__RECEIVE__HOST": "127.0.0.1",
            "MYONODE__RECEIVE__PORT": str(port),
            "MYONODE__SPOOL__DIR": str(root / "spool"),
            "MYONODE__ASSEMBLE__QUIET_PERIOD_SECONDS": "1",
            "RUST_BACKTRACE": "1",
        }
    )
    env.update({f"MYONODE__{k.upper()}": str(v) for k, v in overrides.items()})
    log = root / "myonode.log"
    with open(log, "w") as logf:
        proc = subprocess.Popen(
            [str(node_bin), "serve", "--config", str(config)],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
        )
    node = Node("MYONODE", port, root / "spool", config, log, proc, env)
    wait_for(f"myonode to accept connections on port {port}", lambda: port_accepts(port), timeout=60, alive=node.problem)
    return node


def node_config_text(pacs_port: int, max_attempts: int = 3, retry_delay: float = 0.5) -> str:
    """A --config file whose only destination is the test PACS (all destination keys given)."""
    return (
        "[[destinations]]\n"
        'name = "pacs"\n'
        'ae_title = "PACS"\n'
        'host = "127.0.0.1"\n'
        f"port = {pacs_port}\n"
        f"max_attempts = {max_attempts}\n"
        f"retry_delay_seconds = {retry_delay}\n"
    )


def clean_env() -> dict:
    """os.environ without any MYONODE__* override that would leak into the node, plus the
    absolute locations of the repository's models and ONNX Runtime library (the node runs
    in a temporary working directory, and the default config's relative paths
    `models` / `.onnxruntime/lib/...` are relative to the working directory)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYONODE__")}
    env["MYONODE__SEGMENT__MODELS_DIR"] = str(REPO / "models")
    env["MYONODE__SEGMENT__ONNXRUNTIME_LIBRARY"] = str(REPO / ".onnxruntime" / "lib" / "libonnxruntime.so.1.31.1")
    env["MYONODE__HTTP__BIND"] = "127.0.0.1:0"  # any free port (the log says "HTTP listening on ADDR")
    # the calling AE allow-list is on by default: admit the titles the tests send with
    env["MYONODE__RECEIVE__ALLOWED_CALLING_AE_TITLES"] = ",".join(TEST_CALLING_AE_TITLES)
    return env


# Calling AE titles the tests' DCMTK tools use (echoscu/storescu defaults, "SCANNER").
TEST_CALLING_AE_TITLES = ("ECHOSCU", "STORESCU", "SCANNER")


