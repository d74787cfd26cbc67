"""The synthetic instrument's own check (models/instrument.py), on the generator's data only."""

import dagster as dg
import pandas as pd

from cohorts.example_set import ExampleSet, load_examples
from cohorts.files import atomic_write_json
from cohorts.privacy import read_key_record, resolve_key
from cohorts.synthetic.truth import read_truth
from models.encoders import load_encoder
from models.figures import plot_headroom
from models.instrument import (
    InstrumentConfig,
    TooFewPatients,
    check_encoder,
    instrument_markdown,
)
from orchestration.assets.training import jepa_encoder
from orchestration.lineage import ENCODERS, built_on
from orchestration.metadata import flat_numbers, image_markdown
from orchestration.resources import PipelinePaths

INSTRUMENT_JSON = "cause_visibility.json"  # under paths.metrics; read by the evaluation asset
# The cohorts of the generator's site 1 (one causal model and scanner): the unlabeled archive
# and the labeled internal cohort; their models never read the truth labels used here.
SITE_1: tuple[str, ...] = ("archive", "internal")


def site_truth(paths: PipelinePaths) -> tuple[ExampleSet, pd.DataFrame] | None:
    """Site 1's examples (archive + internal) and the generator's truth of their patients, or
    None when the data are not the generator's (real data have no known causes)."""
    # curation's recorded decision (marker file and every series marked), not the marker alone
    if not all(read_key_record(paths.curated(c)).get("synthetic") is True for c in SITE_1):
        return None
    records = read_key_record(paths.data / "examples")
    key = resolve_key(synthetic=True)
    truth = pd.concat(
        [read_truth(paths.raw(c), key, records.get(c, {}).get("key_fingerprint")) for c in SITE_1]
    )
    return ExampleSet.concat([load_examples(paths.examples(c)) for c in SITE_1]), truth


@dg.asset(
    group_name="diagnosis",
    deps=[jepa_encoder],
    kinds={"python"},
    code_version="1",
    pool="cause_visibility",
    description="Generator data only: where each latent cause of the label is visible (EHR, "
    "the crop's HU histogram, the frozen JEPA encoder vs a random one) and how much AUC each "
    "view leaves beyond size and EHR, from the generator's truth on site 1 (archive and "
    "internal cohorts). Real data "
    "have no truth: the step records that and computes nothing.",
)
def cause_visibility(
    context: dg.AssetExecutionContext, paths: PipelinePaths
) -> dg.MaterializeResult:
    inputs = site_truth(paths)
    if inputs is None:
        (paths.metrics / INSTRUMENT_JSON).unlink(missing_ok=True)  # never report stale truth
        return dg.MaterializeResult(
            metadata={"computed": False, "reason": "not generator data: no known causes"}
        )
    version, folder = built_on(context, paths, ENCODERS)
    encoder = load_encoder(folder / "encoder.safetensors")
    try:
        check = check_encoder(*inputs, encoder, InstrumentConfig())
    except TooFewPatients as error:  # a report, not a gate: the run goes on without it
        (paths.metrics / INSTRUMENT_JSON).unlink(missing_ok=True)
        return dg.MaterializeResult(metadata={"computed": False, "reason": str(error)})
    check["cohorts"] = list(SITE_1)
    check["encoder_version"] = version
    atomic_write_json(paths.metrics / INSTRUMENT_JSON, check)
    png = paths.metrics / "cause_visibility.png"
    plot_headroom(check, png)
    r2 = {f"{row['cause']}/{row['view']}": row["r2"] for row in check["visibility"]}
    auc = {row["features"]: row["auc"] for row in check["headroom"]}
    return dg.MaterializeResult(
        metadata={
            "computed": True,
            "encoder_version": dg.MetadataValue.text(version),
            "patients": check["n"],
            "patients_without_truth": check["without_truth"],
            "report": dg.MetadataValue.md(instrument_markdown(check, version)),
            "headroom": image_markdown(png, "Label AUC by inputs (generator truth, site 1)"),
            **flat_numbers(r2, prefix="r2/"),
            **flat_numbers(auc, prefix="auc/"),
        }
    )
