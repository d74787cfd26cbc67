"""Raw archive and curated CT cohorts."""

import dagster as dg

from cohorts.dicom import CurationConfig, curate_cohort
from cohorts.privacy import PrivacyConfig
from cohorts.synthetic import SynthConfig, generate_archive, preset_config
from orchestration.configs import config_class
from orchestration.dvc_versions import dvc_metadata
from orchestration.metadata import flat_numbers, markdown_table
from orchestration.params import section
from orchestration.resources import COHORTS, PipelinePaths, PrivacyResource

_SYNTH = section("synth")
_CURATE = section("curate")


class _RawArchive(dg.Config):
    """The synthetic environment's knobs (params.yaml `synth`; fields built from SynthConfig,
    orchestration/configs.py). A cohort size left null keeps the preset's."""

    def domain(self) -> SynthConfig:
        values = {k: v for k, v in self.model_dump().items() if v is not None}
        return preset_config(values.pop("preset"), **values)


RawArchiveConfig = config_class("RawArchiveConfig", SynthConfig, _SYNTH, _RawArchive)


@dg.asset(
    pool="raw_archive",
    group_name="data",
    kinds={"python", "dicom"},
    code_version="1",
    description="A hospital-style export (DICOM CT, LUNA16 annotations, OMOP EHR, labels) "
    "for the archive, internal and external cohorts, from the seeded synthetic environment.",
)
def raw_archive(
    context: dg.AssetExecutionContext, config: RawArchiveConfig, paths: PipelinePaths
) -> dg.MaterializeResult:
    summary = generate_archive(paths.data / "raw", config.domain(), progress=True)
    context.log.info(f"raw archive written to {paths.data / 'raw'}: {summary}")
    return dg.MaterializeResult(
        metadata={**dvc_metadata(paths.data / "raw"), **flat_numbers(summary)},
        data_version=dg.DataVersion(
            "-".join(str(v) for v in config.model_dump(exclude={"workers"}).values())
        ),
    )


class _CurationRun(dg.Config):
    """Curation knobs (params.yaml `curate`; fields built from CurationConfig,
    orchestration/configs.py). The pseudonym key is not one: it never enters run config (the
    launchpad and run history would show it); cohorts/privacy.py resolves it. The crop spacing
    set here is the only one: it travels with the crops to every consumer."""

    def domain(self, privacy: PrivacyConfig) -> CurationConfig:
        """The domain config; the date shift is the run's `privacy` resource, shared with the
        EHR features (not a field here: CT and EHR must shift alike)."""
        return CurationConfig.from_params(self.model_dump(), privacy)


CurationRunConfig = config_class("CurationRunConfig", CurationConfig, _CURATE, _CurationRun)


@dg.asset(
    pool="curated_scans",
    group_name="data",
    deps=[raw_archive],
    kinds={"python", "dicom", "parquet"},
    code_version="2",
    description="Per cohort: the diagnostic axial CT series in HU, quarantined series with reasons, "
    "nodule-centred crops and pseudonymised labels (no PHI).",
)
def curated_scans(
    context: dg.AssetExecutionContext,
    config: CurationRunConfig,
    paths: PipelinePaths,
    privacy: PrivacyResource,
) -> dg.MaterializeResult:
    rows, numbers, fingerprints = [], {}, {}
    curation = config.domain(privacy.domain())
    for cohort in COHORTS:
        summary = curate_cohort(paths.raw(cohort), paths.curated(cohort), curation)
        stats = summary.to_dict()
        numbers[cohort] = stats
        fingerprints[f"key_fingerprint/{cohort}"] = summary.key_fingerprint
        rows.append(
            {
                "cohort": cohort,
                "accepted": stats["accepted"],
                "quarantined": sum(stats["quarantined"].values()),
                "nodules": stats["nodules"],
                "reasons": ", ".join(f"{k}: {v}" for k, v in sorted(stats["quarantined"].items())),
            }
        )
        context.log.info(f"curated {cohort}: {stats}")
    return dg.MaterializeResult(
        metadata={
            "cohorts": markdown_table(rows),
            **dvc_metadata(paths.data / "curated"),
            **fingerprints,
            "date_shift_max_days": curation.date_shift_max_days,
            **flat_numbers(numbers),
        },
    )
