import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.data import dicom
from pipeline.data.images import FileSource, decode, open_images
from pipeline.errors import PipelineError


def write_dicom(path, stored: np.ndarray, photometric: str = "MONOCHROME2", **attributes) -> None:
    """A CT-like single-frame DICOM file of 16-bit stored values, uncompressed."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Rows, dataset.Columns = stored.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    for key, value in attributes.items():
        setattr(dataset, key, value)
    dataset.PixelData = stored.astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)


STORED = np.array([[0, 1000], [1024, 4095]])  # 12-bit values


def test_the_file_s_window_maps_hounsfield_units_to_grey_levels(tmp_path):
    # stored 1024 is 0 HU; a brain window of centre 40, width 80 spans 0 to 80 HU
    path = tmp_path / "ct.dcm"
    write_dicom(path, STORED, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=80)
    grey = decode(path, 1)[..., 0]
    assert grey.tolist() == [[0, 0], [0, 255]]  # below the window black, above it white
    assert dicom.shape(path) == (2, 2, 1)


def test_the_config_s_window_overrides_the_file_s(tmp_path):
    path = tmp_path / "ct.dcm"
    write_dicom(path, STORED, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=80)
    grey = decode(path, 1, window=(0, 2049))[..., 0]  # -1024 to 1024 HU: 0 HU, stored 1024, is half-way
    assert grey.tolist() == [[0, 125], [128, 255]]


def test_without_a_window_the_image_s_range_is_used_and_monochrome1_is_inverted(tmp_path):
    write_dicom(tmp_path / "m2.dcm", STORED)
    write_dicom(tmp_path / "m1.dcm", STORED, photometric="MONOCHROME1")
    plain = decode(tmp_path / "m2.dcm", 1)[..., 0]
    assert plain.tolist() == [[0, 62], [64, 255]]
    np.testing.assert_array_equal(decode(tmp_path / "m1.dcm", 1)[..., 0], 255 - plain)
    assert decode(tmp_path / "m2.dcm", 3).shape == (2, 2, 3)  # grey copied into RGB for a colour backbone


def test_dicom_files_are_cached_at_the_working_side(tmp_path):
    stored = np.tile(np.arange(64) * 64, (48, 1))
    write_dicom(tmp_path / "wide.dcm", stored)
    images = open_images(FileSource((tmp_path / "wide.dcm",), 1), tmp_path / "cache", side=24)
    assert images[0].shape == (24, 32, 1) and images.original_sizes.tolist() == [[48, 64]]


def test_a_file_that_is_not_dicom_names_itself(tmp_path):
    (tmp_path / "fake.dcm").write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(PipelineError, match="fake.dcm cannot be decoded: not a DICOM file"):
        decode(tmp_path / "fake.dcm", 1)
