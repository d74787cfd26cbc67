"""The causal model: latent causes, observed covariates, nodule phenotype and the label.

Three latent causes per patient, each N(0, 1) and independent:
  shared_damage      smoking-related lung damage; drives emphysema on CT *and* smoking / COPD
                     codes in the EHR (visible in both modalities)
  imaging_aggr       nodule aggressiveness; drives margins (spiculation, lobulation) and growth
                     speed (visible on CT only)
  ehr_history        oncologic / systemic history; drives prior-cancer codes, tumour-marker labs
                     and drugs (visible in the EHR only)
The malignancy logit mixes them by `regime` (0 shared-cause ... 1 independent-cause) on top of
a size term calibrated to the LIDC-IDRI size/malignancy table; equations in docs/SYNTHETIC.md.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cohorts.synthetic.config import SynthConfig

# LIDC-IDRI: share rated malignant >= 4 per size bin (bin midpoints in mm)
LIDC_SIZE_MM: np.ndarray = np.array([5.0, 7.0, 11.5, 22.5, 35.0])
LIDC_MALIGNANT_SHARE: np.ndarray = np.array([0.02, 0.07, 0.26, 0.62, 0.75])
NODULE_TYPES: tuple[str, ...] = ("solid", "part-solid", "ground-glass")
NODULE_TYPE_SHARE: tuple[float, ...] = (0.80, 0.11, 0.09)
SCAN_COUNT_SHARE: tuple[float, ...] = (0.3, 0.4, 0.3)
# logit-normal attenuation: E[sigmoid(a + k z)] ~ sigmoid(a / sqrt(1 + c k^2)), c = pi^2 / 3 / 9.5
_ATTENUATION_C: float = 0.346
LATENTS: tuple[str, ...] = ("shared_damage", "imaging_aggr", "ehr_history")
NUISANCE: tuple[str, ...] = ("cardiometabolic", "musculoskeletal", "psychiatric", "digestive")


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """Logistic function."""
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def lidc_size_logit(diameter_mm: np.ndarray) -> np.ndarray:
    """Logit of P(malignant | size), piecewise linear in log diameter through the LIDC table."""
    logits = np.log(LIDC_MALIGNANT_SHARE / (1.0 - LIDC_MALIGNANT_SHARE))
    return np.interp(np.log(np.asarray(diameter_mm, dtype=float)), np.log(LIDC_SIZE_MM), logits)


def label_driver(
    shared_damage: np.ndarray, imaging_aggr: np.ndarray, ehr_history: np.ndarray, regime: float
) -> np.ndarray:
    """Unit-variance latent part of the label: shared cause at regime 0, specific causes at 1."""
    specific = (imaging_aggr + ehr_history) / np.sqrt(2.0)
    norm = np.sqrt((1.0 - regime) ** 2 + regime**2)
    return ((1.0 - regime) * shared_damage + regime * specific) / norm


def sample_cohort_latents(
    rng: np.random.Generator, n: int, config: SynthConfig, cohort: str
) -> pd.DataFrame:
    """One row per patient: latents, covariates, nodule phenotype, scan schedule and label.

    Why a table: the same draw feeds the phantom, the EHR writer and truth/, and tests can
    check the causal structure on large samples without writing any DICOM.
    """
    external = cohort == "external"
    df = pd.DataFrame({"patient_index": np.arange(n)})
    for name in (*LATENTS, *NUISANCE):
        df[name] = rng.standard_normal(n)
    s, m, h = (df[name].to_numpy() for name in LATENTS)

    # imaging view of the shared cause: emphysema also has non-smoking causes (alpha-1,
    # occupational, biomass) at every site, more of them at the external site, which
    # weakens the EHR <-> imaging relation there
    coupling = config.external_coupling if external else config.site_coupling
    df["emphysema_drive"] = coupling * s + np.sqrt(1.0 - coupling**2) * rng.standard_normal(n)
    df["emphysema_fraction"] = 0.35 * sigmoid(2.0 * (df["emphysema_drive"].to_numpy() - 1.0))

    df["sex"] = np.where(rng.random(n) < 0.48, "F", "M")
    df["age_years"] = np.clip(rng.normal(65.0, 8.0, n), 45.0, 88.0).round(1)
    df["family_history"] = (rng.random(n) < 0.12).astype(int)
    ever = rng.random(n) < sigmoid(1.0 + 2.5 * s)
    df["ever_smoker"] = ever.astype(int)
    df["current_smoker"] = (ever & (rng.random(n) < sigmoid(-0.5 + 0.8 * s))).astype(int)
    df["pack_years"] = np.where(
        ever, np.clip(25.0 + 15.0 * s + 8.0 * rng.standard_normal(n), 1.0, 120.0), 0.0
    ).round(1)
    df["prior_cancer"] = (rng.random(n) < sigmoid(-2.2 + 1.4 * h)).astype(int)

    # index nodule at the latest scan: LIDC-like size mix, texture, margins driven by imaging_aggr
    diameter_mm = np.clip(np.exp(rng.normal(np.log(9.0), 0.5, n)), 4.0, 30.0)
    df["diameter_last_mm"] = diameter_mm.round(2)
    df["nodule_type"] = rng.choice(NODULE_TYPES, size=n, p=NODULE_TYPE_SHARE)
    df["spiculation"] = np.clip(sigmoid(1.6 * m - 1.0) + 0.1 * rng.standard_normal(n), 0, 1).round(
        3
    )
    df["lobulation"] = (0.04 + 0.16 * sigmoid(1.2 * m + 0.3 * rng.standard_normal(n))).round(3)

    # label: LIDC size logit (de-attenuated so P(malignant | size) keeps the table) + latents
    k = config.label_strength
    size_logit = lidc_size_logit(diameter_mm) * np.sqrt(1.0 + _ATTENUATION_C * k**2)
    logit = (
        size_logit
        + k * label_driver(s, m, h, config.regime)
        + 0.3 * df["family_history"].to_numpy()
        + 0.02 * (df["age_years"].to_numpy() - 65.0)
        + (config.external_logit_shift if external else 0.0)
    )
    df["label_logit"] = logit.round(4)
    malignant = rng.random(n) < sigmoid(logit)
    df["malignant"] = malignant.astype(int)

    # growth: volume doubling time; malignant 80-600 d (faster when aggressive), benign
    # mostly stable (0 = no growth) or slow
    vdt_malignant = np.clip(np.exp(rng.normal(np.log(220.0) - 0.3 * m, 0.3)), 80.0, 600.0)
    ggo_slow = np.where(df["nodule_type"].to_numpy() == "ground-glass", 2.0, 1.0)
    vdt_benign = np.where(rng.random(n) < 0.7, 0.0, rng.uniform(800.0, 3000.0, n))
    df["vdt_days"] = np.where(malignant, vdt_malignant * ggo_slow, vdt_benign).round(1)

    # schedule: 1..max_scans scans, 3-15 months apart; first scan date from the seed
    share = np.array(SCAN_COUNT_SHARE[: config.max_scans])
    df["n_scans"] = rng.choice(np.arange(1, config.max_scans + 1), size=n, p=share / share.sum())
    start = np.datetime64(f"{config.first_scan_year_min}-01-01")
    span_days = int(
        (np.datetime64(f"{config.first_scan_year_max}-12-31") - start) / np.timedelta64(1, "D")
    )
    df["first_scan_date"] = start + rng.integers(0, span_days, n).astype("timedelta64[D]")
    for t in range(config.max_scans):
        gap = rng.integers(90, 450, n)
        prev = df[f"scan_offset_days_{t - 1}"].to_numpy() if t else np.zeros(n)
        offset = prev + (gap if t else 0)
        df[f"scan_offset_days_{t}"] = np.where(t < df["n_scans"].to_numpy(), offset, -1).astype(int)
    last = df[[f"scan_offset_days_{t}" for t in range(config.max_scans)]].max(axis=1).to_numpy()
    df["diagnosis_offset_days"] = (
        last + np.where(malignant, rng.integers(14, 90, n), rng.integers(180, 400, n))
    ).astype(int)
    # EHR view of the shared cause: structured smoking history is missing for part of the
    # smokers (drawn last, so every column above keeps its random stream)
    df["smoking_documented"] = (rng.random(n) < config.smoking_documented_rate).astype(int)
    # ... and the lung damage itself reaches the record (symptoms coded, inhalers, spirometry,
    # a COPD or emphysema diagnosis) only for part of the patients (drawn after, likewise)
    df["lung_damage_documented"] = (rng.random(n) < config.lung_damage_documented_rate).astype(int)
    return df


def diameter_at(diameter_last_mm: float, vdt_days: float, days_before_last: float) -> float:
    """Index-nodule diameter `days_before_last` days before the latest scan (volume doubling)."""
    if vdt_days <= 0:
        return float(diameter_last_mm)
    return float(max(3.0, diameter_last_mm * 2.0 ** (-days_before_last / (3.0 * vdt_days))))
