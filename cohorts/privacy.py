"""Pseudonymisation shared by DICOM curation and EHR features, so CT and EHR still link.

Ids are replaced by a keyed hash (HMAC-SHA256): without the key nobody can recompute the map
from a guessed MRN, and with the same key every run maps the same patient to the same id.

Which key (`resolve_key`), in this order:
1. LUNGJEPA_PSEUDONYM_KEY, when set (a site's managed secret; any data).
2. For data the built-in generator marked synthetic (a `synthetic.json` beside the cohort's
   files and the generator's mark in every DICOM series), the published demo key: nothing
   real is behind those ids, and the demo stays reproducible on every machine.
3. Otherwise the installation key: 32 random bytes created on first use in a file readable
   by its owner only (0600), outside the repository and outside any run config
   (LUNGJEPA_KEY_FILE, default ~/.local/share/lungjepa/pseudonym.key). The demo key never
   pseudonymises real input.
The key itself never enters params, Dagster config, logs or metadata; `key_fingerprint` (a
keyed hash of the key, not the key) is what cards record, so a run with another key is caught.

Dates: every date of a patient, CT and EHR alike, moves back by the same number of days
(`date_shift_days`, a keyed hash of the patient's raw id: the shift secret is the key). All
features are intervals between a patient's own dates, so they do not change; what changes is
that a released date no longer names the real day. The shift is one setting for every
cohort (`PrivacyConfig`, params.yaml `privacy`), never a run-config field: curation and the
EHR features must shift alike, so a launchpad override of one of them would break the join.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY_ENV = "LUNGJEPA_PSEUDONYM_KEY"
KEY_FILE_ENV = "LUNGJEPA_KEY_FILE"
DEMO_KEY = "lungjepa-demo-key-not-secret"
SYNTHETIC_MARKER = "synthetic.json"  # written by cohorts/synthetic beside dicom/ and ehr/
SYNTHETIC_DICOM_MARK = "LUNGJEPA SYNTHETIC: generated, no real patient"  # DeidentificationMethod
_PREFIX = {"patient": "P", "series": "S", "study": "T", "nodule": "N"}


class KeyFileError(RuntimeError):
    """The installation key file exists but cannot be trusted (permissions, content)."""


def key_file_path() -> Path:
    """Where the installation key lives (LUNGJEPA_KEY_FILE, else under ~/.local/share)."""
    configured = os.environ.get(KEY_FILE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".local" / "share" / "lungjepa" / "pseudonym.key"


def installation_key(path: Path | None = None) -> bytes:
    """This installation's private key: read from `path`, or created there (0600) on first use.

    Creation is exclusive (O_EXCL), so two processes starting at once end with one key. A
    file that others may read is refused: the key is only private while the file is.
    """
    path = Path(path) if path is not None else key_file_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: read theirs
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"pseudonym key file {path} is readable by others (mode {mode:o}); "
            f"run `chmod 600 {path}`"
        )
    key = path.read_text().strip()
    if len(key) < 32:
        raise KeyFileError(f"pseudonym key file {path} holds no usable key (under 32 characters)")
    return key.encode("utf-8")


def resolve_key(synthetic: bool) -> bytes:
    """The key in force for data that is (or is not) the generator's synthetic output."""
    configured = os.environ.get(KEY_ENV)
    if configured:
        return configured.encode("utf-8")
    if synthetic:
        return DEMO_KEY.encode("utf-8")
    return installation_key()


def key_fingerprint(key: bytes) -> str:
    """A short keyed hash of the key for cards (equal keys, equal fingerprints; not reversible)."""
    return hmac.new(key, b"lungjepa:key-fingerprint", hashlib.sha256).hexdigest()[:16]


KEY_RECORD = "key_fingerprint.json"  # beside curated outputs and the Feast sources


@dataclass(frozen=True)
class PrivacyConfig:
    """De-identification settings shared by every cohort (params.yaml ``privacy``).

    date_shift_max_days: each patient's dates move back by 1..max days (0: off). Back, never
    forward, so that no shifted date lies in the future (Feast materialises up to now, and
    the quality checks hold dates to "not after today").
    """

    date_shift_max_days: int = 365

    def __post_init__(self) -> None:
        if self.date_shift_max_days < 0:
            raise ValueError(f"date_shift_max_days must be >= 0, got {self.date_shift_max_days}")

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> PrivacyConfig:
        return cls(date_shift_max_days=int(section["date_shift_max_days"]))


def key_record(key: bytes, date_shift_max_days: int, synthetic: bool | None) -> dict[str, Any]:
    """What an output records about how its ids and dates were made (never the key)."""
    return {
        "key_fingerprint": key_fingerprint(key),
        "date_shift_max_days": int(date_shift_max_days),
        "synthetic": synthetic,
    }


def read_key_record(folder: Path) -> dict[str, Any]:
    """``folder/key_fingerprint.json``: a curated cohort's record, or the Feast sources' records
    by cohort; {} when an older run did not write one."""
    path = Path(folder) / KEY_RECORD
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: unreadable key record ({error})") from error


def curated_key(record: Mapping[str, Any], where: str) -> bytes:
    """The key curation pseudonymised a cohort with, from its record (``read_key_record``).

    Curation alone decides whether a cohort is the generator's output (marker file and the
    generator's mark on every DICOM series, `cohorts/dicom/curate.py`); the EHR of the same
    cohort follows that decision rather than the marker file, so a marker copied into a real
    folder can never put the published key on its EHR. The key in force now must be the one
    the record names (same LUNGJEPA_PSEUDONYM_KEY or installation key file), or the ids of
    the two modalities would not link.
    """
    if "key_fingerprint" not in record:
        raise ValueError(
            f"{where}: no pseudonymisation record ({KEY_RECORD}); materialise curated_scans "
            "first: the EHR is pseudonymised with the key curation chose for the cohort"
        )
    key = resolve_key(record.get("synthetic") is True)
    if key_fingerprint(key) != record["key_fingerprint"]:
        raise ValueError(
            f"{where}: curation used key {record['key_fingerprint']} but the key in force now is "
            f"{key_fingerprint(key)} (fingerprints); set the same LUNGJEPA_PSEUDONYM_KEY or key "
            "file as curation had, or re-materialise curated_scans"
        )
    return key


def check_same_key(
    cohort: str, ct_record: Mapping[str, Any], ehr_record: Mapping[str, Any]
) -> None:
    """Refuse to join CT and EHR rows pseudonymised with different keys or date shifts.

    Different keys give the same patient two unrelated ids, so the join would silently find
    no EHR for anyone; different shifts would give every scan the EHR of another day. An
    empty record (an output written before records existed) is not checked.
    """
    ct_fp, ehr_fp = ct_record.get("key_fingerprint"), ehr_record.get("key_fingerprint")
    if ct_fp and ehr_fp and ct_fp != ehr_fp:
        raise ValueError(
            f"{cohort}: the curated CT ids were pseudonymised with key {ct_fp} and the "
            f"EHR features with key {ehr_fp} (fingerprints); re-materialise "
            "curated_scans and ehr_features with the same key (LUNGJEPA_PSEUDONYM_KEY or the "
            "installation key file)"
        )
    ct_shift, ehr_shift = (
        ct_record.get("date_shift_max_days"),
        ehr_record.get("date_shift_max_days"),
    )
    if ct_shift is not None and ehr_shift is not None and ct_shift != ehr_shift:
        raise ValueError(
            f"{cohort}: the curated CT dates were shifted with date_shift_max_days {ct_shift} "
            f"and the EHR features with {ehr_shift}; re-materialise curated_scans and "
            "ehr_features after changing params.yaml privacy.date_shift_max_days"
        )


def check_shares_a_key(
    name: str, record: Mapping[str, Any], ehr_records: Mapping[str, Mapping[str, Any]]
) -> None:
    """Refuse an arrival batch whose key or date shift matches no cohort of the EHR store.

    A batch's patients may belong to any cohort, so it must share the key and shift of at
    least one; an EHR store without records (built before they existed) is not checked.
    """
    errors = []
    for cohort, other in ehr_records.items():
        try:
            check_same_key(name, record, other)
            return
        except ValueError as error:
            errors.append(f"{cohort}: {error}")
    if errors:
        raise ValueError(f"{name} shares its key and date shift with no EHR cohort; " + errors[0])


def is_marked_synthetic(cohort_dir: Path) -> bool:
    """Does the raw cohort folder carry the generator's marker file?"""
    marker = Path(cohort_dir) / SYNTHETIC_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("synthetic") is True
    except (OSError, ValueError) as error:
        raise ValueError(f"{marker}: unreadable synthetic marker ({error})") from error


def write_synthetic_marker(cohort_dir: Path, generator: str) -> None:
    """Mark a generated cohort folder (no real patient is behind its identifiers)."""
    text = json.dumps({"synthetic": True, "generator": generator}, sort_keys=True) + "\n"
    (Path(cohort_dir) / SYNTHETIC_MARKER).write_text(text)


def pseudonymise(value: str, key: bytes, kind: str = "patient", length: int = 16) -> str:
    """Keyed, deterministic pseudonym such as ``P3f9a...``; ``kind`` keeps id spaces apart."""
    if kind not in _PREFIX:
        raise ValueError(f"unknown id kind {kind!r}; expected one of {sorted(_PREFIX)}")
    digest = hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return _PREFIX[kind] + digest[:length]


def date_shift_days(patient_value: str, key: bytes, max_days: int) -> int:
    """The patient's shift in days, in [-max_days, -1] (0 when shifting is off).

    A keyed hash of the raw patient id (DICOM PatientID = OMOP person_id), so CT and EHR of
    one patient move together and nobody without the key can undo it.
    """
    if max_days <= 0:
        return 0
    digest = hmac.new(key, f"dateshift:{patient_value}".encode(), hashlib.sha256).digest()
    return -(int.from_bytes(digest[:4], "big") % max_days) - 1


def shift_date(value: dt.date, days: int) -> dt.date:
    return value + dt.timedelta(days=days)
