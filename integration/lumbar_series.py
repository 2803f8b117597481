"""Wrap a training volume of `training/lumbar-vertebrae-mr/` into a DICOM series.

REAL PIXELS, GENERATED HEADERS: the training data (`NN.mat`) carries no DICOM header, so
patient/study/series attributes are synthetic, the orientation is the data README's
(sagittal slices `I[:, :, k]`, rows head -> foot, columns anterior -> posterior), the spacing
1 mm isotropic, and the files are written in shuffled order. Used by
`test_lumbar_model.py` (the shipped model through the node) and `bench.py` (latency of the
shipped model on the input it was trained for).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def write_series(img: np.ndarray, out: Path, seed: int) -> dict[int, str]:
    """Write volume I (224 x 224 x 77: head->foot, anterior->posterior, left-right) as one
    sagittal MR series (generated headers). Returns {k: SOPInstanceUID} for slice I[:, :, k]."""
    out.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    order = list(range(img.shape[2]))
    random.Random(seed).shuffle(order)
    uids = {}
    for n, k in enumerate(order):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID = "SYNTHETIC^HEADER", f"MYONODE-TEST-{seed}"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20260101", "120000", "1", "", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 1, k + 1
        ds.SeriesDescription = "synthetic header: water image, lumbar spine (MyoSegmenTUM)"
        ds.BodyPartExamined = "LSPINE"
        ds.ImageType = ["DERIVED", "PRIMARY", "DIXON", "WATER"]
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # rows run posterior, columns run inferior
        ds.ImagePositionPatient = [-float(k), 0.0, 0.0]  # k steps along the normal (0,1,0)x(0,0,-1) = (-1,0,0)
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = img.shape[0], img.shape[1]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(img[:, :, k].astype(np.uint16)).tobytes()
        ds.save_as(out / f"IM{n:04d}.dcm", enforce_file_format=True)
        uids[k] = sop
    return uids
