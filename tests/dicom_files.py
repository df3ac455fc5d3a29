"""DICOM files the tests make (the one writer; pydicom is a dependency, so no test needs a real scan)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CT_PIXELS = np.arange(192, dtype=np.uint16).reshape(12, 16)     # a small 16-bit slice, for files any DICOM will do


def write_dicom(path: Path, pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2", preamble: bool = True,
                **attributes) -> Path:
    """A minimal uncompressed DICOM file (CT image storage, explicit VR little endian) holding ``pixels``
    ([rows, columns], [frames, rows, columns], or [rows, columns, 3] with ``photometric="RGB"``; None: no
    pixel data at all). ``attributes`` set any other element by keyword (PatientID="P1", Modality="US",
    RescaleSlope=2, ...); ``preamble=False`` writes the bare data set, as some old files are."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = CTImageStorage
    file_meta.MediaStorageSOPInstanceUID = generate_uid()
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=file_meta, preamble=b"\0" * 128 if preamble else None)
    ds.SOPClassUID = file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
    if pixels is not None:
        frames = pixels.shape[0] if pixels.ndim == 3 and photometric != "RGB" else 1
        rows, columns = pixels.shape[-2:] if photometric != "RGB" else pixels.shape[:2]
        ds.Rows, ds.Columns = rows, columns
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
        if photometric == "RGB":
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        bits = pixels.dtype.itemsize * 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
        ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=preamble)
    return Path(path)
