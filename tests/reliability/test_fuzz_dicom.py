"""Fuzzed DICOM: seeded damage to valid CT series; curation must never crash.

Every case copies a clean archive (one victim series and two good neighbours), damages the
victim's files (byte flips anywhere / in the header / in the pixels, truncation, dropped
tags, hostile values, broken lengths and magic, duplicated files) and curates it. Each case
must end with every file accounted for, every series accepted (a finite, int16 volume of the
shape its row states, on a finite grid with positive spacing) or quarantined with a reason,
and the neighbours bit-identical to a clean run. Where the damage cannot change values
(pixels flipped, an irrelevant tag dropped) the accepted volume is checked against the clean
one. The default run tries a bounded seeded subset; ``-m reliability_full`` tries hundreds.
"""

from __future__ import annotations

import random
import shutil
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
from dicom_factory import curation_config as test_curation_config
from dicom_factory import write_ct_series
from pydicom import config as pydicom_config

from cohorts.dicom import CurationConfig, curate_cohort
from cohorts.privacy import pseudonymise

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

KEY = b"fuzz-key"
N_SLICES, ROWS, COLUMNS = 10, 16, 16
DEFAULT_CASES, FULL_CASES = 32, 400
# tags whose loss cannot change an accepted volume's values or grid
IRRELEVANT_TAGS = (
    "AccessionNumber", "InstitutionName", "ReferringPhysicianName", "PatientName",
    "PatientBirthDate", "PatientSex", "Manufacturer", "KVP", "SliceLocation", "InstanceNumber",
    "StudyID", "SeriesNumber", "BodyPartExamined", "PatientPosition", "ContentDate",
    "ContentTime", "AcquisitionNumber", "RescaleType", "SpecificCharacterSet",
    "PositionReferenceIndicator", "FrameOfReferenceUID", "StudyTime", "SeriesTime",
)  # fmt: skip
HOSTILE_VALUES: dict[str, list[Any]] = {
    "ImagePositionPatient": [["nan", "0", "0"], ["inf", "1", "2"], ["1e308", "0", "0"], ["a", "b", "c"], ["1", "2"]],
    "ImageOrientationPatient": [["0", "0", "0", "0", "0", "0"], ["nan", "0", "0", "0", "1", "0"], ["1", "0", "0", "1", "0", "0"], ["1"]],
    "PixelSpacing": [["0", "0"], ["-0.7", "0.7"], ["nan", "0.7"], ["inf", "inf"], ["x", "y"], ["0.8"]],
    "SliceThickness": ["0", "-2", "nan", "abc", "1e309"],
    "RescaleSlope": ["nan", "inf", "0", "-1", "1e30", "abc"],
    "RescaleIntercept": ["nan", "-inf", "1e30", "abc"],
    "Rows": [0, 1, 65535], "Columns": [0, 3, 65535],
    "BitsAllocated": [0, 8, 12, 64], "BitsStored": [0, 17, 64], "HighBit": [0, 99],
    "PixelRepresentation": [1, 7], "SamplesPerPixel": [0, 3], "NumberOfFrames": ["0", "-1", "2", "abc"],
    "PhotometricInterpretation": ["RGB", "PALETTE COLOR", ""],
    "PixelPaddingValue": [0, 65535],
    "Modality": ["", "MR", "C T"], "ImageType": [["LOCALIZER"], ""],
    "SeriesInstanceUID": ["", "1.2.3"], "StudyInstanceUID": [""], "PatientID": [""],
    "StudyDate": ["", "abcdefgh", "99999999", "2020"],
}  # fmt: skip


NONSENSE_RESCALE = {
    f"{name}={value}"
    for name, values in (("RescaleSlope", ["nan", "inf", "abc"]),  # 0 reads as absent: slope 1
                         ("RescaleIntercept", ["nan", "-inf", "abc"]))
    for value in values
}  # fmt: skip


@dataclass(frozen=True)
class Archive:
    """A clean raw archive and what a clean curation of it produced."""

    raw: Path
    victim_files: tuple[Path, ...]  # relative to raw
    victim_id: str
    clean_volumes: dict[str, np.ndarray]  # series_id -> HU volume of the clean run
    good_ids: tuple[str, ...]


def curation_config(workers: int = 1) -> CurationConfig:
    return test_curation_config(workers=workers, pseudonym_key=KEY, crop_size_vox=8)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    root = tmp_path_factory.mktemp("fuzz")
    raw = root / "raw"
    victim = write_ct_series(
        raw / "dicom" / "victim", n_slices=N_SLICES, rows=ROWS, columns=COLUMNS, seed=1
    )
    good = [
        write_ct_series(
            raw / "dicom" / f"good{n}",
            n_slices=N_SLICES,
            rows=ROWS,
            columns=COLUMNS,
            patient_id=f"MRN-GOOD-{n}",
            seed=10 + n,
        )
        for n in range(2)
    ]
    pd.DataFrame(
        [(s.series_uid, 0.0, 0.0, -12.0, 5.0) for s in [victim, *good]],
        columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
    ).to_csv(raw / "annotations.csv", index=False)
    out = root / "clean"
    summary = curate_cohort(raw, out, curation_config(), progress=False)
    assert summary.accepted == 3, summary
    index = pd.read_parquet(out / "index.parquet")
    volumes = {
        r.series_id: np.load(out / r.volume_path, allow_pickle=False) for r in index.itertuples()
    }
    return Archive(
        raw=raw,
        victim_files=tuple(p.relative_to(raw) for p in victim.paths),
        victim_id=pseudonymise(victim.series_uid, KEY, "series"),
        clean_volumes=volumes,
        good_ids=tuple(pseudonymise(s.series_uid, KEY, "series") for s in good),
    )


# ---------------------------------------------------------------- mutations


def _pixel_offset(path: Path) -> int:
    """Byte offset of the PixelData value (end of the header); mid-file once already broken."""
    try:
        ds = pydicom.dcmread(path, defer_size="1 KB")
        return int(ds.get_item("PixelData").value_tell)
    except Exception:  # noqa: BLE001 - a file an earlier mutation broke
        return path.stat().st_size // 2


def _flip(path: Path, rng: random.Random, lo: int, hi: int, n: int) -> list[int]:
    data = bytearray(path.read_bytes())
    hi = min(hi, len(data))
    offsets = sorted({rng.randrange(lo, hi) for _ in range(n)})
    for offset in offsets:
        data[offset] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))
    return offsets


def _set_raw(path: Path, name: str, value: Any) -> None:
    """Write a value pydicom refuses to hold (e.g. DS "abc"): a same-length placeholder, then
    its bytes overwritten in the file."""
    text = "\\".join(value) if isinstance(value, list) else str(value)
    raw = text.encode("latin-1")
    raw += b" " * (len(raw) % 2)
    _edit(path, lambda d: setattr(d, name, "1" * len(raw)))
    element = pydicom.dcmread(path).get_item(name)
    data = bytearray(path.read_bytes())
    data[element.value_tell : element.value_tell + len(raw)] = raw
    path.write_bytes(bytes(data))


def _edit(path: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    """Rewrite a file through pydicom with validation off, so hostile values are written."""
    ds = pydicom.dcmread(path, force=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = pydicom_config.settings.writing_validation_mode
        pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
        try:
            change(ds)
            for element in ds:
                if element.VR == "US or SS":  # explicit VR needs one; the factory writes US
                    element.VR = "US"
            ds.save_as(path)
        finally:
            pydicom_config.settings.writing_validation_mode = before


def mutate(files: list[Path], rng: random.Random) -> tuple[str, dict[str, Any]]:
    """Damage some of ``files`` in place; returns the mutation kind and what it touched."""
    kind = rng.choice(
        ["flip_any", "flip_header", "flip_pixels", "truncate", "drop_tag", "drop_irrelevant",
         "hostile_value", "broken_length", "broken_magic", "duplicate_file", "stack"]
    )  # fmt: skip
    n_files = rng.choice([1, 1, 1, 2, 3, len(files)])
    victims = rng.sample(files, n_files)
    detail: dict[str, Any] = {"files": [f.name for f in victims]}
    if kind == "stack":  # two different mutations on the same series
        first, d1 = mutate(files, rng)
        second, d2 = mutate(files, rng)
        return "stack", {"parts": [first, second], "details": [d1, d2]}
    for path in victims:
        offset = _pixel_offset(path) if path.stat().st_size else 0
        try:
            if kind == "flip_any":
                detail.setdefault("offsets", []).append(
                    _flip(path, rng, 0, 1 << 30, rng.randint(1, 8))
                )
            elif kind == "flip_header":
                detail.setdefault("offsets", []).append(
                    _flip(path, rng, 0, offset, rng.randint(1, 4))
                )
            elif kind == "flip_pixels":
                detail.setdefault("offsets", []).append(
                    [o - offset for o in _flip(path, rng, offset, 1 << 30, rng.randint(1, 16))]
                )
            elif kind == "truncate":
                data = path.read_bytes()
                path.write_bytes(data[: rng.randrange(0, len(data))])
            elif kind in ("drop_tag", "drop_irrelevant"):
                ds = pydicom.dcmread(path, force=True)
                names = (
                    [k for k in IRRELEVANT_TAGS if k in ds]
                    if kind == "drop_irrelevant"
                    else [e.keyword for e in ds if e.keyword]
                )
                name = rng.choice(names)
                detail.setdefault("tags", []).append(name)
                _edit(path, lambda d, name=name: delattr(d, name))
            elif kind == "hostile_value":
                name = rng.choice(sorted(HOSTILE_VALUES))
                value = rng.choice(HOSTILE_VALUES[name])
                detail.setdefault("tags", []).append(f"{name}={value}")
                try:
                    _edit(path, lambda d, name=name, value=value: setattr(d, name, value))
                except ValueError:
                    _set_raw(path, name, value)
            elif kind == "broken_length":
                data = bytearray(path.read_bytes())
                # the 4-byte length of PixelData, or of a random element in the header
                at = offset - 4 if rng.random() < 0.5 else rng.randrange(132, max(133, offset - 4))
                data[at : at + 4] = rng.choice(
                    [
                        b"\xff\xff\xff\xff",
                        b"\xff\xff\xff\x7f",
                        b"\x01\x00\x00\x00",
                        rng.randbytes(4),
                    ]
                )
                path.write_bytes(bytes(data))
            elif kind == "broken_magic":
                data = bytearray(path.read_bytes())
                data[128:132] = rng.choice([b"DICN", b"\x00\x00\x00\x00", b"MZ\x90\x00"])
                path.write_bytes(bytes(data))
            elif kind == "duplicate_file":
                shutil.copyfile(path, path.with_name(path.name + ".copy"))
        except Exception:  # noqa: BLE001 - an earlier mutation left it too broken to edit
            detail["unapplied"] = detail.get("unapplied", 0) + 1
    return kind, detail


# ---------------------------------------------------------------- one case


def _accepted_volume_is_sane(out: Path, row: pd.Series) -> np.ndarray:
    volume = np.load(out / row["volume_path"], allow_pickle=False)
    assert volume.dtype == np.int16, row["series_id"]
    assert volume.shape == (row["shape_z"], row["shape_y"], row["shape_x"]), row["series_id"]
    assert volume.min() >= -1024, row["series_id"]
    spacing = row[["spacing_mm_z", "spacing_mm_y", "spacing_mm_x"]].to_numpy(float)
    origin = row[["origin_mm_x", "origin_mm_y", "origin_mm_z"]].to_numpy(float)
    assert np.isfinite(spacing).all() and (spacing > 0).all(), (row["series_id"], spacing)
    assert np.isfinite(origin).all(), (row["series_id"], origin)
    assert np.isfinite(np.asarray(row["direction"], float)).all(), row["series_id"]
    return volume


Mutation = Callable[[list[Path], random.Random], tuple[str, dict[str, Any]]]


def hostile(name: str, value: Any, every_file: bool) -> Mutation:
    """A directed mutation: one hostile value in one file (or in all of them)."""

    def apply(files: list[Path], rng: random.Random) -> tuple[str, dict[str, Any]]:
        for path in files if every_file else [rng.choice(files)]:
            try:
                _edit(path, lambda d: setattr(d, name, value))
            except ValueError:
                _set_raw(path, name, value)
        return "hostile_value", {"tags": [f"{name}={value}"], "every_file": every_file}

    return apply


def run_case(
    archive: Archive, work: Path, case: int, seed: int, mutation: Mutation = mutate
) -> dict[str, Any]:
    """Copy, damage, curate, check. Returns the case record (raises AssertionError on a bad
    outcome; any other exception from curation is a crash)."""
    rng = random.Random(seed * 100_003 + case)
    raw, out = work / f"raw{case}", work / f"out{case}"
    shutil.copytree(archive.raw, raw)
    files = [raw / rel for rel in archive.victim_files]
    kind, detail = mutation(files, rng)
    n_files = sum(1 for p in (raw / "dicom").rglob("*") if p.is_file())
    workers = 2 if case % 10 == 9 else 1
    summary = curate_cohort(raw, out, curation_config(workers), progress=False)
    index = pd.read_parquet(out / "index.parquet")
    quarantine = pd.read_parquet(out / "quarantine.parquet")
    # nothing lost: every file is in a series row, a file-level quarantine row, or skipped
    unattached = int(quarantine["series_id"].isna().sum())
    assert int(index["n_slices"].sum()) + unattached + summary.skipped_files == n_files
    assert (quarantine["reason"].str.len() > 0).all()
    outcome: dict[str, Any] = {"case": case, "kind": kind, "detail": detail}
    for row in index.to_dict("records"):
        row = pd.Series(row)
        if row["status"] == "ok":
            _accepted_volume_is_sane(out, row)
        else:
            assert row["status"] == "quarantined" and row["reason"], row.to_dict()
            assert row["volume_path"] is None
    rows = index.set_index("series_id")
    for good in archive.good_ids:  # the neighbours are untouched
        assert rows.loc[good, "status"] == "ok", rows.loc[good, "reason"]
        volume = np.load(out / rows.loc[good, "volume_path"], allow_pickle=False)
        assert np.array_equal(volume, archive.clean_volumes[good]), good
    victim_rows = index[~index["series_id"].isin(archive.good_ids)]
    clean = archive.clean_volumes[archive.victim_id]
    if archive.victim_id in rows.index and rows.loc[archive.victim_id, "status"] == "ok":
        volume = np.load(out / rows.loc[archive.victim_id, "volume_path"], allow_pickle=False)
        same = volume.shape == clean.shape and np.array_equal(volume, clean)
        outcome["result"] = "accepted_identical" if same else "accepted_changed"
        if kind == "flip_pixels":  # only the flipped voxels of the flipped slices may differ
            flipped = sum(len(o) for o in detail["offsets"])
            assert volume.shape == clean.shape
            changed_slices = np.flatnonzero((volume != clean).any(axis=(1, 2)))
            assert len(changed_slices) <= len(detail["files"])
            assert int((volume != clean).sum()) <= flipped
    else:
        outcome["result"] = "quarantined"
    if kind in ("drop_irrelevant", "flip_pixels"):
        assert outcome["result"].startswith("accepted"), (kind, victim_rows.to_dict("records"))
    if kind == "drop_irrelevant":
        assert outcome["result"] == "accepted_identical", detail
    if kind == "hostile_value" and set(detail["tags"]) & NONSENSE_RESCALE:
        assert outcome["result"] == "quarantined", detail  # never a volume of garbage HU
    outcome["reasons"] = sorted(
        {str(r).split(":")[0] for r in victim_rows.loc[victim_rows.status != "ok", "reason"]}
        | {str(r) for r in quarantine["reason"]}
    )
    shutil.rmtree(raw)
    shutil.rmtree(out)
    return outcome


def fuzz(
    archive: Archive, work: Path, cases: int, seed: int, directed: list[Mutation] | None = None
) -> dict[str, Any]:
    """Run ``cases`` random cases (or the ``directed`` mutations); collect crashes and failed
    checks rather than stop at the first."""
    records: list[dict[str, Any]] = []
    crashes: list[str] = []
    failures: list[str] = []
    mutations = directed or [mutate] * cases
    cases = len(mutations)
    for case, mutation in enumerate(mutations):
        try:
            records.append(run_case(archive, work, case, seed, mutation))
        except AssertionError as error:
            failures.append(f"case {case}: {error!r}\n{traceback.format_exc(limit=3)}")
        except Exception:  # noqa: BLE001 - a crash of curation is what this test counts
            crashes.append(f"case {case}: {traceback.format_exc(limit=6)}")
        for leftover in (work / f"raw{case}", work / f"out{case}"):
            shutil.rmtree(leftover, ignore_errors=True)
    results = Counter(r["result"] for r in records)
    reasons = Counter(reason for r in records for reason in r["reasons"])
    return {
        "seed": seed,
        "cases": cases,
        "crashes": len(crashes),
        "failed_checks": len(failures),
        "by_kind": dict(Counter(r["kind"] for r in records)),
        "results": dict(results),
        "quarantine_reasons": dict(sorted(reasons.items())),
        "crash_details": crashes[:5],
        "failure_details": failures[:5],
    }


def _check(report: dict[str, Any], random_cases: bool = True) -> None:
    assert report["crashes"] == 0, "\n".join(report["crash_details"])
    assert report["failed_checks"] == 0, "\n".join(report["failure_details"])
    assert sum(report["results"].values()) == report["cases"]
    assert report["results"].get("quarantined", 0) > 0  # the fuzzer does reach the checks
    if random_cases:
        assert report["results"].get("accepted_changed", 0) > 0  # and the pixel decoder


def _directed(first_value_only: bool) -> list[Mutation]:
    return [
        hostile(name, value, every_file)
        for name, values in sorted(HOSTILE_VALUES.items())
        for value in (values[:1] if first_value_only else values)
        for every_file in ((False,) if first_value_only else (False, True))
    ]


def test_every_hostile_header_value_is_handled(
    archive: Archive, tmp_path: Path, figures: dict[str, Any]
) -> None:
    report = fuzz(archive, tmp_path, 0, seed=0, directed=_directed(first_value_only=True))
    figures["hostile_default"] = report
    _check(report, random_cases=False)


def test_every_hostile_header_value_full(
    archive: Archive, tmp_path: Path, figures: dict[str, Any]
) -> None:
    report = fuzz(archive, tmp_path, 0, seed=2, directed=_directed(first_value_only=False))
    figures["hostile_full"] = report
    _check(report, random_cases=False)


def test_fuzzed_series_are_accepted_or_quarantined(
    archive: Archive, tmp_path: Path, figures: dict[str, Any]
) -> None:
    report = fuzz(archive, tmp_path, DEFAULT_CASES, seed=0)
    figures["fuzz_default"] = report
    _check(report)


@pytest.mark.reliability_full
def test_fuzzed_series_full(archive: Archive, tmp_path: Path, figures: dict[str, Any]) -> None:
    report = fuzz(archive, tmp_path, FULL_CASES, seed=1)
    figures["fuzz_full"] = report
    _check(report)
