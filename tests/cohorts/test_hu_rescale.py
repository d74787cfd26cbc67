"""The integer fast path of stored values -> stored HU gives the float32 rule's int16 values."""

from __future__ import annotations

import numpy as np
import pytest

from cohorts.dicom.series import HU_MAX, HU_MIN, _rescale_to_stored_hu, _stored_hu, _to_hu


def _float_rule(stored, slope, intercept, padding, limit) -> np.ndarray:  # noqa: ANN001
    return _stored_hu(_to_hu(stored, slope, intercept, padding, limit))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32])
@pytest.mark.parametrize(
    ("slope", "intercept"),
    [(1.0, -1024.0), (1.0, 0.0), (1.0, 3.0), (1.0, -1024.5), (2.5, -1024.0), (1.0, 2.0**23),
     (1.0, -(2.0**23) + 1), (-1.0, 0.0)],
)  # fmt: skip
@pytest.mark.parametrize(("padding", "limit"), [(None, None), (0, None), (-2000, 30), (40, 5)])
def test_integer_path_equals_the_float_rule(
    dtype: type, slope: float, intercept: float, padding: int | None, limit: int | None
) -> None:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(7)
    stored = rng.integers(info.min, info.max, (33, 35), dtype=dtype, endpoint=True)
    stored.flat[:4] = [info.min, info.max, 0, 1]  # the dtype's edges and padding-like values
    got = _rescale_to_stored_hu(stored, slope, intercept, padding, limit)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, _float_rule(stored, slope, intercept, padding, limit))
    assert got.min() >= HU_MIN and got.max() <= HU_MAX


def test_padding_becomes_air_on_the_integer_path() -> None:
    stored = np.array([[0, 1000, 63536]], dtype=np.uint16)
    got = _rescale_to_stored_hu(stored, 1.0, -1024.0, 63536, None)
    np.testing.assert_array_equal(got, [[HU_MIN, -24, HU_MIN]])
