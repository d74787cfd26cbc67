"""The training-examples contract (cohorts/example_set.py): one numpy container that every
writer and reader shares, with the crop spacing travelling beside the crops."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from cohorts.example_set import (
    PADDING_HU,
    ExampleSet,
    load_examples,
    padded_inputs,
    random_examples,
)


def test_npz_round_trip_keeps_every_array_and_the_spacing(tmp_path: Path) -> None:
    examples = random_examples(6, timepoints=2, crop_size_vox=8, n_ehr=3, crop_spacing_mm=1.25)
    examples.save(tmp_path / "internal.npz")
    loaded = load_examples(tmp_path / "internal.npz")
    for f in fields(ExampleSet):
        assert np.array_equal(getattr(loaded, f.name), getattr(examples, f.name)), f.name
    assert loaded.crop_spacing_mm == 1.25 and isinstance(loaded.crop_spacing_mm, float)
    part = loaded.subset(np.array([0, 3]))
    assert len(part) == 2 and part.patient_id[1] == examples.patient_id[3]
    assert part.crop_spacing_mm == 1.25


def test_contract_errors_name_the_array_or_the_file(tmp_path: Path) -> None:
    examples = random_examples(4, timepoints=2, crop_size_vox=8, n_ehr=3)
    with pytest.raises(ValueError, match="label must be int8"):
        replace(examples, label=examples.label.astype(np.int64))
    for bad in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="crop_spacing_mm"):
            replace(examples, crop_spacing_mm=bad)
    # a file written before the spacing travelled with the crops: rebuild, said with its path
    old = tmp_path / "archive.npz"
    arrays = {f.name: getattr(examples, f.name) for f in fields(ExampleSet)}
    del arrays["crop_spacing_mm"]
    np.savez(old, **arrays)
    with pytest.raises(ValueError, match=r"archive\.npz: missing keys \['crop_spacing_mm'\]"):
        load_examples(old)


def test_concat_refuses_crops_cut_at_another_spacing() -> None:
    a = random_examples(3, timepoints=2, crop_size_vox=8, n_ehr=3, seed=1)
    b = random_examples(2, timepoints=2, crop_size_vox=8, n_ehr=3, seed=2)
    both = ExampleSet.concat([a, b])
    assert len(both) == 5 and both.crop_spacing_mm == a.crop_spacing_mm
    with pytest.raises(ValueError, match="cut at 2.0 mm and 1.0 mm"):
        ExampleSet.concat([a, replace(b, crop_spacing_mm=2.0)])


def test_padded_inputs_are_air_masked_and_zero() -> None:
    arrays = padded_inputs(2, 3, (4, 4, 4), 5)
    assert arrays["crops_hu"].shape == (2, 3, 4, 4, 4) and (arrays["crops_hu"] == PADDING_HU).all()
    assert PADDING_HU == -1024
    assert not arrays["scan_mask"].any() and not arrays["ehr_mask"].any()
    assert arrays["ehr"].shape == (2, 3, 5) and not arrays["ehr"].any()
    assert not arrays["months_before_latest"].any()
