"""Fixtures of the end-to-end suite: a DCMTK `storescp` playing the PACS and a
`myonode serve` process wired to it, each on a free loopback port with its own
temporary folders.

Environment:
  MYONODE_DATA    shared test data (default <repo>/../shared/data); the tests fail if it is missing
  MYONODE_BIN     node binary (default <repo>/target/debug/myonode)
  MYONODE_PYTHON  interpreter for integration/check_seg.py (default: the one running pytest)
  MYONODE_TEST_WAIT_SECONDS  bound for waiting on results (default 300)
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

import support


# ------------------------------------------------------------ failure reports
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Remember each phase's report on the item so fixtures can dump logs only on failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request) -> bool:
    rep = getattr(request.node, "rep_call", None)
    setup = getattr(request.node, "rep_setup", None)
    return bool((rep is not None and rep.failed) or (setup is not None and setup.failed))


# ------------------------------------------------------------------- inputs
@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared test data folder; fails (does not skip) when it is missing."""
    d = support.data_dir()
    assert (d / "series").is_dir(), (
        f"test data not found at {d}: set MYONODE_DATA to the shared data folder "
        "(it must contain series/ and awkward/)"
    )
    return d


@pytest.fixture(scope="session")
def node_bin() -> Path:
    """The myonode binary under test."""
    b = support.node_binary()
    assert b.is_file() and os.access(b, os.X_OK), (
        f"node binary {b} not found: build it with `cargo build` or set MYONODE_BIN"
    )
    return b


@pytest.fixture(scope="session")
def tools_python() -> Path:
    """Python with pydicom/highdicom/dciodvfy for check_seg.py."""
    return support.tools_python()


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Factory of free TCP ports on 127.0.0.1."""
    return support.free_port


# --------------------------------------------------------------------- PACS
@pytest.fixture
def pacs(tmp_path: Path, request) -> Iterator[support.Pacs]:
    """DCMTK storescp as the PACS (AE PACS, accepts all transfer syntaxes, writes to a temp folder).

    Note: storescp 3.6.7 has no option to bind one address; it listens on all
    interfaces of a free port for the duration of the test. Only loopback
    traffic is sent to it.
    """
    folder = tmp_path / "pacs"
    folder.mkdir()
    port = support.free_port()
    log = tmp_path / "storescp.log"
    with open(log, "w") as logf:
        proc = subprocess.Popen(
            [support.require_tool("storescp"), "-v", "-aet", "PACS", "-od", str(folder), "+xa",
             *support.storescp_completion_args(folder), str(port)],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=support.dcmtk_env(),
        )
    try:
        support.wait_for(
            f"storescp to listen on port {port}",
            lambda: support.port_accepts(port),
            timeout=30,
            alive=lambda: None if proc.poll() is None else f"storescp exited with {proc.returncode}",
        )
        yield support.Pacs("PACS", port, folder, log, proc)
    finally:
        support.stop(proc)
        if _failed(request):
            print(f"\n----- storescp log ({log}) -----\n{log.read_text(errors='replace')}")


# --------------------------------------------------------------------- node
@pytest.fixture
def start_node(tmp_path: Path, node_bin: Path, pacs: support.Pacs, request) -> Iterator[Callable[..., support.Node]]:
    """Factory: start `myonode serve` wired to the `pacs` fixture.

    Keyword arguments become environment overrides, e.g.
    `start_node(RECEIVE__ALLOWED_CALLING_AE_TITLES="SCANNER1")` sets
    MYONODE__RECEIVE__ALLOWED_CALLING_AE_TITLES. Defaults: free port, spool in
    a temp folder, quiet period 1 s, fsync on. Waits until the port accepts
    connections; stops the node (SIGTERM) at teardown and prints its log if the
    test failed.
    """
    started: list[support.Node] = []

    def start(**overrides: str) -> support.Node:
        node = support.launch_node(node_bin, tmp_path / f"node{len(started)}", support.node_config_text(pacs.port), **overrides)
        started.append(node)
        return node

    yield start

    failed = _failed(request)
    for node in started:
        status = support.stop(node.proc)
        if failed:
            print(f"\n----- myonode log ({node.log}, exit status {status}) -----\n{node.log_text()}")


@pytest.fixture
def node(start_node) -> support.Node:
    """`myonode serve` with the default test settings (calling AEs `support.TEST_CALLING_AE_TITLES`)."""
    return start_node()
