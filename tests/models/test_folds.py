"""Repeated stratified k-fold CV over patients."""

import numpy as np
import pytest

from models.folds import repeated_stratified_folds, subsample_stratified


def test_each_repeat_tests_every_patient_once_with_both_classes() -> None:
    labels = np.array([1] * 17 + [0] * 53)
    folds = repeated_stratified_folds(labels, k=5, repeats=2, val_fraction=0.2, seed=3)
    assert len(folds) == 10
    for repeat in (0, 1):
        tests = np.concatenate([f.test for f in folds if f.repeat == repeat])
        np.testing.assert_array_equal(np.sort(tests), np.arange(70))
    for fold in folds:
        assert 3 <= labels[fold.test].sum() <= 4  # 17 malignant over 5 folds
        assert labels[fold.val].sum() >= 1 and labels[fold.train].sum() >= 1
        assert not set(fold.val) & set(fold.train)
        assert set(fold.val) | set(fold.train) == set(range(70)) - set(fold.test)
        assert abs(len(fold.val) - 0.2 * (70 - len(fold.test))) <= 1
    first = [f.test for f in folds if f.repeat == 0]
    second = [f.test for f in folds if f.repeat == 1]
    assert any(not np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_folds_are_deterministic_in_the_seed() -> None:
    labels = np.array([1, 0] * 20)
    a = repeated_stratified_folds(labels, 4, 1, 0.25, seed=0)
    b = repeated_stratified_folds(labels, 4, 1, 0.25, seed=0)
    c = repeated_stratified_folds(labels, 4, 1, 0.25, seed=1)
    assert all(np.array_equal(x.test, y.test) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x.test, y.test) for x, y in zip(a, c, strict=True))


def test_fold_sizes_stay_balanced_across_classes() -> None:
    labels = np.array([1] * 7 + [0] * 8)  # 7 % 5 and 8 % 5 leftovers must not pile up
    sizes = [len(f.test) for f in repeated_stratified_folds(labels, 5, 1, 0.2, seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_subsample_keeps_the_class_balance() -> None:
    labels = np.array([1] * 20 + [0] * 60)
    idx = np.arange(80)
    half = subsample_stratified(idx, labels, 0.25, seed=0)
    assert len(half) == 20 and labels[half].sum() == 5
    np.testing.assert_array_equal(subsample_stratified(idx, labels, 1.0, seed=0), idx)
    with pytest.raises(ValueError):
        subsample_stratified(idx, labels, 0.0, seed=0)
