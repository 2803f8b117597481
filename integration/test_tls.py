"""End-to-end tests of DICOM TLS (PS3.15 Annex B.1, issue #7) with DCMTK's TLS tools.

A throwaway PKI is made per test with the `openssl` CLI: a CA that issues the node's server
certificate (CN=localhost, SAN localhost/127.0.0.1) and a scanner's client certificate, plus a
second, unrelated CA with its own client certificate.

1. storescu +tls sends the knee series to the node's TLS port → the SEG arrives at the PACS;
   the node logs tls=true and the client certificate's subject.
2. The node sends its results to a storescp +tls destination (with a client certificate,
   which storescp requires) and C-ECHOes it through TLS for /readyz.
3. With client verification on: no certificate / a certificate of another CA is refused in
   the handshake, logged with the peer address, nothing stored; echoscu +tls with the right
   certificate succeeds.
4. Plain storescu/echoscu on the TLS port fails cleanly and the node keeps serving.
Plus: missing or bad TLS files are start-up errors naming the configuration key.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

import support

ANSI = re.compile(r"\x1b\[[0-9;]*m")
KNEE = "mr-knee-dess-echo1"
SMALL = "mr-pelvis-adc"


# ------------------------------------------------------------------ PKI
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_crt: Path
    server_key: Path
    client_crt: Path
    client_key: Path
    other_ca: Path
    other_client_crt: Path
    other_client_key: Path


def openssl(*args: object, cwd: Path) -> None:
    p = support.run([support.require_tool("openssl"), *args], timeout=120, cwd=cwd)
    assert p.returncode == 0, support.describe(p)


def make_ca(d: Path, name: str, cn: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt, "-days", "2",
            "-subj", f"/CN={cn}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return crt, key


def issue(d: Path, name: str, cn: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    key, csr, crt, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={cn}/O=myonode test", cwd=d)
    openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-out", crt,
            "-days", "2", "-sha256", "-extfile", ext, cwd=d)
    return crt, key


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    d = tmp_path / "pki"
    d.mkdir()
    ca = make_ca(d, "ca", "myonode test CA")
    other = make_ca(d, "other-ca", "unrelated CA")
    server = issue(d, "server", "localhost", ca)
    client = issue(d, "client", "scanner1", ca)
    other_client = issue(d, "other-client", "intruder", other)
    return Pki(ca[0], server[0], server[1], client[0], client[1], other[0], other_client[0], other_client[1])


# ------------------------------------------------------------------ helpers
def tls_args(key: Path, crt: Path, ca: Path) -> list[str]:
    """DCMTK 3.6.7 TLS options: +tls KEY CERT, trust CA (+cf), unencrypted key (-pw)."""
    return ["+tls", str(key), str(crt), "-pw", "+cf", str(ca)]


def echoscu_tls(port: int, called_ae: str, extra: list[str]) -> subprocess.CompletedProcess:
    return support.run([support.require_tool("echoscu"), "-aet", "ECHOSCU", "-aec", called_ae, *extra, "127.0.0.1", port],
                       timeout=120, env=support.dcmtk_env())


def failed(request) -> bool:
    """The test's setup or call failed (reports stored by conftest's makereport hook)."""
    return any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))


def log_of(node: support.Node) -> str:
    return ANSI.sub("", node.log_text())


def tls_receive_env(pki: Pki, port: int, client_ca: bool = True) -> dict:
    env = {
        "RECEIVE__TLS__ENABLED": "true",
        "RECEIVE__TLS__PORT": str(port),
        "RECEIVE__TLS__CERTIFICATE": str(pki.server_crt),
        "RECEIVE__TLS__PRIVATE_KEY": str(pki.server_key),
    }
    if client_ca:
        env["RECEIVE__TLS__CLIENT_CA"] = str(pki.ca)
    return env


def wait_port(port: int, node: support.Node) -> None:
    support.wait_for(f"the TLS port {port}", lambda: support.port_accepts(port), timeout=60, alive=node.problem)


# ------------------------------------------------------------------ 1. receive over TLS
def test_storescu_over_tls_delivers_a_seg(start_node, pacs: support.Pacs, pki: Pki, data_dir: Path):
    tls_port = support.free_port()
    node = start_node(**tls_receive_env(pki, tls_port))
    wait_port(tls_port, node)
    folder = data_dir / "series" / KNEE
    sent = support.storescu(tls_port, node.ae_title, [folder], "SCANNER", tls_args(pki.client_key, pki.client_crt, pki.ca))
    assert sent.returncode == 0, support.describe(sent)
    segs = support.wait_for("a DICOM-SEG at the PACS", pacs.segs, timeout=300, alive=node.problem)
    assert len(segs) == 1
    seg = support.read_header(segs[0])
    src = support.read_header(support.dicom_files(folder)[0])
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    stored = sum(int(m) for m in re.findall(r"association ended .*tls=true stored=(\d+)", log_of(node)))
    assert stored == len(support.dicom_files(folder)), log_of(node)
    established = [l for l in log_of(node).splitlines() if "association established" in l]
    assert established and all("tls=true" in l for l in established), "\n".join(established)
    assert any("CN=scanner1" in l for l in established), "client certificate subject missing:\n" + "\n".join(established)


# ------------------------------------------------------------------ 3. + 4. refusals
def test_tls_client_verification_and_plain_clients_on_the_tls_port(start_node, pki: Pki, data_dir: Path):
    tls_port = support.free_port()
    node = start_node(**tls_receive_env(pki, tls_port))
    wait_port(tls_port, node)
    one = support.dicom_files(data_dir / "series" / SMALL)[0]

    # no client certificate (anonymous TLS): refused in the handshake
    anon = support.storescu(tls_port, node.ae_title, [one], "SCANNER", ["+tla", "+cf", str(pki.ca)])
    assert anon.returncode != 0, support.describe(anon)
    # a client certificate from another CA: refused
    other = support.storescu(tls_port, node.ae_title, [one], "SCANNER",
                             tls_args(pki.other_client_key, pki.other_client_crt, pki.ca))
    assert other.returncode != 0, support.describe(other)
    # plain DICOM on the TLS port: fails cleanly
    plain = support.storescu(tls_port, node.ae_title, [one], "SCANNER")
    assert plain.returncode != 0, support.describe(plain)
    plain_echo = support.echoscu(tls_port, node.ae_title)
    assert plain_echo.returncode != 0, support.describe(plain_echo)

    assert node.incoming_files() == [], "nothing may be stored from refused connections"
    refused = [l for l in log_of(node).splitlines() if "TLS handshake failed" in l]
    assert len(refused) >= 4, log_of(node)
    assert all("peer=127.0.0.1:" in l for l in refused), "\n".join(refused)

    # the node keeps serving: TLS with the right certificate, and the plain port
    ok = echoscu_tls(tls_port, node.ae_title, tls_args(pki.client_key, pki.client_crt, pki.ca))
    assert ok.returncode == 0, support.describe(ok)
    assert support.echoscu(node.port, node.ae_title).returncode == 0
    # `myonode echo` over TLS (the CLI's --tls-* options), calling as an allowed AE title
    env = {**support.clean_env(), "MYONODE__NODE__AE_TITLE": "ECHOSCU"}
    cli = [str(support.node_binary()), "echo", "--port", str(tls_port), "--aet", node.ae_title, "--tls-ca", str(pki.ca)]
    own = support.run([*cli, "--tls-cert", str(pki.client_crt), "--tls-key", str(pki.client_key)], env=env, timeout=60)
    assert own.returncode == 0 and "status 0x0000" in own.stdout, support.describe(own)
    no_cert = support.run(cli, env=env, timeout=60)  # the node requires a client certificate
    assert no_cert.returncode != 0, support.describe(no_cert)
    assert node.proc.poll() is None
    # the allow-list applies to TLS associations too
    bad_ae = support.run([support.require_tool("echoscu"), "-aet", "NOT_LISTED", "-aec", node.ae_title,
                          *tls_args(pki.client_key, pki.client_crt, pki.ca), "127.0.0.1", tls_port],
                         timeout=120, env=support.dcmtk_env())
    assert bad_ae.returncode != 0, support.describe(bad_ae)
    assert "calling AE title not in the allow-list" in log_of(node)


def test_tls_only_node_has_no_plain_port(launch_node, pacs: support.Pacs, pki: Pki):
    plain_port, tls_port = support.free_port(), support.free_port()
    env = tls_receive_env(pki, tls_port, client_ca=False)
    env.update({"RECEIVE__PORT": str(plain_port), "RECEIVE__TLS__PLAIN_LISTENER": "false"})
    node = launch_node(support.node_config_text(pacs.port), env, tls_port)
    # no client CA: anonymous TLS clients are served
    ok = echoscu_tls(tls_port, node.ae_title, ["+tla", "+cf", str(pki.ca)])
    assert ok.returncode == 0, support.describe(ok)
    assert not support.port_accepts(plain_port), "TLS only: the plain port must not be open"
    assert "DICOM TLS listening on" in log_of(node)


# ------------------------------------------------------------------ 2. send over TLS
@pytest.fixture
def tls_pacs(tmp_path: Path, pki: Pki, request):
    """DCMTK storescp +tls (server certificate of `pki`; requires a client certificate issued by its CA)."""
    folder = tmp_path / "tls-pacs"
    folder.mkdir()
    port = support.free_port()
    log = tmp_path / "storescp-tls.log"
    with open(log, "w") as logf:
        proc = subprocess.Popen(
            [support.require_tool("storescp"), "-v", "-aet", "TLSPACS", "-od", str(folder), "+xa",
             *tls_args(pki.server_key, pki.server_crt, pki.ca), *support.storescp_completion_args(folder), str(port)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=support.dcmtk_env(),
        )
    try:
        support.wait_for(f"storescp +tls on port {port}", lambda: support.port_accepts(port), timeout=30,
                         alive=lambda: None if proc.poll() is None else f"storescp exited with {proc.returncode}")
        yield support.Pacs("TLSPACS", port, folder, log, proc)
    finally:
        support.stop(proc)
        if failed(request):
            print(f"\n----- storescp +tls log -----\n{log.read_text(errors='replace')}")


def test_node_sends_results_over_tls(launch_node, tls_pacs: support.Pacs, pki: Pki, data_dir: Path):
    config = (
        "[[destinations]]\n"
        'name = "tlspacs"\n'
        'ae_title = "TLSPACS"\n'
        'host = "127.0.0.1"\n'
        f"port = {tls_pacs.port}\n"
        "max_attempts = 3\n"
        "retry_delay_seconds = 0.5\n"
        f'tls = {{ ca = "{pki.ca}", cert = "{pki.client_crt}", key = "{pki.client_key}", server_name = "localhost" }}\n'
    )
    node = launch_node(config, {"HTTP__READINESS_INTERVAL_SECONDS": "1"}, None)
    sent = support.storescu(node.port, node.ae_title, [data_dir / "series" / SMALL])
    assert sent.returncode == 0, support.describe(sent)
    support.wait_for("a DICOM-SEG at the TLS PACS", tls_pacs.segs, timeout=240, alive=node.problem)
    support.wait_for("the SR at the TLS PACS", tls_pacs.srs, timeout=60, alive=node.problem)
    support.wait_for("both objects filed under sent/", lambda: len(support.files_under(node.spool / "sent" / "tlspacs")) >= 2,
                     timeout=60, alive=node.problem)
    assert not support.files_under(node.spool / "failed")
    log = log_of(node)
    delivered = [l for l in log.splitlines() if "delivered" in l and "destination=tlspacs" in l and "drained" not in l]
    assert delivered, log
    assert all(re.search(r"job=\S+-v\d+", l) for l in delivered), "send log lines need the job span:\n" + "\n".join(delivered)
    # /readyz: the destination check is a C-ECHO through TLS
    addr = support.wait_for("the HTTP address", lambda: (re.search(r"HTTP listening on (\S+)", log_of(node)) or [None, None])[1],
                            timeout=30, alive=node.problem)

    def ready():
        try:
            with urllib.request.urlopen(f"http://{addr}/readyz", timeout=30) as r:
                return json.loads(r.read()) if r.status == 200 else None
        except OSError:
            return None

    body = support.wait_for("/readyz 200", ready, timeout=60, alive=node.problem)
    dest_checks = [c for c in body["checks"] if "tlspacs" in json.dumps(c)]
    assert dest_checks and all(c["ok"] for c in dest_checks), body


# ------------------------------------------------------------------ invalid configuration
def test_bad_tls_files_are_startup_errors_naming_the_key(node_bin: Path, pki: Pki, tmp_path: Path):
    env = support.clean_env()
    missing = tmp_path / "missing.crt"
    env.update({f"MYONODE__{k}": v for k, v in tls_receive_env(pki, 2762).items()})
    env["MYONODE__RECEIVE__TLS__CERTIFICATE"] = str(missing)
    p = support.run([node_bin, "check-config"], env=env, timeout=60)
    assert p.returncode != 0 and "receive.tls.certificate" in p.stderr and str(missing) in p.stderr, support.describe(p)

    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    env["MYONODE__RECEIVE__TLS__CERTIFICATE"] = str(pki.server_crt)
    env["MYONODE__RECEIVE__TLS__PRIVATE_KEY"] = str(not_pem)
    p = support.run([node_bin, "check-config"], env=env, timeout=60)
    assert p.returncode != 0 and "receive.tls.private_key" in p.stderr, support.describe(p)

    env["MYONODE__RECEIVE__TLS__PRIVATE_KEY"] = str(pki.client_key)  # key of another certificate
    p = support.run([node_bin, "check-config"], env=env, timeout=60)
    assert p.returncode != 0 and "receive.tls.private_key" in p.stderr, support.describe(p)

    env["MYONODE__RECEIVE__TLS__PRIVATE_KEY"] = str(pki.server_key)
    p = support.run([node_bin, "check-config"], env=env, timeout=60)
    assert p.returncode == 0, support.describe(p)

    cfg = tmp_path / "dest.toml"
    cfg.write_text(support.node_config_text(104) + f'tls = {{ ca = "{not_pem}" }}\n')
    p = support.run([node_bin, "check-config", "--config", cfg], env=env, timeout=60)
    assert p.returncode != 0 and "destinations[0].tls.ca" in p.stderr, support.describe(p)


# ------------------------------------------------------------------ node launcher
@pytest.fixture
def launch_node(tmp_path: Path, node_bin: Path, request):
    """Factory: `myonode serve` with config file text `config` and MYONODE__ overrides `env`;
    waits for `wait_tls_port` (or the plain port when None). Stopped at teardown."""
    started: list[support.Node] = []

    def launch(config: str, env_overrides: dict, wait_tls_port) -> support.Node:
        root = tmp_path / f"tlsnode{len(started)}"
        root.mkdir()
        spool = root / "spool"
        cfg = root / "myonode.toml"
        cfg.write_text(config)
        env = support.clean_env()
        port = support.free_port()
        env.update({
            "MYONODE__RECEIVE__HOST": "127.0.0.1",
            "MYONODE__RECEIVE__PORT": str(port),
            "MYONODE__SPOOL__DIR": str(spool),
            "MYONODE__ASSEMBLE__QUIET_PERIOD_SECONDS": "1",
            "RUST_BACKTRACE": "1",
        })
        env.update({f"MYONODE__{k}": str(v) for k, v in env_overrides.items()})
        port = int(env["MYONODE__RECEIVE__PORT"])
        log = root / "myonode.log"
        with open(log, "w") as logf:
            proc = subprocess.Popen([str(node_bin), "serve", "--config", str(cfg)], cwd=root, stdin=subprocess.DEVNULL,
                                    stdout=logf, stderr=subprocess.STDOUT, env=env)
        node = support.Node("MYONODE", port, spool, cfg, log, proc, env)
        started.append(node)
        wait = wait_tls_port or port
        support.wait_for(f"myonode to accept connections on port {wait}", lambda: support.port_accepts(wait),
                         timeout=60, alive=node.problem)
        return node

    yield launch
    for node in started:
        status = support.stop(node.proc)
        if failed(request):
            print(f"\n----- myonode log ({node.log}, exit status {status}) -----\n{node.log_text()}")
