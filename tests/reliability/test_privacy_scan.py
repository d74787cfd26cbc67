"""Privacy: no PHI from the raw archive and never the pseudonymisation key in any output.

PHI is read back from the raw archive itself: the value of every DICOM PS3.15 Annex E basic
profile attribute in every header (``cohorts.dicom.deid``: names and their parts, ids,
UIDs, dates, times, descriptions, institution, ...) and the OMOP person table (person_id,
birth dates); then searched for in every output file (tables decoded, not just their
compressed bytes), the CLI's stdout/stderr and, for the pipeline, every Dagster event (log
lines, metadata values), the run config and the instance's files.

What cannot be searched byte for byte, and how it is checked instead:
- values under 4 characters (sex "F", a StudyID "1", a weight "70") are any number or
  letter; they are counted, not searched;
- values under 8 characters and purely numeric ones (an age "069Y", a time "093000") are
  searched as whole tokens, in text files only: inside base64 (the plots embedded in
  Dagster metadata) and in binary arrays, weights and databases such short strings occur
  by chance;
- real dates in ISO form are searched in events, logs and run config; in the data tables a
  shifted date of one patient may equal a real date of another by chance, so there each
  date is checked against its own source: it must be the real date moved by that patient's
  shift (``cohorts.privacy.date_shift_days``), never the real date.
The default run scans a real curation by ``lungjepa curate``; the full run scans a whole
tiny pipeline run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
from dicom_factory import PHI, write_ct_series

from cohorts.dicom.deid import annex_e_values

REPO = Path(__file__).resolve().parents[2]
KEY = "reliability-key-7f3a9c-never-in-outputs"
_UID_TOKEN = re.compile(rb"[0-9]+(?:\.[0-9]+){3,}")
_WORD = re.compile(rb"[A-Za-z]+")


@dataclass
class Phi:
    """Values to find: ``text`` anywhere, name ``words`` as whole words, ``uids`` as tokens,
    ``tokens`` as whole tokens in text files, ``dates`` (ISO) in events and logs; ``short``
    counts the values too short to search, by Annex E keyword."""

    text: set[str] = field(default_factory=set)
    words: set[str] = field(default_factory=set)
    uids: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)
    dates: set[str] = field(default_factory=set)
    keywords: set[str] = field(default_factory=set)
    short: dict[str, int] = field(default_factory=dict)

    def __ior__(self, other: Phi) -> Phi:
        for name in ("text", "words", "uids", "tokens", "dates", "keywords"):
            getattr(self, name).update(getattr(other, name))
        for keyword, n in other.short.items():
            self.short[keyword] = self.short.get(keyword, 0) + n
        return self

    def add(self, keyword: str, vr: str, value: str) -> None:
        """One Annex E value, filed by how it can be searched (module docstring)."""
        self.keywords.add(keyword)
        if vr == "UI":
            self.uids.add(value)
            return
        if vr in ("DA", "DT") and re.fullmatch(r"[0-9]{8}.*", value):
            self.text.add(value)  # YYYYMMDD: outputs write ISO dates, so this is a leak
            self.dates.add(f"{value[:4]}-{value[4:6]}-{value[6:8]}")
            return
        if len(value) < 4:
            self.short[keyword] = self.short.get(keyword, 0) + 1
            return
        if len(value) < 8 or re.fullmatch(r"[0-9.+-]+", value):
            self.tokens.add(value)
            return
        self.text.add(value)
        if vr == "PN":
            self.words.update(part for part in re.split(r"[\^ ]", value) if len(part) >= 3)


def raw_phi(raw: Path) -> Phi:
    """PHI read from the raw cohort's DICOM headers (Annex E) and OMOP person table."""
    phi = Phi()
    for path in (raw / "dicom").rglob("*"):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - junk files in an export carry no header
            continue
        for keyword, vr, value in annex_e_values(ds):
            phi.add(keyword, vr, value)
    person = raw / "ehr" / "person.csv"
    if person.exists():
        frame = pd.read_csv(person, dtype=str)
        phi.text.update(frame["person_id"].dropna())
        if "birth_datetime" in frame:
            phi.dates.update(frame["birth_datetime"].dropna().str[:10])
    for values in (phi.text, phi.uids, phi.tokens, phi.dates):
        values.discard("")
    return phi


def file_text(path: Path) -> bytes:
    """What a reader of the file can see: decoded tables and arrays, else the raw bytes."""
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
        return (frame.to_csv(index=False) + " ".join(map(str, frame.columns))).encode()
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            parts = [str(data[k].tolist()) for k in data.files if data[k].dtype.kind in "USO"]
        return path.read_bytes() + "\n".join(parts).encode()
    return path.read_bytes()


_TOKEN = re.compile(rb"[A-Za-z0-9.+-]+")
BINARY_SUFFIXES = {".npy", ".npz", ".safetensors", ".onnx", ".pt", ".pth", ".png", ".db"}


def leaks(blob: bytes, phi: Phi, key: str, binary: bool = False, dates: bool = False) -> list[str]:
    """PHI values found in ``blob``; ``binary``: no short tokens; ``dates``: ISO dates too."""
    found = [value for value in phi.text if value.encode() in blob]
    found += [t.decode() for t in set(_WORD.findall(blob)) if t.decode() in phi.words]
    found += [t.decode() for t in set(_UID_TOKEN.findall(blob)) if t.decode() in phi.uids]
    if not binary:
        found += [t.decode() for t in set(_TOKEN.findall(blob)) if t.decode() in phi.tokens]
    if dates:
        found += [value for value in phi.dates if value.encode() in blob]
    if key.encode() in blob:
        found.append("<pseudonymisation key>")
    return found


def scan_tree(root: Path, phi: Phi, key: str, dates: bool = False) -> Iterator[tuple[str, Any]]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            binary = path.suffix in BINARY_SUFFIXES
            found = leaks(file_text(path), phi, key, binary=binary, dates=dates)
            yield str(path.relative_to(root)), found


def test_scanner_finds_planted_phi() -> None:
    """The scanner is not blind: planted values in text, UIDs and parquet are found."""
    phi = Phi({PHI["patient_id"]}, {"Janet", "MARY"}, {"1.2.826.0.1.3680043.8.498.1"})
    blob = f"x {PHI['patient_id']} y 1.2.826.0.1.3680043.8.498.1 {KEY} Janet,".encode()
    assert sorted(leaks(blob, phi, KEY)) == sorted(
        [PHI["patient_id"], "1.2.826.0.1.3680043.8.498.1", "<pseudonymisation key>", "Janet"]
    )
    assert leaks(b"1.2.826.0.1.3680043.8.498.12 SUMMARY", phi, KEY) == []  # other UID, word
    timed = Phi(tokens={"093000", "069Y"}, dates={"2020-01-15"})
    assert leaks(b"t=093000;", timed, KEY) == ["093000"]
    assert leaks(b"age 069Y,", timed, KEY) == ["069Y"]
    assert leaks(b"t=1093000; iVBOR069Yk4d", timed, KEY) == []  # whole tokens only (base64)
    assert leaks(b"t=093000;", timed, KEY, binary=True) == []  # not in binary arrays
    assert leaks(b"on 2020-01-15", timed, KEY) == []
    assert leaks(b"on 2020-01-15", timed, KEY, dates=True) == ["2020-01-15"]


def test_annex_e_values_are_read_from_headers_and_sequences(tmp_path: Path) -> None:
    """The scan's list is the Annex E basic profile: every keyword known to pydicom, and the
    values come out of nested sequences too (an operator's name inside a code sequence)."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataset import Dataset

    from cohorts.dicom.deid import ANNEX_E_BASIC_PROFILE

    assert len(ANNEX_E_BASIC_PROFILE) > 200
    assert [k for k in ANNEX_E_BASIC_PROFILE if tag_for_keyword(k) is None] == []
    spec = write_ct_series(tmp_path / "s", n_slices=2)
    ds = pydicom.dcmread(spec.paths[0], stop_before_pixels=True)
    operator = Dataset()
    operator.PersonName = "Burns^Frank"
    ds.OperatorIdentificationSequence = [operator]
    ds.StudyTime = "093000"
    ds.PatientSex = "F"
    phi = Phi()
    for keyword, vr, value in annex_e_values(ds):
        phi.add(keyword, vr, value)
    assert {PHI["patient_id"], PHI["accession"], PHI["institution"], "Burns^Frank"} <= phi.text
    assert {"Janet", "Burns", "Frank"} <= phi.words
    assert spec.series_uid in phi.uids and "093000" in phi.tokens
    assert "1947-03-22" in phi.dates and phi.short["PatientSex"] == 1


def test_annex_e_values_inside_unlisted_and_private_sequences(tmp_path: Path) -> None:
    """A listed value nested in a sequence the profile does not list, or in a private
    sequence the dictionary does not know, is still found once the file is read back."""
    from pydicom.dataset import Dataset

    spec = write_ct_series(tmp_path / "s", n_slices=2)
    ds = pydicom.dcmread(spec.paths[0])
    nested = Dataset()
    nested.OperatorsName = "Kerr^Lena"
    ds.AnatomicRegionSequence = [nested]  # known, not in Annex E
    hidden = Dataset()
    hidden.PatientName = "Vale^Oskar"
    block = ds.private_block(0x0029, "LUNGJEPA TEST", create=True)
    block.add_new(0x10, "SQ", [hidden])
    path = tmp_path / "nested.dcm"
    ds.save_as(path)
    phi = Phi()
    for keyword, vr, value in annex_e_values(pydicom.dcmread(path, defer_size="1 KB")):
        phi.add(keyword, vr, value)
    assert {"Kerr^Lena", "Vale^Oskar", PHI["patient_id"]} <= phi.text


def test_curation_by_cli_leaks_no_phi_and_no_key(tmp_path: Path, figures: dict[str, Any]) -> None:
    raw, out = tmp_path / "raw", tmp_path / "curated"
    specs = [
        write_ct_series(raw / "dicom" / "a", n_slices=16, seed=1),
        write_ct_series(raw / "dicom" / "b", n_slices=16, patient_id="MRN-0000077", seed=2),
        write_ct_series(raw / "dicom" / "c", n_slices=9, missing_slice=4, seed=3),  # quarantined
    ]
    # an export that names folders after the patient and files after UIDs
    named = raw / "dicom" / PHI["patient_name"].replace("^", "_") / specs[0].series_uid
    named.mkdir(parents=True)
    for path in specs[0].paths:
        path.rename(named / f"{pydicom.dcmread(path).SOPInstanceUID}.dcm")
    (named / f"{PHI['accession']}.txt").write_text("not dicom")
    pd.DataFrame(
        [(s.series_uid, 0.0, 0.0, -10.0, 5.0) for s in specs],
        columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
    ).to_csv(raw / "annotations.csv", index=False)
    pd.DataFrame(
        {
            "person_id": [PHI["patient_id"], "MRN-0000077"],
            "seriesuid": [specs[0].series_uid, specs[1].series_uid],
            "malignant": [1, 0],
            "diagnosis_date": ["2020-04-01", "2021-02-01"],
        }
    ).to_csv(raw / "labels.csv", index=False)
    phi = raw_phi(raw)
    assert {PHI["patient_id"], PHI["accession"], PHI["institution"]} <= phi.text
    assert "Janet" in phi.words
    env = {**os.environ, "LUNGJEPA_PSEUDONYM_KEY": KEY, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "curate", "--input", str(raw),
         "--output", str(out), "--workers", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["accepted"] == 2 and summary["quarantined"]["missing_slice"] == 1
    findings = dict(scan_tree(out, phi, KEY))
    findings["<stdout+stderr>"] = leaks((result.stdout + result.stderr).encode(), phi, KEY)
    leaked = {k: v for k, v in findings.items() if v}
    figures["privacy_curation"] = {
        "annex_e_attributes_present": len(phi.keywords),
        "phi_values": len(phi.text) + len(phi.words) + len(phi.tokens),
        "uids": len(phi.uids),
        "files_scanned": len(findings) - 1,
        "leaks": len(leaked),
    }
    assert leaked == {}
    assert len(findings) >= 8  # index, quarantine, nodules, labels, volumes, crops


def test_pipeline_run_leaks_no_phi_and_no_key(
    tmp_path_factory: pytest.TempPathFactory, figures: dict[str, Any]
) -> None:
    """A whole tiny pipeline run with a distinctive key: outputs, events, logs, instance."""
    import dagster as dg
    from dagster._serdes import serialize_value
    from pipeline_run import run_pipeline

    root = tmp_path_factory.mktemp("privacy_pipeline")
    home = root / "dagster_home"
    home.mkdir()
    previous = os.environ.get("LUNGJEPA_PSEUDONYM_KEY")
    os.environ["LUNGJEPA_PSEUDONYM_KEY"] = KEY
    try:
        with dg.instance_for_test(temp_dir=str(home)) as instance:
            result = run_pipeline(root, instance)
            assert result.success
            run_id = result.run_id
            records = instance.all_logs(run_id)
            events = [serialize_value(entry) for entry in records]
            run = instance.get_run_by_id(run_id)
            run_config = json.dumps(run.run_config if run else {}, default=str)
    finally:
        if previous is None:
            os.environ.pop("LUNGJEPA_PSEUDONYM_KEY", None)
        else:
            os.environ["LUNGJEPA_PSEUDONYM_KEY"] = previous
    phi = Phi()
    cohorts = sorted(p for p in (root / "data" / "raw").iterdir() if (p / "dicom").is_dir())
    for cohort in cohorts:
        phi |= raw_phi(cohort)
    assert len(phi.text) > 10 and len(phi.words) > 10 and len(phi.uids) > 10
    findings: dict[str, list[str]] = {}
    for sub in ("data/curated", "data/feast", "data/examples", "artifacts", "metrics"):
        for rel, found in scan_tree(root / sub, phi, KEY):
            findings[f"{sub}/{rel}"] = found
    findings["RESULTS.md"] = leaks((root / "RESULTS.md").read_bytes(), phi, KEY, dates=True)
    for rel, found in scan_tree(home, phi, KEY, dates=True):  # logs, event storage
        findings[f"dagster_home/{rel}"] = found
    for n, event in enumerate(events):
        findings[f"event {n}"] = leaks(event.encode(), phi, KEY, dates=True)
    findings["run config"] = leaks(run_config.encode(), phi, KEY, dates=True)
    leaked = {k: v for k, v in findings.items() if v}
    dated = [_dates_are_shifted(root, cohort.name) for cohort in cohorts]
    figures["privacy_pipeline"] = {
        "cohorts": len(cohorts),
        "annex_e_attributes_present": len(phi.keywords),
        "phi_values": len(phi.text) + len(phi.words) + len(phi.tokens),
        "uids": len(phi.uids),
        "real_dates": len(phi.dates),
        "too_short_to_search": sum(phi.short.values()),
        "files_scanned": sum(1 for k in findings if not k.startswith(("event", "run config"))),
        "events_scanned": len(events),
        "dated_rows_checked": sum(dated),
        "leaks": len(leaked),
    }
    assert leaked == {}, {k: v[:5] for k, v in list(leaked.items())[:20]}
    assert len(phi.keywords) >= 15  # the generator writes a hospital's worth of Annex E fields


def _dates_are_shifted(root: Path, cohort: str) -> int:
    """Every curated study date is its series' real StudyDate moved back by the patient's
    keyed shift (never the real date); returns the number of rows checked."""
    from cohorts.dicom.scan import scan_dicom_tree
    from cohorts.privacy import date_shift_days, pseudonymise
    from orchestration.params import privacy_config

    max_days = privacy_config().date_shift_max_days
    assert max_days > 0
    key = KEY.encode()
    tree = scan_dicom_tree(root / "data" / "raw" / cohort / "dicom")
    index = pd.read_parquet(root / "data" / "curated" / cohort / "index.parquet")
    released = dict(zip(index["series_id"], index["study_date"], strict=True))
    checked = 0
    for uid, headers in tree.series.items():
        real = pd.Timestamp(headers[0].study_date).date()
        shift = date_shift_days(headers[0].patient_id, key, max_days)
        assert shift < 0
        expected = (real + pd.Timedelta(days=shift)).isoformat()
        assert released[pseudonymise(uid, key, "series")] == expected != real.isoformat()
        checked += 1
    assert checked == len(index)
    return checked
