"""Orthanc as a test PACS: start it with a configuration and storage of its own,
talk to its REST API, stop it.

Orthanc (Debian packages `orthanc` 1.10 and `orthanc-dicomweb` 1.7, installed
by scripts/setup.sh) has no listen-address setting: its DICOM and HTTP servers
always bind 0.0.0.0. It may therefore only run inside a network namespace that
has nothing but the loopback interface (scripts/test.sh runs the suite in one).
`isolation_problem()` tells whether that holds; tests skip with its text
otherwise.

Configuration written here (Orthanc Book, "Configuration of Orthanc"; DICOMweb
plugin, "DICOMweb plugin" chapter):
  - storage and index in a temporary folder of the test, no compression;
  - DICOM SCP as AE `ORTHANC` on a free port, any calling AE may store, SOP
    classes Orthanc does not know (e.g. Label Map Segmentation) accepted;
  - HTTP (REST + DICOMweb at /dicom-web/, full study/series metadata) on a free
    port, `RemoteAccessAllowed` false, authentication off (only loopback exists).

REST resources used (Orthanc Book, "REST API of Orthanc"): /system, /studies,
/studies/{id}/series, /series/{id}/instances, /instances/{id}/tags?simplify,
/tools/lookup. Orthanc identifies resources by its own hashes ("Orthanc IDs");
the helpers below take and return DICOM UIDs where that is what tests know.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import support

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
"""The DICOMweb plugin of the Debian package `orthanc-dicomweb`."""

AE_TITLE = "ORTHANC"
"""Called AE title of the test Orthanc's DICOM server."""


def isolation_problem() -> Optional[str]:
    """Why Orthanc must not be started here, or None when it may.

    Orthanc binds 0.0.0.0, so it may run only where the loopback interface is
    the only network interface (`/sys/class/net` lists just `lo`), i.e. inside
    a loopback-only network namespace such as the one scripts/test.sh creates.
    """
    try:
        interfaces = sorted(os.listdir("/sys/class/net"))
    except OSError as e:
        return f"cannot list network interfaces (/sys/class/net: {e}); Orthanc binds 0.0.0.0"
    if interfaces != ["lo"]:
        return (
            f"network interfaces {interfaces} besides loopback: Orthanc 1.10 binds 0.0.0.0, so it runs "
            "only inside a loopback-only network namespace (scripts/test.sh creates one; by hand: "
            "ip netns add myo-x; ip netns exec myo-x ip link set lo up; ip netns exec myo-x <pytest ...>)"
        )
    return None


def binary() -> Optional[str]:
    """Path of the Orthanc executable: on PATH, else /usr/sbin/Orthanc (Debian), else None."""
    found = shutil.which("Orthanc")
    if found is None and os.access("/usr/sbin/Orthanc", os.X_OK):
        found = "/usr/sbin/Orthanc"
    return found


def installation_problem(dicomweb: bool = True) -> Optional[str]:
    """Why Orthanc cannot be started (binary or DICOMweb plugin missing), or None."""
    if binary() is None:
        return "Orthanc not found on PATH (Debian package `orthanc`; scripts/setup.sh installs it)"
    if dicomweb and not DICOMWEB_PLUGIN.is_file():
        return f"{DICOMWEB_PLUGIN} missing (Debian package `orthanc-dicomweb`; scripts/setup.sh installs it)"
    return None


class OrthancError(RuntimeError):
    """A REST call to Orthanc failed (HTTP status, or no connection); the message names the URL."""


@dataclass
class Orthanc:
    """One Orthanc process: DICOM AE `ae_title` on 127.0.0.1:`dicom_port`, REST on
    http://127.0.0.1:`http_port`, configuration, storage, index and log under `root`."""

    root: Path
    dicom_port: int
    http_port: int
    dicomweb: bool = True
    ae_title: str = AE_TITLE
    proc: Optional[subprocess.Popen] = field(default=None, repr=False)

    # ------------------------------------------------------------ files
    @property
    def config_path(self) -> Path:
        return self.root / "orthanc.json"

    @property
    def log(self) -> Path:
        return self.root / "orthanc.log"

    @property
    def url(self) -> str:
        """Base URL of the REST API (no trailing slash)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Root of the DICOMweb services (QIDO-RS, WADO-RS, STOW-RS; PS3.18), no trailing slash."""
        return f"{self.url}/dicom-web"

    def config(self) -> dict[str, Any]:
        """The Orthanc configuration written to `config_path` (JSON object)."""
        storage = self.root / "storage"
        cfg: dict[str, Any] = {
            "Name": "myonode-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "UnknownSopClassAccepted": True,
            "DicomModalities": {},
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "HttpDescribeErrors": True,
            "SaveJobs": False,
            "Plugins": [],
        }
        if self.dicomweb:
            cfg["Plugins"] = [str(DICOMWEB_PLUGIN)]
            cfg["DicomWeb"] = {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            }
        return cfg

    # --------------------------------------------------------- process
    def start(self, timeout: float = 60) -> "Orthanc":
        """Write the configuration and start Orthanc; return once REST answers /system
        and the DICOM port accepts connections.

        Raises AssertionError (with the log) when Orthanc exits or does not come up in `timeout` s.
        """
        assert self.proc is None or self.proc.poll() is not None, "Orthanc already running"
        problem = installation_problem(self.dicomweb)
        assert problem is None, problem
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        with open(self.log, "a") as logf:
            self.proc = subprocess.Popen(
                [binary(), str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        support.wait_for(
            f"Orthanc REST on port {self.http_port}",
            self._system_ok,
            timeout=timeout,
            alive=self.problem,
        )
        support.wait_for(
            f"Orthanc DICOM on port {self.dicom_port}",
            lambda: support.port_accepts(self.dicom_port),
            timeout=timeout,
            alive=self.problem,
        )
        return self

    def stop(self, grace: float = 15.0) -> Optional[int]:
        """SIGTERM (Orthanc shuts down cleanly), SIGKILL after `grace` s; returns the exit status."""
        if self.proc is None:
            return None
        return support.stop(self.proc, grace=grace)

    def kill(self) -> None:
        """SIGKILL at once (a crash of the PACS)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def problem(self) -> Optional[str]:
        """Why waiting on this Orthanc is pointless (it exited), else None."""
        if self.proc is not None and self.proc.poll() is None:
            return None
        status = None if self.proc is None else self.proc.returncode
        return f"Orthanc is not running (exit status {status}); log:\n{self.log_text()[-8000:]}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _system_ok(self) -> bool:
        try:
            return bool(self.get("/system"))
        except OrthancError:
            return False

    # ------------------------------------------------------------ REST
    def request(self, method: str, path: str, body: Optional[bytes] = None, timeout: float = 60) -> bytes:
        """Raw HTTP call to the REST API; `path` starts with '/'. Raises OrthancError."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:2000]
            raise OrthancError(f"{method} {self.url}{path}: HTTP {e.code} {detail}") from e
        except (urllib.error.URLError, OSError) as e:
            raise OrthancError(f"{method} {self.url}{path}: {e}") from e

    def get(self, path: str) -> Any:
        """GET `path` and parse the JSON answer."""
        return json.loads(self.request("GET", path))

    def post(self, path: str, payload: Any) -> Any:
        """POST a JSON (or raw text) payload and parse the JSON answer."""
        body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        return json.loads(self.request("POST", path, body))

    def lookup(self, uid: str) -> list[dict]:
        """/tools/lookup: the resources (Type, ID, Path) whose DICOM UID is `uid`."""
        return self.post("/tools/lookup", uid)

    def studies(self) -> list[dict]:
        """Every study: Orthanc's expanded study resources (ID, MainDicomTags, Series, ...)."""
        return self.get("/studies?expand")

    def study_id(self, study_instance_uid: str) -> Optional[str]:
        """Orthanc ID of the study with this Study Instance UID (0020,000D), None when absent."""
        for hit in self.lookup(study_instance_uid):
            if hit.get("Type") == "Study":
                return hit["ID"]
        return None

    def series_of_study(self, study_instance_uid: str) -> list[dict]:
        """Expanded series resources of a study (MainDicomTags has Modality, SeriesInstanceUID,
        ...; Instances lists Orthanc IDs); [] when the study is not stored."""
        sid = self.study_id(study_instance_uid)
        if sid is None:
            return []
        return self.get(f"/studies/{sid}/series?expand")

    def instances_of_series(self, series_orthanc_id: str) -> list[dict]:
        """Expanded instance resources of a series (by Orthanc ID)."""
        return self.get(f"/series/{series_orthanc_id}/instances?expand")

    def instances(self) -> list[str]:
        """Orthanc IDs of every stored instance."""
        return self.get("/instances")

    def instance_summaries(self) -> list[dict[str, Any]]:
        """Every stored instance as {"id", "sop_instance_uid", "sop_class_uid", "series" (Orthanc ID),
        "study_uid"}, one entry per stored copy."""
        out = []
        for inst in self.get("/instances?expand"):
            tags = self.tags(inst["ID"])
            out.append(
                {
                    "id": inst["ID"],
                    "sop_instance_uid": tags.get("SOPInstanceUID"),
                    "sop_class_uid": tags.get("SOPClassUID"),
                    "series": inst["ParentSeries"],
                    "study_uid": tags.get("StudyInstanceUID"),
                }
            )
        return out

    def tags(self, instance_orthanc_id: str) -> dict[str, Any]:
        """Simplified DICOM tags of an instance (keyword → value; sequences as lists of dicts)."""
        return self.get(f"/instances/{instance_orthanc_id}/tags?simplify")

    def file(self, instance_orthanc_id: str) -> bytes:
        """The stored Part-10 file of an instance."""
        return self.request("GET", f"/instances/{instance_orthanc_id}/file")

    def sop_classes_of_study(self, study_instance_uid: str) -> dict[str, list[str]]:
        """SOP Class UID (0008,0016) → SOP Instance UIDs stored in a study ({} when absent)."""
        out: dict[str, list[str]] = {}
        for series in self.series_of_study(study_instance_uid):
            for inst in self.instances_of_series(series["ID"]):
                tags = self.tags(inst["ID"])
                out.setdefault(tags.get("SOPClassUID", "?"), []).append(tags.get("SOPInstanceUID", "?"))
        return out

    def instances_of_class(self, study_instance_uid: str, sop_class_uid: str) -> list[str]:
        """Orthanc IDs of a study's instances of one SOP class (first instance of each series
        is checked for the class, then every instance of matching series is returned)."""
        out: list[str] = []
        for series in self.series_of_study(study_instance_uid):
            insts = self.instances_of_series(series["ID"])
            if insts and self.tags(insts[0]["ID"]).get("SOPClassUID") == sop_class_uid:
                out.extend(i["ID"] for i in insts)
        return out


def start(root: Path, dicomweb: bool = True, timeout: float = 60) -> Orthanc:
    """Start an Orthanc on two free loopback ports with all its state under `root`.

    The caller must have checked `isolation_problem()` (Orthanc binds 0.0.0.0)
    and must call `.stop()` at the end.
    """
    return Orthanc(root, support.free_port(), support.free_port(), dicomweb=dicomweb).start(timeout=timeout)
