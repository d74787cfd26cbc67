"""New scans arriving after the archive: one dynamic partition per arrival batch.

A hospital drops each export into ``<paths.incoming>/<batch>/`` (a ``dicom/`` folder and a
LUNA16 ``annotations.csv``, written last: its presence marks the batch complete). The
``incoming_batches`` sensor adds the batch as a partition and requests its curation and its
EHR features (from the Feast store the archive's pipeline keeps). Curation runs the
scan-index suite on the batch and records the outcome (``quality.json``): the next
``training_examples`` (the weekly retraining, or a run by hand) takes in every batch whose
checks passed, as params.yaml ``retraining.batches`` says (cohorts/batches.py).
"""

from pathlib import Path

import dagster as dg
import pandas as pd

from cohorts.batches import write_batch_quality
from cohorts.dicom import curate_cohort
from cohorts.ehr.features import add_age_at_scan, scan_timestamp
from cohorts.examples import scan_entities
from cohorts.files import atomic_output
from cohorts.privacy import check_shares_a_key, read_key_record
from cohorts.quality.suites import QualityThresholds, validate_scan_index
from feature_repo import store as feast_store
from orchestration.assets.data import CurationRunConfig
from orchestration.assets.features import ehr_features
from orchestration.metadata import flat_numbers
from orchestration.params import params, resolve_path, section
from orchestration.resources import FeatureStoreResource, PipelinePaths, PrivacyResource

INCOMING_PARTITIONS = dg.DynamicPartitionsDefinition(name="incoming_batches")
COMPLETE_MARKER = "annotations.csv"


class IncomingArchive(dg.ConfigurableResource):
    """The folder new batches land in (params.yaml `paths.incoming`)."""

    incoming_dir: str = section("paths").get("incoming", "data/incoming")

    @property
    def root(self) -> Path:
        return resolve_path(self.incoming_dir)

    def batch(self, name: str) -> Path:
        return self.root / name

    def ready_batches(self) -> list[str]:
        """Batch folders that are complete (dicom/ and the marker present), sorted by name.

        Hidden folders (``.name``) are copies in progress and never count.
        """
        if not self.root.is_dir():
            return []
        ready = []
        for folder in self.root.iterdir():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            if (folder / "dicom").is_dir() and (folder / COMPLETE_MARKER).is_file():
                ready.append(folder.name)
        return sorted(ready)


@dg.asset(
    pool="incoming_batch",
    group_name="incoming",
    partitions_def=INCOMING_PARTITIONS,
    kinds={"python", "dicom", "parquet"},
    code_version="1",
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5.0, backoff=dg.Backoff.EXPONENTIAL),
    description="One arrival batch of new CT scans curated like the archive (HU volumes, "
    "quarantine with reasons, nodule crops, no PHI) into curated/incoming/<batch>/.",
)
def incoming_batch(
    context: dg.AssetExecutionContext,
    config: CurationRunConfig,
    paths: PipelinePaths,
    incoming: IncomingArchive,
    privacy: PrivacyResource,
) -> dg.MaterializeResult:
    batch = context.partition_key
    out_dir = paths.curated("incoming") / batch
    curation = config.domain(privacy.domain())
    summary = curate_cohort(incoming.batch(batch), out_dir, curation, progress=False)
    stats = summary.to_dict()
    context.log.info(f"curated incoming batch {batch}: {stats}")
    # The same blocking suite as the archive's scan index; a failure keeps the batch out of
    # training (not out of the store: its curated files stay for a person to look at).
    quality = validate_scan_index(
        pd.read_parquet(out_dir / "index.parquet"),
        QualityThresholds.from_params(params()),
        f"incoming/{batch}/scan_index",
    )
    write_batch_quality(out_dir, quality.success, quality.failed_names)
    if not quality.success:
        context.log.warning(
            f"batch {batch} failed its blocking checks and will not join training: "
            + "; ".join(quality.failed_names)
        )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(out_dir)),
            "quarantined_total": dg.MetadataValue.int(sum(stats["quarantined"].values())),
            "quality_passed": dg.MetadataValue.bool(quality.success),
            "quality_failed": dg.MetadataValue.json(quality.failed_names),
            **flat_numbers(stats),
        }
    )


@dg.asset(
    pool="incoming_batch_features",
    group_name="incoming",
    partitions_def=INCOMING_PARTITIONS,
    deps=[incoming_batch, ehr_features],
    kinds={"python", "feast", "parquet"},
    code_version="1",
    retry_policy=dg.RetryPolicy(max_retries=3, delay=10.0, backoff=dg.Backoff.EXPONENTIAL),
    description="EHR features for each scan of one arrival batch, from the Feast store "
    "point-in-time as of the study date, in curated/incoming/<batch>/ehr_features.parquet.",
)
def incoming_batch_features(
    context: dg.AssetExecutionContext, paths: PipelinePaths, feature_store: FeatureStoreResource
) -> dg.MaterializeResult:
    folder = paths.curated("incoming") / context.partition_key
    ehr_records = read_key_record(paths.data / "feast")
    try:
        check_shares_a_key(
            f"incoming batch {context.partition_key}",
            read_key_record(folder),
            {c: r for c, r in ehr_records.items() if isinstance(r, dict)},
        )
    except ValueError as error:  # a wrong key stays wrong: no retry (they took 110 s)
        raise dg.Failure(str(error), allow_retries=False) from error
    entities = scan_entities(pd.read_parquet(folder / "nodules.parquet"))
    entities["event_timestamp"] = scan_timestamp(entities["study_date"])
    if len(entities):
        features = feast_store.historical_features(feature_store.open(), entities)
        features = add_age_at_scan(features, "event_timestamp")
    else:  # a batch without nodules has no scan to look features up for
        features = entities
    out = folder / "ehr_features.parquet"
    with atomic_output(out) as tmp:
        features.to_parquet(tmp, index=False)
    names = [c for c in features.columns if c not in entities.columns and c != "age_at_scan_years"]
    covered = (
        features[names].notna().any(axis=1) if names else pd.Series(False, index=features.index)
    )
    context.log.info(f"EHR features for {len(features)} scans of {context.partition_key}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(out)),
            "scans": dg.MetadataValue.int(len(features)),
            "ehr_coverage": dg.MetadataValue.float(float(covered.mean()) if len(covered) else 0.0),
        }
    )
