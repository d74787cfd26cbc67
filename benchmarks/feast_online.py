"""Feast online retrieval for one patient against a direct SQLite read of the same rows.

Three ways, alternating call by call for the same patient: ``online_feature_rows`` (what
serving calls: the feature service fetched once per open store, values read back as dicts),
Feast's plain usage (``get_feature_service`` through the registry and ``to_df`` on every call,
what ``online_features`` did before issue 21), and the SQLite floor.

The store is built the way the ehr_features asset builds it (signatures fitted on the
archive, tables per cohort, sources written, definitions applied, materialised) on a small
synthetic archive in a temporary folder. The floor opens the online store's SQLite file and
selects the patient's rows from every view of the serving service, decoding the values.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from pathlib import Path

from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from benchmarks.archives import BASE_ARCHIVE_PATIENTS, make_archive
from benchmarks.common import BenchResult, BenchSize, percentiles_ms
from cohorts.ehr.features import build_feature_tables, combine_cohorts, fit_signatures
from cohorts.synthetic.config import COHORTS
from feature_repo import store as feast_store
from feature_repo.definitions import SERVING_SERVICE
from orchestration.params import privacy_config

COMMAND = "python -m benchmarks.run --only feast_online"
REPO_DIR = Path(__file__).resolve().parents[1] / "feature_repo"
N_SIGNATURES = 4
LOOKBACK_DAYS = 1825
TTL_DAYS = 3650
KEY = b"benchmark-key"


def build_store(root: Path, n_archive: int):  # -> (FeatureStore, data_dir, patient ids)
    """Synthetic raw cohorts -> Feast store under root/data, materialised online."""
    make_archive(root / "raw", n_archive=n_archive, n_internal=2, n_external=2)
    signatures = fit_signatures(root / "raw" / "archive" / "ehr", N_SIGNATURES, LOOKBACK_DAYS)
    parts = [
        build_feature_tables(
            root / "raw" / c / "ehr",
            c,
            KEY,
            signatures,
            LOOKBACK_DAYS,
            date_shift_max_days=privacy_config().date_shift_max_days,  # the pipeline's
        )
        for c in COHORTS
    ]
    tables = combine_cohorts(parts)
    data_dir = root / "data"
    feast_store.write_sources(tables, data_dir)
    store = feast_store.open_store(REPO_DIR, data_dir)
    feast_store.apply_definitions(store, data_dir, TTL_DAYS, N_SIGNATURES)
    feast_store.materialize(store, dt.datetime.now(dt.UTC))
    ids = sorted(set(next(iter(tables.values()))["patient_id"]))
    return store, data_dir, ids


def sqlite_read(db: sqlite3.Connection, tables: list[str], entity_key: bytes) -> dict[str, float]:
    """The floor: the patient's feature rows from each view's table, values decoded."""
    out: dict[str, float] = {}
    for table in tables:
        rows = db.execute(
            f'SELECT feature_name, value FROM "{table}" WHERE entity_key = ?', (entity_key,)
        ).fetchall()
        for name, blob in rows:
            value = Value.FromString(blob)
            kind = value.WhichOneof("val")
            out[name] = getattr(value, kind) if kind else float("nan")
    return out


def run(size: BenchSize, work_dir: Path) -> BenchResult:
    result = BenchResult("feast_online", "Feast online retrieval vs direct SQLite", COMMAND)
    root = work_dir / "feast"
    store, data_dir, ids = build_store(root, min(size.archive_patients, BASE_ARCHIVE_PATIENTS))
    patient = ids[0]
    service = store.get_feature_service(SERVING_SERVICE)
    views = [p.name for p in service.feature_view_projections]
    tables = [f"{feast_store.PROJECT}_{v}" for v in views]
    entity_key = serialize_entity_key(
        EntityKey(join_keys=["patient_id"], entity_values=[Value(string_val=patient)]),
        entity_key_serialization_version=3,
    )
    db = sqlite3.connect(feast_store.feast_dir(data_dir) / "online.db")
    direct = sqlite_read(db, tables, entity_key)
    online = feast_store.online_features(store, [patient]).iloc[0].to_dict()
    if not direct:
        raise RuntimeError(f"no online rows for {patient} in {tables}")
    shared = sorted(set(direct) & set(online))
    calls = 50 if size.name != "full" else 300
    tuned = feast_store.online_feature_rows(store, [patient])[patient]
    if sorted(k for k, v in tuned.items() if v is not None) != sorted(
        k for k, v in online.items() if k != "patient_id" and v == v
    ):
        raise RuntimeError("online_feature_rows and the DataFrame read disagree")

    def plain() -> object:  # Feast as its docs show it: resolve the service, build a frame
        service = store.get_feature_service(SERVING_SERVICE)
        rows = [{"patient_id": patient}]
        return store.get_online_features(features=service, entity_rows=rows).to_df()

    cases = {
        "feast online_feature_rows (serving)": lambda: feast_store.online_feature_rows(
            store, [patient]
        ),
        "feast, service resolved per call + to_df": plain,
        "direct SQLite read": lambda: sqlite_read(db, tables, entity_key),
    }
    for _ in range(10):  # warm-up: registry cache, connections
        for case in cases.values():
            case()
    seconds: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(calls):
        for label, case in cases.items():
            started = time.perf_counter()
            case()
            seconds[label].append(time.perf_counter() - started)
    db.close()
    p50 = {}
    for label, values in seconds.items():
        pct = percentiles_ms(values)
        p50[label] = pct["p50_ms"]
        result.add(f"{label}, one patient", "ms", [s * 1e3 for s in values], **pct)
    serving = "feast online_feature_rows (serving)"
    result.ratio(
        "serving read p50 / SQLite p50",
        p50[serving] / p50["direct SQLite read"],
        "what the Feast client costs over reading the same rows from its SQLite file",
    )
    result.ratio(
        "plain Feast p50 / serving read p50",
        p50["feast, service resolved per call + to_df"] / p50[serving],
        "what resolving the service and building a DataFrame per call cost",
    )
    result.config = {
        "views": views,
        "features_read_directly": len(direct),
        "features_in_both": len(shared),
        "calls": calls,
        "patients_in_store": len(ids),
    }
    result.notes.append("The three reads alternate call by call for the same patient.")
    return result
