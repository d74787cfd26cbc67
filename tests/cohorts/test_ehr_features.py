"""EHR features without Feast: OMOP validation rules, covariates, snapshots, signatures."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cohorts.ehr import (
    CLINICAL_HISTORY,
    CLINICAL_SIGNATURES,
    DEMOGRAPHICS,
    ClinicalSignatures,
    OmopFormatError,
    add_age_at_scan,
    birth_reference_days,
    build_feature_tables,
    ehr_feature_names,
    fit_signatures,
    read_omop,
)
from cohorts.ehr.features import age_years, scan_day_number, scan_timestamp
from cohorts.ehr.intensities import code_intensities
from cohorts.ehr.snapshots import snapshot_index
from cohorts.privacy import date_shift_days, pseudonymise

KEY = b"test-key"
AS_OF = dt.date(2024, 1, 1)
EVENT_HEADERS = {
    "condition_occurrence": "person_id,condition_source_value,condition_start_date",
    "observation": "person_id,observation_source_value,observation_date,value_as_number,value_as_string",
    "measurement": "person_id,measurement_source_value,measurement_date,value_as_number,unit_source_value",
    "drug_exposure": "person_id,drug_source_value,drug_exposure_start_date",
}
PERSON_HEADER = "person_id,gender_source_value,year_of_birth,month_of_birth,day_of_birth,birth_datetime,care_site_id"


def write_ehr(ehr_dir: Path, tables: dict[str, list[str]]) -> Path:
    """Write OMOP CSVs from raw lines (so malformed input stays malformed); absent tables are empty."""
    ehr_dir.mkdir(parents=True, exist_ok=True)
    headers = {"person": PERSON_HEADER, **EVENT_HEADERS}
    for table, header in headers.items():
        lines = [header, *tables.get(table, [])]
        (ehr_dir / f"{table}.csv").write_text("\n".join(lines) + "\n")
    return ehr_dir


def random_ehr(ehr_dir: Path, n_persons: int, seed: int, codes: list[str]) -> Path:
    """A small random cohort whose condition codes are drawn from ``codes``."""
    rng = np.random.default_rng(seed)
    persons = [
        f"{seed}-{i},{'F' if i % 2 else 'M'},{1940 + i % 30},6,15,,1" for i in range(n_persons)
    ]
    conditions, drugs = [], []
    for _ in range(n_persons * 12):
        pid = f"{seed}-{rng.integers(n_persons)}"
        day = dt.date(2012, 1, 1) + dt.timedelta(days=int(rng.integers(0, 3000)))
        conditions.append(f"{pid},{rng.choice(codes)},{day.isoformat()}")
        if rng.random() < 0.5:
            drugs.append(f"{pid},{rng.choice(['197361', '1191', '36567'])},{day.isoformat()}")
    return write_ehr(
        ehr_dir, {"person": persons, "condition_occurrence": conditions, "drug_exposure": drugs}
    )


ARCHIVE_CODES = ["J44.9", "J43.1", "F17.210", "Z87.891", "E11.9", "I10", "Z85.3", "R91.1"]


def test_bad_input_rules_drop_with_counts(tmp_path: Path) -> None:
    ehr = write_ehr(
        tmp_path / "ehr",
        {
            "person": [
                "A,F,1950,3,10,,1",
                "A,M,1951,1,1,,1",  # repeated id: first kept
                ",F,1950,1,1,,1",  # no id
                "B,X,1960,1,1,,1",  # unknown sex: kept with NaN
                "C,M,,1,1,,1",  # no year of birth: dropped with events
                "D,M,nineteen,1,1,,1",  # not a year
            ],
            "condition_occurrence": [
                "A,J44.9,2015-02-01",
                "A,J44.9,2015-02-01",  # duplicate
                "A,J43.1,2030-01-01",  # after as_of
                "A,J43.1,1950-03-01",  # before birth (born 1950-03-10)
                "A,Z85.3,2016-05-05T23:30:00",  # naive timestamp -> UTC day
                "A,Z85.3,2016-05-05T23:30:00-05:00",  # zoned -> UTC 2016-05-06
                "A,,2015-01-01",  # empty code
                "A,lung cancer,2015-01-01",  # not ICD-10-CM
                "A,I10,yesterday",  # unreadable date
                "B,I10,2017-01-01",
                "C,I10,2017-01-01",  # person dropped
                "Z,I10,2017-01-01",  # not in person table
            ],
            "observation": ["A,401201003,2016-01-01,thirty,"],  # bad value: kept, NaN
            "measurement": ["A,2160-0,2016-01-01,1.1,mg/dL", "A,GLUCOSE,2016-01-01,5,mmol/L"],
            "drug_exposure": ["B,197361,2017-01-01"],
        },
    )
    omop = read_omop(ehr, as_of=AS_OF)
    q = omop.quality.to_dict()
    assert q["persons_read"] == 6
    assert q["missing_person_id"] == 1
    assert q["duplicate_persons"] == 1
    assert q["missing_year_of_birth"] == 2
    assert q["missing_sex"] == 1
    assert q["persons_kept"] == 2
    assert omop.person.set_index("person_id").loc["A", "sex_female"] == 1.0
    assert np.isnan(omop.person.set_index("person_id").loc["B", "sex_female"])
    assert q["events_read"] == 16
    assert q["bad_dates"] == 1
    assert q["naive_timestamps"] == 1
    assert q["zoned_timestamps"] == 1
    assert q["empty_codes"] == 1
    assert q["unknown_codes"] == 2
    assert set(q["unknown_code_examples"]) == {"LUNG CANCER", "GLUCOSE"}
    assert q["orphan_events"] == 2
    assert q["future_events"] == 1
    assert q["events_before_birth"] == 1
    assert q["duplicate_events"] == 1
    assert q["bad_values"] == 1
    assert q["events_kept"] == 7 == len(omop.events)
    cancer_days = omop.events.loc[omop.events["code"] == "Z85.3", "date"]
    assert sorted(cancer_days.dt.date) == [dt.date(2016, 5, 5), dt.date(2016, 5, 6)]
    assert omop.events["date"].dt.tz is None
    pack = omop.events.loc[omop.events["code"] == "401201003", "value"]
    assert pack.isna().all()


def test_structurally_broken_tables_name_file_and_column(tmp_path: Path) -> None:
    ehr = write_ehr(tmp_path / "ehr", {"person": ["A,F,1950,1,1,,1"]})
    (ehr / "measurement.csv").write_text("person_id,measurement_date\nA,2015-01-01\n")
    with pytest.raises(OmopFormatError, match=r"measurement\.csv.*measurement_source_value"):
        read_omop(ehr, as_of=AS_OF)
    (ehr / "measurement.csv").unlink()
    with pytest.raises(OmopFormatError, match=r"measurement\.csv: file not found"):
        read_omop(ehr, as_of=AS_OF)


def test_covariates_follow_documented_rules(tmp_path: Path) -> None:
    ehr = write_ehr(
        tmp_path / "ehr",
        {
            "person": ["A,F,1950,1,1,,1"],
            "condition_occurrence": [
                "A,F17.210,2010-01-01",
                "A,J44.1,2011-01-01",
                "A,Z87.891,2012-01-01",  # quit: former, no longer current
                "A,F17.210,2013-01-01",
                "A,Z87.891,2013-01-01",  # same-day tie: current wins
            ],
            "observation": ["A,401201003,2011-06-01,30,", "A,401201003,2012-06-01,35,"],
        },
    )
    lookback = 365
    tables = build_feature_tables(
        ehr, "internal", KEY, _fitted_dummy(), lookback, as_of=AS_OF, date_shift_max_days=0
    ).tables
    hist = tables[CLINICAL_HISTORY].set_index(tables[CLINICAL_HISTORY]["event_timestamp"].dt.date)
    assert hist.loc[dt.date(2010, 1, 1), ["smoking_current", "smoking_former"]].tolist() == [1, 0]
    assert hist.loc[dt.date(2010, 1, 1), ["copd", "pack_years"]].tolist() == [0, 0]
    assert hist.loc[dt.date(2011, 6, 1), ["copd", "pack_years"]].tolist() == [1, 30]
    assert hist.loc[dt.date(2012, 1, 1), ["smoking_current", "smoking_former"]].tolist() == [0, 1]
    assert hist.loc[dt.date(2013, 1, 1), ["smoking_current", "smoking_former"]].tolist() == [1, 0]
    assert hist.loc[dt.date(2013, 1, 1), "pack_years"] == 35
    # window: 2012-06-01 and 2013-01-01 lie in [2012-01-02, 2013-01-01] (2012-01-01 does not)
    assert hist.loc[dt.date(2013, 1, 1), "n_visits_lookback"] == 2
    # the last event leaves the window on 2013-01-01 + 366 days: a snapshot with no visits
    exit_day = dt.date(2013, 1, 1) + dt.timedelta(days=lookback + 1)
    assert hist.loc[exit_day, "n_visits_lookback"] == 0
    assert hist.loc[exit_day, "copd"] == 1  # ever-flags do not expire
    assert hist.index.max() == exit_day
    assert (tables[CLINICAL_HISTORY]["patient_id"] == pseudonymise("A", KEY, "patient")).all()
    demo = tables[DEMOGRAPHICS].iloc[0]
    assert demo["birth_reference_day"] == (dt.date(1950, 7, 1) - dt.date(1970, 1, 1)).days
    assert demo["sex_female"] == 1.0
    assert {"birth_date", "year_of_birth"}.isdisjoint(tables[DEMOGRAPHICS].columns)


def _fitted_dummy() -> ClinicalSignatures:
    """A 1-component signature model fitted on a tiny fixed matrix (covariate tests only)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.random((20, 3)), columns=["icd10:J44", "icd10:F17", "icd10:Z87"])
    return ClinicalSignatures(1).fit(frame)


def test_snapshot_days_are_event_days_and_window_exits(tmp_path: Path) -> None:
    events = pd.DataFrame(
        {
            "person_id": ["A", "A", "B"],
            "date": pd.to_datetime(["2020-01-01", "2020-01-05", "2020-01-03"]),
            "domain": "condition",
            "code": ["I10", "I10", "E11.9"],
            "value": np.nan,
        }
    )
    snaps = snapshot_index(events, lookback_days=10, as_of=pd.Timestamp("2020-01-14"))
    days = {(p, d.day) for p, d in zip(snaps["person_id"], snaps["date"], strict=True)}
    assert days == {("A", 1), ("A", 5), ("A", 12), ("B", 3), ("B", 14)}  # A's 2nd exit > as_of
    counts = code_intensities(snaps, events, lookback_days=10)
    assert counts.columns.tolist() == ["icd10:E11", "icd10:I10"]
    assert np.expm1(counts["icd10:I10"]).round().tolist() == [1, 2, 1, 0, 0]
    assert np.expm1(counts["icd10:E11"]).round().tolist() == [0, 0, 0, 1, 0]


def test_signatures_fit_on_archive_apply_unchanged(tmp_path: Path) -> None:
    archive = random_ehr(tmp_path / "archive", 40, seed=1, codes=ARCHIVE_CODES)
    internal = random_ehr(tmp_path / "internal", 10, seed=2, codes=[*ARCHIVE_CODES, "C34.1"])
    signatures = fit_signatures(archive, n_components=4, lookback_days=730, as_of=AS_OF)
    assert "icd10:C34" not in signatures.vocabulary
    assert len(signatures.vocabulary) == len(ARCHIVE_CODES) + 3  # 8 ICD categories + 3 drugs

    path = tmp_path / "signatures.npz"
    signatures.save(path)
    loaded = ClinicalSignatures.load(path)
    assert loaded.vocabulary == signatures.vocabulary
    np.testing.assert_array_equal(loaded.unmixing_, signatures.unmixing_)
    np.testing.assert_array_equal(loaded.mean_, signatures.mean_)
    with np.load(path, allow_pickle=False) as data:  # loads without pickle
        assert data["unmixing"].shape == (4, len(signatures.vocabulary))

    before = loaded.unmixing_.copy()
    built = build_feature_tables(
        internal, "internal", KEY, loaded, 730, as_of=AS_OF, date_shift_max_days=0
    )
    np.testing.assert_array_equal(loaded.unmixing_, before)  # applied, not refitted
    assert built.quality["unseen_code_groups"] == 1
    assert built.quality["unseen_code_entries"] > 0

    # the signatures are exactly unmixing @ (intensity - archive mean), C34 ignored
    omop = read_omop(internal, as_of=AS_OF)
    snaps = snapshot_index(omop.events, 730, omop.as_of)
    intensity = code_intensities(snaps, omop.events, 730)
    aligned = intensity.reindex(columns=loaded.vocabulary, fill_value=0.0).to_numpy()
    expected = (aligned - loaded.mean_) @ loaded.unmixing_.T
    table = built.tables[CLINICAL_SIGNATURES]
    assert table.columns.tolist()[3:] == [f"sig_{k:02d}" for k in range(4)]
    np.testing.assert_allclose(table.iloc[:, 3:].to_numpy(), expected, rtol=1e-5, atol=1e-5)

    refit = fit_signatures(archive, n_components=4, lookback_days=730, as_of=AS_OF)
    np.testing.assert_array_equal(refit.unmixing_, signatures.unmixing_)  # fixed seed


def test_feature_names_and_age_at_scan() -> None:
    names = ehr_feature_names(2)
    assert names[:2] == ["sex_female", "age_at_scan_years"]
    assert names[-2:] == ["sig_00", "sig_01"]
    assert "year_of_birth" not in names and len(names) == len(set(names))
    frame = pd.DataFrame(
        {
            "event_timestamp": pd.to_datetime(["2020-07-02", "2020-01-01"]).tz_localize("UTC"),
            "birth_reference_day": birth_reference_days(pd.Series([1950, 1960])),
        }
    )
    aged = add_age_at_scan(frame)
    np.testing.assert_allclose(aged["age_at_scan_years"], [70.0, 59.5], atol=0.01)
    # both dates moved by the same shift: the same age, to the bit
    shifted = frame.assign(
        event_timestamp=frame["event_timestamp"] - pd.Timedelta(days=200),
        birth_reference_day=birth_reference_days(pd.Series([1950, 1960]), -200),
    )
    np.testing.assert_array_equal(
        add_age_at_scan(shifted)["age_at_scan_years"], aged["age_at_scan_years"]
    )


def test_date_shift_moves_every_timestamp_of_a_patient_and_no_value(tmp_path: Path) -> None:
    """CT and EHR shift alike (cohorts/privacy.py): the EHR tables of a shifted run are the
    unshifted tables with each patient's timestamps moved by date_shift_days, nothing else."""
    ehr = write_ehr(
        tmp_path / "ehr",
        {
            "person": ["A,F,1950,,,,1", "B,M,1961,,,,1"],
            "condition_occurrence": ["A,J44.9,2011-06-01", "B,F17.210,2012-03-04"],
            "observation": ["A,401201003,2011-06-01,30", "B,Z87.891,2014-05-05,"],
        },
    )
    signatures = _fitted_dummy()
    plain = build_feature_tables(
        ehr, "internal", KEY, signatures, 365, as_of=AS_OF, date_shift_max_days=0
    )
    moved = build_feature_tables(
        ehr, "internal", KEY, signatures, 365, as_of=AS_OF, date_shift_max_days=365
    )
    shift = {pseudonymise(p, KEY, "patient"): date_shift_days(p, KEY, 365) for p in ("A", "B")}
    assert len(set(shift.values())) == 2 and all(-365 <= d <= -1 for d in shift.values())
    for view in (DEMOGRAPHICS, CLINICAL_HISTORY):
        a, b = plain.tables[view], moved.tables[view]
        days = pd.to_timedelta(a["patient_id"].map(shift), unit="D")
        pd.testing.assert_series_equal(
            b["event_timestamp"], a["event_timestamp"] + days, check_names=False
        )
        values = [c for c in a.columns if c not in ("event_timestamp", "birth_reference_day")]
        pd.testing.assert_frame_equal(a[values], b[values])
    births = moved.tables[DEMOGRAPHICS]["birth_reference_day"]
    expected = plain.tables[DEMOGRAPHICS]["birth_reference_day"] + plain.tables[DEMOGRAPHICS][
        "patient_id"
    ].map(shift)
    pd.testing.assert_series_equal(births, expected, check_names=False)


def test_person_without_events_has_demographics_only(tmp_path: Path) -> None:
    ehr = write_ehr(tmp_path / "ehr", {"person": ["Q,M,1949,1,1,,1"]})
    built = build_feature_tables(
        ehr, "external", KEY, _fitted_dummy(), 365, as_of=AS_OF, date_shift_max_days=0
    )
    assert len(built.tables[DEMOGRAPHICS]) == 1
    for view in (CLINICAL_HISTORY, CLINICAL_SIGNATURES):
        table = built.tables[view]
        assert table.empty and str(table["event_timestamp"].dt.tz) == "UTC"
    assert built.quality["snapshots"] == 0


def test_one_scan_age_is_the_tables_age_to_the_bit() -> None:
    """Serving's one-scan age (``age_years`` at ``scan_day_number``) equals what
    ``add_age_at_scan`` gives the same scan in a table, float32 bit for bit, NaN birth
    included: training and prediction share one age rule."""
    rng = np.random.default_rng(0)
    days = [dt.date(1990, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 15000, 200)]
    births = birth_reference_days(
        pd.Series(rng.integers(1920, 1990, 200)), pd.Series(rng.integers(-365, 1, 200))
    ).astype("float64")
    births.iloc[:3] = np.nan
    table = add_age_at_scan(
        pd.DataFrame(
            {"event_timestamp": scan_timestamp(pd.Series(days)), "birth_reference_day": births}
        )
    )["age_at_scan_years"].to_numpy()
    one = np.array([age_years(scan_day_number(d), b) for d, b in zip(days, births, strict=True)])
    assert one.dtype == np.float32
    np.testing.assert_array_equal(one, table)
    assert np.isnan(one[:3]).all() and not np.isnan(one[3:]).any()
