"""The generator's truth about its patients, keyed like the pipeline's outputs.

Why: the synthetic instrument's checks (models/instrument.py) compare what models and encoders
learn with the causes the generator drew. Curated and example ids are keyed pseudonyms
(cohorts/privacy.py), so the truth table is re-keyed with the same key before anything joins
it; the raw MRNs never leave this function.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cohorts.privacy import is_marked_synthetic, key_fingerprint, pseudonymise

TRUTH_PATIENTS = Path("truth") / "patients.csv"


def read_truth(
    cohort_dir: Path, key: bytes, expected_fingerprint: str | None = None
) -> pd.DataFrame:
    """``cohort_dir/truth/patients.csv`` indexed by pseudonymised patient id (``person_id`` dropped).

    expected_fingerprint: the key fingerprint the joined outputs record (key_fingerprint.json);
    a different key would give every patient an id that matches nothing, so it is refused.
    Raises ValueError for a folder without the generator's marker (real data have no truth)
    or a key that is not the outputs', FileNotFoundError naming the missing file, and
    ValueError naming a file without person_id.
    """
    cohort_dir = Path(cohort_dir)
    if not is_marked_synthetic(cohort_dir):
        raise ValueError(f"{cohort_dir}: not generator data (no synthetic marker), so no truth")
    if expected_fingerprint is not None and key_fingerprint(key) != expected_fingerprint:
        raise ValueError(
            f"{cohort_dir}: the outputs were pseudonymised with key {expected_fingerprint}, "
            f"not the key in force ({key_fingerprint(key)}); set the same key to join truth"
        )
    path = cohort_dir / TRUTH_PATIENTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the generator's truth table is missing")
    frame = pd.read_csv(path)
    if "person_id" not in frame.columns:
        raise ValueError(f"{path}: no person_id column")
    ids = [pseudonymise(str(p), key, "patient") for p in frame.pop("person_id")]
    return frame.set_index(pd.Index(ids, name="patient_id"))
