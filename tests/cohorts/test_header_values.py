"""``HeaderValues``: the header pass's memoised values are exactly what pydicom converts."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from cohorts.dicom.values import HeaderValues, forget_values
from tests.dicom_factory import write_ct_series


def _as_implicit_vr(path: Path) -> None:
    """Rewrite a file as implicit VR little endian: its elements carry no VR, and US-or-SS
    ones (PixelPaddingValue) stay raw bytes that the memo must not share across files."""
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(path, implicit_vr=True, little_endian=True)


@pytest.mark.parametrize("transfer_syntax", ["explicit", "implicit", "rle"])
def test_every_value_equals_pydicoms_own_conversion_cold_and_warm(
    tmp_path: Path, transfer_syntax: str
) -> None:
    """Each top-level element of each file of two series, asked through one ``HeaderValues``
    per file, equals ``ds[tag].value`` of an independent read: with an empty memo (first file),
    from the memo (later files of the series share most raw values), and after forgetting it."""
    written = "explicit" if transfer_syntax == "implicit" else transfer_syntax
    write_ct_series(tmp_path / "a", n_slices=4, transfer_syntax=written, seed=1)
    write_ct_series(
        tmp_path / "b", n_slices=4, transfer_syntax=written, signed=True, padding_value=-2000,
        patient_id="OTHER^PATIENT", seed=2,
    )  # fmt: skip
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 8
    if transfer_syntax == "implicit":
        for path in files:
            _as_implicit_vr(path)
        assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    compared = 0
    for forget in (True, False):
        if forget:
            forget_values()
        for path in files:
            ds = pydicom.dcmread(path, defer_size="1 KB")
            values = HeaderValues(ds)
            reference = pydicom.dcmread(path)
            for element in reference:
                if element.tag == 0x7FE00010:  # PixelData: deferred, not a header value
                    continue
                assert values.get(int(element.tag)) == element.value, (path, element.keyword)
                compared += 1
    assert compared > 8 * 20 * 2
    assert HeaderValues(pydicom.dcmread(files[0])).get(0x00091001, "absent") == "absent"
