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
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path

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


def check_same_key(cohort: str, ct_fingerprint: str | None, ehr_fingerprint: str | None) -> None:
    """Refuse to join CT and EHR rows pseudonymised with different keys.

    Different keys give the same patient two unrelated ids, so the join would silently find
    no EHR for anyone. None (an output written before fingerprints were recorded) is not
    checked.
    """
    if ct_fingerprint and ehr_fingerprint and ct_fingerprint != ehr_fingerprint:
        raise ValueError(
            f"{cohort}: the curated CT ids were pseudonymised with key {ct_fingerprint} and the "
            f"EHR features with key {ehr_fingerprint} (fingerprints); re-materialise "
            "curated_scans and ehr_features with the same key (LUNGJEPA_PSEUDONYM_KEY or the "
            "installation key file)"
        )


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
    """Consistent per-patient shift in [-max_days, max_days]; 0 when shifting is off."""
    if max_days <= 0:
        return 0
    digest = hmac.new(key, f"dateshift:{patient_value}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:4], "big") % (2 * max_days + 1) - max_days


def shift_date(value: dt.date, days: int) -> dt.date:
    return value + dt.timedelta(days=days)
