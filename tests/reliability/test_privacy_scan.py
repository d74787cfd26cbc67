"""Privacy: no PHI from the raw archive and never the pseudonymisation key in any output.

PHI is read back from the raw archive itself (DICOM headers: PatientName and its parts,
PatientBirthDate, PatientID, AccessionNumber, InstitutionName, Study/Series/SOP UIDs; the
OMOP person table: person_id, birth dates), then searched for in every output file (tables
decoded, not just their compressed bytes), the CLI's stdout/stderr and, for the pipeline,
every Dagster event (log lines, metadata values), the run config and the instance's files.
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

REPO = Path(__file__).resolve().parents[2]
KEY = "reliability-key-7f3a9c-never-in-outputs"
_UID_TOKEN = re.compile(rb"[0-9]+(?:\.[0-9]+){3,}")
_WORD = re.compile(rb"[A-Za-z]+")


@dataclass
class Phi:
    """Values to find: ``text`` anywhere, name ``words`` as whole words, ``uids`` as tokens."""

    text: set[str] = field(default_factory=set)
    words: set[str] = field(default_factory=set)
    uids: set[str] = field(default_factory=set)

    def __ior__(self, other: Phi) -> Phi:
        self.text |= other.text
        self.words |= other.words
        self.uids |= other.uids
        return self


def raw_phi(raw: Path) -> Phi:
    """PHI read from the raw cohort's DICOM headers and OMOP person table."""
    text: set[str] = set()
    words: set[str] = set()
    uids: set[str] = set()
    for path in (raw / "dicom").rglob("*"):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - junk files in an export carry no header
            continue
        for keyword in ("PatientID", "AccessionNumber", "InstitutionName"):
            text.add(str(ds.get(keyword, "") or "").strip())
        name = str(ds.get("PatientName", "") or "")
        text.add(name)
        words.update(part for part in re.split(r"[\^ ]", name) if len(part) >= 3)
        birth = str(ds.get("PatientBirthDate", "") or "")
        if len(birth) == 8:
            text.update({birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"})
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            uids.add(str(ds.get(keyword, "") or ""))
    person = raw / "ehr" / "person.csv"
    if person.exists():
        frame = pd.read_csv(person, dtype=str)
        text.update(frame["person_id"].dropna())
        if "birth_datetime" in frame:
            text.update(frame["birth_datetime"].dropna().str[:10])
    text.discard("")
    uids.discard("")
    return Phi(text, words, uids)


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


def leaks(blob: bytes, phi: Phi, key: str) -> list[str]:
    found = [value for value in phi.text if value.encode() in blob]
    found += [t.decode() for t in set(_WORD.findall(blob)) if t.decode() in phi.words]
    found += [t.decode() for t in set(_UID_TOKEN.findall(blob)) if t.decode() in phi.uids]
    if key.encode() in blob:
        found.append("<pseudonymisation key>")
    return found


def scan_tree(root: Path, phi: Phi, key: str) -> Iterator[tuple[str, Any]]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield str(path.relative_to(root)), leaks(file_text(path), phi, key)


def test_scanner_finds_planted_phi() -> None:
    """The scanner is not blind: planted values in text, UIDs and parquet are found."""
    phi = Phi({PHI["patient_id"]}, {"Janet", "MARY"}, {"1.2.826.0.1.3680043.8.498.1"})
    blob = f"x {PHI['patient_id']} y 1.2.826.0.1.3680043.8.498.1 {KEY} Janet,".encode()
    assert sorted(leaks(blob, phi, KEY)) == sorted(
        [PHI["patient_id"], "1.2.826.0.1.3680043.8.498.1", "<pseudonymisation key>", "Janet"]
    )
    assert leaks(b"1.2.826.0.1.3680043.8.498.12 SUMMARY", phi, KEY) == []  # other UID, word


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
        "phi_values": len(phi.text) + len(phi.words),
        "uids": len(phi.uids),
        "files_scanned": len(findings) - 1,
        "leaks": len(leaked),
    }
    assert leaked == {}
    assert len(findings) >= 8  # index, quarantine, nodules, labels, volumes, crops


@pytest.mark.reliability_full
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
    findings["RESULTS.md"] = leaks((root / "RESULTS.md").read_bytes(), phi, KEY)
    for rel, found in scan_tree(home, phi, KEY):
        findings[f"dagster_home/{rel}"] = found
    for n, event in enumerate(events):
        findings[f"event {n}"] = leaks(event.encode(), phi, KEY)
    findings["run config"] = leaks(run_config.encode(), phi, KEY)
    leaked = {k: v for k, v in findings.items() if v}
    figures["privacy_pipeline"] = {
        "cohorts": len(cohorts),
        "phi_values": len(phi.text) + len(phi.words),
        "uids": len(phi.uids),
        "files_scanned": sum(1 for k in findings if not k.startswith(("event", "run config"))),
        "events_scanned": len(events),
        "leaks": len(leaked),
    }
    assert leaked == {}, {k: v[:5] for k, v in list(leaked.items())[:20]}
