"""EHR features in the Feast store, and the point-in-time training examples built from them."""

import datetime as dt

import dagster as dg
import pandas as pd

from cohorts.batches import (
    MANIFESTS,
    BatchSelection,
    cohort_members,
    crop_shape,
    manifest,
    manifest_summary,
    select_batches,
)
from cohorts.ehr.features import (
    add_age_at_scan,
    build_feature_tables,
    combine_cohorts,
    ehr_feature_names,
    fit_signatures,
    scan_timestamp,
)
from cohorts.examples import assemble_examples, scan_entities
from cohorts.files import atomic_write_json
from cohorts.privacy import (
    KEY_RECORD,
    check_same_key,
    curated_key,
    key_record,
    read_key_record,
)
from feature_repo import store as feast_store
from orchestration.assets.data import curated_scans, raw_archive
from orchestration.dvc_versions import dvc_metadata
from orchestration.metadata import flat_numbers, markdown_table
from orchestration.params import section
from orchestration.resources import COHORTS, FeatureStoreResource, PipelinePaths, PrivacyResource

_FEATURES = section("features")
_EXAMPLES = section("examples")
_RETRAINING = section("retraining")


class FeaturesConfig(dg.Config):
    """EHR feature knobs (params.yaml `features`)."""

    n_signatures: int = _FEATURES["n_signatures"]
    lookback_days: int = _FEATURES["lookback_days"]
    ttl_days: int = _FEATURES["ttl_days"]


@dg.asset(
    pool="ehr_features",
    group_name="features",
    # curated_scans: its recorded key decision is the one the EHR follows (cohorts/privacy.py)
    deps=[raw_archive, curated_scans],
    kinds={"python", "feast", "sqlite"},
    retry_policy=dg.RetryPolicy(max_retries=3, delay=10.0, backoff=dg.Backoff.EXPONENTIAL),
    code_version="2",
    description="Latent clinical signatures (FastICA, fitted on the unlabeled archive only) and "
    "clinical covariates per EHR snapshot, applied to Feast and materialised online.",
)
def ehr_features(
    context: dg.AssetExecutionContext,
    config: FeaturesConfig,
    paths: PipelinePaths,
    feature_store: FeatureStoreResource,
    privacy: PrivacyResource,
) -> dg.MaterializeResult:
    signatures = fit_signatures(
        paths.raw("archive") / "ehr", config.n_signatures, config.lookback_days
    )
    signatures_path = paths.artifacts / "signatures" / "signatures.npz"
    signatures.save(signatures_path)
    # the key and date shift curation gave the cohort's CT, so CT and EHR still link; whether
    # the demo key may be used is curation's recorded decision, never the marker file alone
    curated = {cohort: read_key_record(paths.curated(cohort)) for cohort in COHORTS}
    keys = {c: curated_key(r, f"curated_scans/{c}") for c, r in curated.items()}
    synthetic = {c: r.get("synthetic") is True for c, r in curated.items()}
    shift = privacy.domain().date_shift_max_days
    records = {c: key_record(k, shift, synthetic[c]) for c, k in keys.items()}
    for cohort in COHORTS:  # a date shift changed since curation: refused before Feast is written
        check_same_key(cohort, curated[cohort], records[cohort])
    parts = {
        cohort: build_feature_tables(
            paths.raw(cohort) / "ehr",
            cohort,
            keys[cohort],
            signatures,
            config.lookback_days,
            date_shift_max_days=shift,
        )
        for cohort in COHORTS
    }
    tables = combine_cohorts(list(parts.values()))
    feast_store.write_sources(tables, paths.data)
    atomic_write_json(paths.data / "feast" / KEY_RECORD, records)
    store = feature_store.open()
    feast_store.apply_definitions(store, paths.data, config.ttl_days, config.n_signatures)
    views = feast_store.materialize(store, dt.datetime.now(dt.UTC))
    context.log.info(f"online store: materialised {len(views)} feature views {views}")
    quality = {cohort: part.quality for cohort, part in parts.items()}
    context.log.info(f"EHR quality by cohort: {quality}")
    rows = [
        {"view": view, "rows": len(table), "patients": int(table["patient_id"].nunique())}
        for view, table in tables.items()
    ]
    return dg.MaterializeResult(
        metadata={
            "views": markdown_table(rows),
            "feast_project": store.project,
            **{f"feast/{k}": v for k, v in feast_store.StoreBackends.from_env().describe().items()},
            "signatures_path": dg.MetadataValue.path(str(signatures_path)),
            **{f"key_fingerprint/{c}": r["key_fingerprint"] for c, r in records.items()},
            "date_shift_max_days": shift,
            **flat_numbers(quality, prefix="quality/"),
        }
    )


class ExamplesConfig(dg.Config):
    """params.yaml `examples` and `retraining.batches` (which arrival batches join)."""

    max_timepoints: int = _EXAMPLES["max_timepoints"]
    n_signatures: int = _FEATURES["n_signatures"]
    batches: list[str] = BatchSelection.from_value(_RETRAINING["batches"]).as_list()

    def selection(self) -> BatchSelection:
        return BatchSelection.from_value(self.batches)


@dg.asset(
    pool="training_examples",
    group_name="features",
    # incoming_batch by key: orchestration/assets/incoming.py imports this module
    deps=[curated_scans, ehr_features, dg.AssetKey("incoming_batch")],
    kinds={"python", "numpy"},
    retry_policy=dg.RetryPolicy(max_retries=3, delay=10.0, backoff=dg.Backoff.EXPONENTIAL),
    code_version="3",
    description="One row per patient: index-nodule crops over time with EHR features as of each "
    "scan (Feast point-in-time join) and labels where the cohort has them. Arrival batches "
    "whose blocking checks passed join the archive (unlabeled) or internal (labeled) cohort; "
    "each cohort's membership manifest is written beside the examples.",
)
def training_examples(
    context: dg.AssetExecutionContext,
    config: ExamplesConfig,
    paths: PipelinePaths,
    feature_store: FeatureStoreResource,
) -> dg.MaterializeResult:
    store = feature_store.open()
    names = ehr_feature_names(config.n_signatures)
    curated_root = paths.data / "curated"
    ehr_keys = read_key_record(paths.data / "feast")
    # how each cohort's ids and dates were made, for every card downstream
    records = {cohort: read_key_record(paths.curated(cohort)) for cohort in COHORTS}
    shapes = {}
    for cohort in COHORTS:
        own = pd.read_parquet(paths.curated(cohort) / "nodules.parquet")
        if len(own):
            shapes[cohort] = crop_shape(own, paths.curated(cohort))
    decisions = select_batches(paths.curated("incoming"), config.selection(), records, shapes)
    for decision in decisions:
        context.log.info(f"arrival batch {decision.batch}: {decision.cohort}, {decision.reason}")
    rows, manifests = [], {}
    for cohort in COHORTS:
        ehr_record = ehr_keys.get(cohort)
        try:
            check_same_key(
                cohort, records[cohort], ehr_record if isinstance(ehr_record, dict) else {}
            )
        except ValueError as error:  # not transient: the retry policy must not rerun it
            raise dg.Failure(str(error), allow_retries=False) from error
        members, nodules, labels = cohort_members(curated_root, cohort, decisions)
        entities = scan_entities(nodules)
        entities["event_timestamp"] = scan_timestamp(entities["study_date"])
        features = feast_store.historical_features(store, entities)
        features = add_age_at_scan(features, "event_timestamp")
        examples = assemble_examples(
            nodules,
            features,
            names,
            curated_root,
            config.max_timepoints,
            labels if len(labels) else None,
        )
        examples.save(paths.examples(cohort))
        manifests[cohort] = manifest(members, nodules, curated_root)
        labeled = examples.label[examples.label >= 0]
        rows.append(
            {
                "cohort": cohort,
                "version": manifests[cohort]["version"],
                "members": len(members),
                "patients": len(examples),
                "scans": int(examples.scan_mask.sum()),
                "crop_spacing_mm": examples.crop_spacing_mm,
                "ehr_coverage": float(examples.ehr_mask[examples.scan_mask].mean()),
                "labeled": len(labeled),
                "prevalence": float(labeled.mean()) if len(labeled) else float("nan"),
            }
        )
    examples_dir = paths.data / "examples"
    atomic_write_json(examples_dir / MANIFESTS, manifests)
    atomic_write_json(examples_dir / "batches.json", [d.to_dict() for d in decisions])
    atomic_write_json(examples_dir / KEY_RECORD, records)
    context.log.info(f"training examples: {rows}")
    batch_rows = [
        {"batch": d.batch, "joins": d.cohort or "kept out", "reason": d.reason} for d in decisions
    ]
    return dg.MaterializeResult(
        metadata={
            "cohorts": markdown_table(rows),
            "arrival_batches": markdown_table(batch_rows)
            if batch_rows
            else dg.MetadataValue.text("no arrival batch curated"),
            "batches_joined": dg.MetadataValue.int(sum(d.cohort is not None for d in decisions)),
            "manifests": dg.MetadataValue.json(manifest_summary(manifests)),
            "ehr_features": dg.MetadataValue.json(names),
            **{f"manifest/{c}": m["version"] for c, m in manifests.items()},
            **{f"key_fingerprint/{c}": r.get("key_fingerprint", "") for c, r in records.items()},
            **dvc_metadata(examples_dir),
            **flat_numbers({r["cohort"]: r for r in rows}),
        },
        data_version=dg.DataVersion("-".join(m["version"] for m in manifests.values())),
    )
