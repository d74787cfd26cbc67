"""Pseudonymisation shared by DICOM curation and EHR features, so CT and EHR still link.

Ids are replaced by a keyed hash (HMAC-SHA256): without the key nobody can recompute the map
from a guessed MRN, and with the same key every run maps the same patient to the same id.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os

KEY_ENV = "LUNGJEPA_PSEUDONYM_KEY"
DEMO_KEY = "lungjepa-demo-key-not-secret"
_PREFIX = {"patient": "P", "series": "S", "study": "T", "nodule": "N"}


def pseudonym_key(configured: str | None = None) -> bytes:
    """The key in force: the environment variable wins over the configured value."""
    key = os.environ.get(KEY_ENV) or configured or DEMO_KEY
    return key.encode("utf-8")


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
