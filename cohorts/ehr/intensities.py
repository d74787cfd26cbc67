"""Code intensities: how often each code group occurs in the look-back window of a snapshot.

Lasko et al. build latent clinical signatures from longitudinal code intensities; we use the
windowed count, log1p-transformed. Codes are grouped so that rare leaf codes share a column:
ICD-10-CM by 3-character category (``icd10:J44``), LOINC, SNOMED and RxNorm by full code
(``loinc:2160-0``, ``snomed:401201003``, ``rxnorm:197361``). The vocabulary prefix comes from
the code's form, so F17.210 recorded as a condition or an observation is one column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cohorts.ehr.omop import ICD10_PATTERN, LOINC_PATTERN
from cohorts.ehr.snapshots import window_counts


def code_groups(events: pd.DataFrame) -> pd.Series:
    """Vocabulary-prefixed code group per event (see module docstring)."""
    code = events["code"]
    icd10 = code.str.fullmatch(ICD10_PATTERN).astype(bool)
    loinc = code.str.fullmatch(LOINC_PATTERN).astype(bool)
    drug = events["domain"] == "drug"
    group = "snomed:" + code
    group = group.mask(drug, "rxnorm:" + code)
    group = group.mask(loinc & ~drug, "loinc:" + code)
    group = group.mask(icd10 & ~drug, "icd10:" + code.str.slice(0, 3))
    return group


def code_intensities(
    snapshots: pd.DataFrame, events: pd.DataFrame, lookback_days: int
) -> pd.DataFrame:
    """log1p(count of each code group in [day - lookback_days, day]) per snapshot row.

    Columns are the code groups present in ``events``, sorted; index follows ``snapshots``.
    """
    groups = code_groups(events)
    vocabulary = np.sort(groups.unique())
    columns = np.searchsorted(vocabulary, groups.to_numpy())
    counts = window_counts(snapshots, events, columns, len(vocabulary), lookback_days)
    return pd.DataFrame(np.log1p(counts), index=snapshots.index, columns=list(vocabulary))
