"""OMOP-shaped EHR events whose rates depend on the latent causes.

Per patient: visits over a window that starts years before the first scan and ends after
the diagnosis (so features taken after a scan date leak the label downstream); at each
visit every code of the vocabulary fires with a probability log-linear in the latents
(`CodeSpec.drivers`), times the site's coding-practice multiplier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

EHR_TABLES: dict[str, tuple[str, ...]] = {
    "person": (
        "person_id",
        "gender_source_value",
        "year_of_birth",
        "month_of_birth",
        "day_of_birth",
        "birth_datetime",
        "care_site_id",
    ),
    "visit_occurrence": (
        "person_id",
        "visit_occurrence_id",
        "visit_source_value",
        "visit_start_date",
    ),
    "condition_occurrence": ("person_id", "condition_source_value", "condition_start_date"),
    "observation": (
        "person_id",
        "observation_source_value",
        "observation_date",
        "value_as_number",
        "value_as_string",
    ),
    "measurement": (
        "person_id",
        "measurement_source_value",
        "measurement_date",
        "value_as_number",
        "unit_source_value",
    ),
    "drug_exposure": ("person_id", "drug_source_value", "drug_exposure_start_date"),
}


@dataclass(frozen=True)
class CodeSpec:
    """One code: table, per-visit base probability, latent drivers; labs also get a value."""

    table: str  # condition | measurement | drug
    code: str
    base_rate: float
    drivers: dict[str, float] = field(default_factory=dict)
    value_mean: float = 0.0
    value_sd: float = 0.0
    value_drivers: dict[str, float] = field(default_factory=dict)
    unit: str = ""


def _family(table: str, codes: list[str], rate: float, drivers: dict[str, float]) -> list[CodeSpec]:
    return [CodeSpec(table, c, rate, drivers) for c in codes]


def _lab(
    code: str, rate: float, mean: float, sd: float, unit: str, **value_drivers: float
) -> CodeSpec:
    drivers = {k: 0.3 * np.sign(v) for k, v in value_drivers.items()}
    return CodeSpec("measurement", code, rate, drivers, mean, sd, value_drivers, unit)


S, H = "shared_damage", "ehr_history"
CARDIO, MSK, PSY, GI = "cardiometabolic", "musculoskeletal", "psychiatric", "digestive"

VOCABULARY: tuple[CodeSpec, ...] = tuple(
    # respiratory: the EHR face of the shared cause
    _family("condition", ["R05.9", "R06.02", "J20.9", "J18.9", "R06.2", "J96.11"], 0.05, {S: 0.9})
    + _family("drug", ["435", "69120", "896188", "1649560"], 0.05, {S: 1.0})
    + [
        _lab("20150-9", 0.08, 2.7, 0.35, "L", **{S: -0.35}),
        _lab("19926-5", 0.08, 0.74, 0.05, "%", **{S: -0.06}),
    ]
    # oncologic/systemic history: EHR-only cause
    + _family("condition", ["R63.4", "R53.83", "Z92.3", "Z92.21", "D64.9", "Z08"], 0.04, {H: 1.0})
    + _family("drug", ["10324", "72965", "26225", "84857"], 0.03, {H: 1.1})
    + [
        _lab("2039-6", 0.08, 1.6, 0.5, "ng/mL", **{H: 0.6}),
        _lab("2532-0", 0.08, 180.0, 25.0, "U/L", **{H: 20.0}),
        _lab("6768-6", 0.08, 80.0, 15.0, "U/L", **{H: 12.0}),
    ]
    # nuisance signatures: independent of the label and of imaging
    + _family(
        "condition", ["I10", "E11.9", "E78.5", "I25.10", "I48.91", "E66.9"], 0.08, {CARDIO: 1.0}
    )
    + _family("drug", ["6809", "83367", "29046", "17767", "6918", "1191"], 0.08, {CARDIO: 1.0})
    + [
        _lab("4548-4", 0.1, 6.0, 0.6, "%", **{CARDIO: 0.6}),
        _lab("13457-7", 0.1, 110.0, 25.0, "mg/dL", **{CARDIO: 15.0}),
        _lab("2345-7", 0.1, 105.0, 15.0, "mg/dL", **{CARDIO: 12.0}),
    ]
    + _family("condition", ["M54.50", "M17.11", "M25.561", "M79.10", "M81.0"], 0.06, {MSK: 1.0})
    + _family("drug", ["5640", "161", "25480", "11253"], 0.06, {MSK: 1.0})
    + _family("condition", ["F32.9", "F41.1", "G47.00", "F10.10"], 0.05, {PSY: 1.1})
    + _family("drug", ["36437", "10737", "39993", "321988"], 0.05, {PSY: 1.1})
    + _family("condition", ["K21.9", "K58.9", "K59.00", "K76.0"], 0.05, {GI: 1.0})
    + _family("drug", ["7646", "40790"], 0.06, {GI: 1.0})
    + [
        _lab("1742-6", 0.08, 25.0, 8.0, "U/L", **{GI: 6.0}),
        _lab("1920-8", 0.08, 24.0, 7.0, "U/L", **{GI: 5.0}),
    ]
    # background: everyday codes that depend on nothing
    + _family(
        "condition",
        [
            "Z00.00",
            "Z23",
            "J06.9",
            "N39.0",
            "R51.9",
            "H52.4",
            "L30.9",
            "B35.1",
            "H61.21",
            "Z12.11",
            "Z13.6",
            "R10.9",
            "R42",
            "M62.81",
            "R07.9",
            "Z79.899",
            "E55.9",
            "D50.9",
            "E03.9",
            "N18.30",
            "N40.0",
            "K57.30",
            "K64.9",
            "L57.0",
            "H26.9",
            "H40.9",
            "I83.90",
            "G43.909",
            "J30.9",
            "J32.9",
            "R73.03",
            "E87.6",
            "R60.0",
            "R35.0",
            "Z71.3",
            "Z91.81",
            "S93.401A",
            "S52.501A",
            "Z96.651",
            "Z95.1",
            "Z86.73",
            "I73.9",
            "R00.2",
            "R01.1",
            "L03.90",
            "B02.9",
            "J01.90",
            "H10.9",
            "K02.9",
            "Z76.0",
        ],
        0.025,
        {},
    )
    + _family(
        "drug",
        [
            "723",
            "18631",
            "8640",
            "28889",
            "20610",
            "5487",
            "10582",
            "4603",
            "10689",
            "2670",
            "8163",
            "7052",
            "3640",
            "4053",
            "1202",
            "2551",
            "6135",
            "35636",
            "41493",
            "32968",
        ],
        0.025,
        {},
    )
    + [
        _lab("6690-2", 0.15, 7.0, 1.8, "10*3/uL"),
        _lab("718-7", 0.15, 13.8, 1.3, "g/dL"),
        _lab("777-3", 0.15, 250.0, 55.0, "10*3/uL"),
        _lab("2951-2", 0.15, 139.0, 2.5, "mmol/L"),
        _lab("2823-3", 0.15, 4.2, 0.4, "mmol/L"),
        _lab("2160-0", 0.15, 0.95, 0.2, "mg/dL"),
        _lab("3094-0", 0.12, 16.0, 4.0, "mg/dL"),
        _lab("2093-3", 0.08, 190.0, 35.0, "mg/dL"),
        _lab("2571-8", 0.08, 140.0, 50.0, "mg/dL"),
        _lab("1751-7", 0.08, 4.1, 0.4, "g/dL"),
        _lab("3016-3", 0.06, 2.0, 0.9, "m[IU]/L"),
    ]
)

LUNG_CANCER_CODES: tuple[str, ...] = ("C34.10", "C34.11", "C34.12", "C34.90")
CHEMO_DRUGS: tuple[str, ...] = ("40048", "68446", "1597582")
PRIOR_CANCER_CODES: tuple[str, ...] = ("Z85.3", "Z85.46", "Z85.038", "Z85.820", "Z85.43")


@dataclass(frozen=True)
class CodingPractice:
    """A site's habits: how often a code is written down, and which codes it never uses."""

    multiplier: dict[str, float]
    missing: frozenset[str]

    def rate(self, code: str) -> float:
        """Recording multiplier for a code (prefix match, longest first)."""
        if code in self.missing:
            return 0.0
        for prefix in sorted(self.multiplier, key=len, reverse=True):
            if code.startswith(prefix):
                return self.multiplier[prefix]
        return 1.0


def coding_practice(site_id: int) -> CodingPractice:
    """Site 1 codes everything; site 2 under-codes current smoking and never uses J43 / some drugs."""
    if site_id == 1:
        return CodingPractice({}, frozenset())
    background_drugs = [c.code for c in VOCABULARY if c.table == "drug" and not c.drivers]
    return CodingPractice(
        {"F17": 0.5, "Z87.891": 1.4, "401201003": 0.3, "J44": 1.5, "R05": 1.5, "2039-6": 0.0},
        frozenset(["J43.2", "J43.9", "J44.1", *background_drugs[::4]]),
    )


def _iso(day: np.datetime64) -> str:
    return str(np.datetime64(day, "D"))


def patient_events(
    row: pd.Series,
    person_id: str,
    birth_date: np.datetime64,
    scan_dates: list[np.datetime64],
    diagnosis_date: np.datetime64,
    site_id: int,
    rng: np.random.Generator,
) -> dict[str, list[tuple]]:
    """All EHR rows of one patient, keyed by table name, columns as in EHR_TABLES."""
    practice = coding_practice(site_id)
    out: dict[str, list[tuple]] = {name: [] for name in EHR_TABLES}
    out["person"].append(
        (
            person_id,
            row["sex"],
            int(str(birth_date)[:4]),
            int(str(birth_date)[5:7]),
            int(str(birth_date)[8:10]),
            f"{_iso(birth_date)}T00:00:00",
            site_id,
        )
    )
    start = scan_dates[0] - np.timedelta64(int(rng.integers(730, 2190)), "D")
    end = max(scan_dates[-1], diagnosis_date) + np.timedelta64(int(rng.integers(120, 900)), "D")
    years = float((end - start) / np.timedelta64(365, "D"))
    rate_per_year = 2.5 * np.exp(0.25 * row[CARDIO] + 0.2 * row[S] + 0.2 * row[H])
    n_visits = int(rng.poisson(rate_per_year * years))
    span = int((end - start) / np.timedelta64(1, "D"))
    routine = sorted(start + rng.integers(0, span, n_visits).astype("timedelta64[D]"))
    visits = sorted([*routine, *scan_dates, diagnosis_date])
    kinds = ["OP"] * len(visits)
    for i, day in enumerate(visits):
        if day in scan_dates or day == diagnosis_date:
            kinds[i] = "OP"
        elif rng.random() < 0.08:
            kinds[i] = "IP" if rng.random() < 0.5 else "ER"
        out["visit_occurrence"].append((person_id, f"{person_id}-V{i:04d}", kinds[i], _iso(day)))

    def record(
        table: str,
        code: str,
        day: np.datetime64,
        value: float | None = None,
        text: str = "",
        unit: str = "",
    ) -> None:
        iso = _iso(day)
        if table == "condition":
            out["condition_occurrence"].append((person_id, code, iso))
        elif table == "observation":
            out["observation"].append((person_id, code, iso, value, text))
        elif table == "measurement":
            out["measurement"].append((person_id, code, iso, value, unit))
        else:
            out["drug_exposure"].append((person_id, code, iso))

    # latent-driven vocabulary, one vectorised draw per (visit, code)
    latents = {k: float(row[k]) for k in (S, H, CARDIO, MSK, PSY, GI)}
    # undocumented lung damage: respiratory codes and inhalers at their base rates (never
    # worked up, never treated), no spirometry, no COPD or emphysema diagnosis
    lung_documented = bool(row.get("lung_damage_documented", 1))
    coded = latents if lung_documented else {**latents, S: 0.0}
    base = np.array([c.base_rate * practice.rate(c.code) for c in VOCABULARY])
    drive = np.array([sum(w * coded[k] for k, w in c.drivers.items()) for c in VOCABULARY])
    p = np.clip(base * np.exp(drive), 0.0, 0.9)
    fires = rng.random((len(visits), len(VOCABULARY))) < p[None, :]
    noise = rng.standard_normal((len(visits), len(VOCABULARY)))
    for v, day in enumerate(visits):
        for c_idx in np.nonzero(fires[v])[0]:
            spec = VOCABULARY[c_idx]
            if not lung_documented and S in spec.value_drivers:
                continue  # spirometry is done for the patients whose damage was noticed
            if spec.table == "measurement":
                shift = sum(w * latents[k] for k, w in spec.value_drivers.items())
                value = max(0.0, spec.value_mean + shift + spec.value_sd * noise[v, c_idx])
                record("measurement", spec.code, day, round(value, 2), unit=spec.unit)
            else:
                record(spec.table, spec.code, day)

    # smoking status, pack-years, chronic lung disease (shared cause, EHR view)
    s = latents[S]
    status = "current" if row["current_smoker"] else ("former" if row["ever_smoker"] else "never")
    documented = bool(row.get("smoking_documented", 1))  # else: no smoking code ever written
    has_copd = lung_documented & (rng.random() < 1.0 / (1.0 + np.exp(1.2 - 1.5 * s)))
    has_emph = lung_documented & (rng.random() < 1.0 / (1.0 + np.exp(2.0 - 1.8 * s)))
    copd_code = "J44.1" if rng.random() < 0.3 else "J44.9"
    emph_code = "J43.2" if rng.random() < 0.4 else "J43.9"
    onset_copd = start + np.timedelta64(int(rng.integers(-1095, span)), "D")
    onset_emph = start + np.timedelta64(int(rng.integers(-1095, span)), "D")
    prior_code = PRIOR_CANCER_CODES[int(rng.integers(len(PRIOR_CANCER_CODES)))]
    for day in visits:
        u = rng.random(8)
        if documented and status == "current" and u[0] < 0.45 * practice.rate("F17.210"):
            record(
                "condition" if u[1] < 0.7 else "observation",
                "F17.210",
                day,
                text="current every day smoker",
            )
        if documented and status == "former" and u[0] < 0.4 * practice.rate("Z87.891"):
            record(
                "condition" if u[1] < 0.7 else "observation", "Z87.891", day, text="former smoker"
            )
        if documented and u[2] < 0.2:
            record("observation", "72166-2", day, text=f"{status} smoker")
        if documented and status != "never" and u[3] < 0.15 * practice.rate("401201003"):
            noisy = max(1.0, round(float(row["pack_years"]) + rng.normal(0.0, 3.0)))
            record("observation", "401201003", day, value=noisy, text="pack-years")
        if has_copd and day >= onset_copd and u[4] < 0.5 * practice.rate(copd_code):
            record("condition", copd_code, day)
        if has_emph and day >= onset_emph and u[5] < 0.4 * practice.rate(emph_code):
            record("condition", emph_code, day)
        if row["family_history"] and u[6] < 0.2:
            record(
                "condition" if u[1] < 0.5 else "observation",
                "Z80.1",
                day,
                text="family history of lung cancer",
            )
        if row["prior_cancer"] and u[7] < 0.3:
            record("condition", prior_code, day)

    # the nodule work-up itself, and what follows the diagnosis (leaks the label if misused)
    for day in scan_dates:
        record("condition", "R91.1", day)
    if row["malignant"]:
        cancer_code = LUNG_CANCER_CODES[int(rng.integers(len(LUNG_CANCER_CODES)))]
        for day in visits:
            if day >= diagnosis_date:
                record("condition", cancer_code, day)
                if rng.random() < 0.5:
                    record("drug", CHEMO_DRUGS[int(rng.integers(len(CHEMO_DRUGS)))], day)
                    record("condition", "Z51.11", day)
    else:
        record("condition", "R91.8", diagnosis_date)
    return out
