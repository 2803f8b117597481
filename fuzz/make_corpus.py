#!/usr/bin/env python3
"""Generate the seed corpus of the fuzz targets (fuzz/corpus/<target>/).

received_data_set: first byte = transfer syntax selector (index into
myonode::fuzzing::FUZZ_TRANSFER_SYNTAXES), then a data set: the header attributes of real
test instances (pixel data and long values dropped, <= 4 KB) re-encoded in each transfer
syntax, a truncated one, an out-of-order one and a sequence/encapsulated one.
pdu_and_command: P-DATA-TF PDUs (PS3.8 9.3.5) carrying C-ECHO-RQ and C-STORE-RQ command sets
(PS3.7 9.3.5, 9.1.1) with a data set, and A-ASSOCIATE-RQ/A-RELEASE-RQ/A-ABORT PDUs.

Usage: MYONODE_DATA=/work/shared/data .venv/bin/python fuzz/make_corpus.py
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("MYONODE_DATA", HERE.parent.parent / "shared" / "data"))
TS_INDEX = {ImplicitVRLittleEndian: 0, ExplicitVRLittleEndian: 1, ExplicitVRBigEndian: 2}


def save(target: str, data: bytes) -> None:
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


def encode(ds: Dataset, ts: str) -> bytes:
    buf = DicomBytesIO()
    buf.is_implicit_VR = ts == ImplicitVRLittleEndian
    buf.is_little_endian = ts != ExplicitVRBigEndian
    pydicom.filewriter.write_dataset(buf, ds)
    return buf.getvalue()


def header_of(path: Path) -> Dataset:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    small = Dataset()
    for elem in ds:
        if elem.tag.group == 0x0002 or elem.tag.is_private:
            continue
        if elem.VR == "SQ" or (elem.value is not None and len(str(elem.value)) > 64):
            continue
        small.add(elem)
    return small


def command(elements: list[tuple[int, str, object]]) -> bytes:
    """Implicit VR LE command set with CommandGroupLength (0000,0000) first."""
    body = b""
    for tag, vr, value in elements:
        if vr == "US":
            v = struct.pack("<H", value)
        else:
            v = value.encode() + (b"\0" if len(value) % 2 else b"")
        body += struct.pack("<HHI", 0, tag, len(v)) + v
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def pdata(pc_id: int, header: int, value: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(value) + 2, pc_id, header) + value
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def main() -> None:
    files = [next(iter(sorted((DATA / "series" / s).iterdir()))) for s in ("mr-pelvis-adc", "ct-abdomen-j2k")]
    headers = [header_of(f) for f in files]
    for h in headers:
        for ts, i in TS_INDEX.items():
            save("received_data_set", bytes([i]) + encode(h, ts)[:4096])
        full = encode(h, ExplicitVRLittleEndian)
        save("received_data_set", bytes([1]) + full[: len(full) // 2])  # truncated
        save("received_data_set", bytes([3]) + full[:2048])  # deflate selector on raw bytes
    # a sequence with an item, and encapsulated pixel data with an empty offset table
    h = Dataset()
    h.SOPClassUID, h.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", "1.2.3.4.5"
    h.StudyInstanceUID, h.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.6"
    item = Dataset()
    item.CodeValue = "T-A0100"
    h.AnatomicRegionSequence = Sequence([item])
    enc = encode(h, ExplicitVRLittleEndian)
    frag = b"\xff\xd8\xff\xd9"
    pix = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
    pix += struct.pack("<HHI", 0xFFFE, 0xE000, 0) + struct.pack("<HHI", 0xFFFE, 0xE000, len(frag)) + frag
    pix += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    save("received_data_set", bytes([4]) + enc + pix)

    # pdu_and_command
    echo = command([(0x0002, "UI", "1.2.840.10008.1.1"), (0x0100, "US", 0x0030), (0x0110, "US", 1), (0x0800, "US", 0x0101)])
    save("pdu_and_command", pdata(1, 0x03, echo))
    save("pdu_and_command", pdata(1, 0x01, echo[:20]) + pdata(1, 0x03, echo[20:]))  # fragmented command
    ds = encode(headers[0], ImplicitVRLittleEndian)[:2048]
    store = command([(0x0002, "UI", headers[0].SOPClassUID), (0x0100, "US", 0x0001), (0x0110, "US", 7),
                     (0x0700, "US", 0), (0x0800, "US", 0x0000), (0x1000, "UI", headers[0].SOPInstanceUID)])
    save("pdu_and_command", pdata(3, 0x03, store) + pdata(3, 0x00, ds[:1000]) + pdata(3, 0x02, ds[1000:]))
    # A-ASSOCIATE-RQ (PS3.8 9.3.2): one presentation context, Verification, Implicit VR LE
    def item(t: int, body: bytes) -> bytes:
        return struct.pack(">BBH", t, 0, len(body)) + body
    ctx = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2"))
    user = item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.3.4"))
    body = struct.pack(">HH", 1, 0) + b"MYONODE".ljust(16) + b"ECHOSCU".ljust(16) + bytes(32)
    body += item(0x10, b"1.2.840.10008.3.1.1.1") + ctx + user
    save("pdu_and_command", struct.pack(">BBI", 0x01, 0, len(body)) + body)
    save("pdu_and_command", struct.pack(">BBI", 0x05, 0, 4) + bytes(4) + struct.pack(">BBI", 0x07, 0, 4) + bytes(4))


if __name__ == "__main__":
    main()
