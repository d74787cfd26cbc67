"""The GPU-bound JEPA pretraining asset: a versioned, resumable encoder."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from cohorts.batches import manifest_summary, read_manifests
from cohorts.example_set import ExampleSet, load_examples
from cohorts.privacy import read_key_record
from models.finetune import stratified_patient_split
from models.jepa.config import PretrainConfig
from models.jepa.pretrain import PretrainResult, pretrain
from models.jepa.versioning import artifact_version
from orchestration.assets.features import training_examples
from orchestration.configs import config_class
from orchestration.dvc_versions import dvc_metadata
from orchestration.metadata import flat_numbers, image_markdown
from orchestration.params import REPO_ROOT, section
from orchestration.resources import PipelinePaths, TorchDevice

_PRETRAIN = section("pretrain")
_FINETUNE = section("finetune")
_RETRAINING = section("retraining")
ENCODER_INITS = ("random", "production")


class _PretrainRun(dg.Config):
    """params.yaml `pretrain` (fields built from PretrainConfig, orchestration/configs.py);
    nproc_per_node > 1 runs the same code under torchrun (DDP)."""

    nproc_per_node: int = 1
    encoder_init: str = Field(
        default=_RETRAINING["encoder_init"],
        description="random (pretrain from scratch) or production (warm-start from the encoder "
        "the production models were built on; random when there is none): params.yaml "
        "retraining.encoder_init",
    )

    def domain(self, device: str) -> PretrainConfig:
        fields = self.model_dump(exclude={"nproc_per_node", "encoder_init"})
        return PretrainConfig.from_dict({**fields, "device": device})


PretrainRunConfig = config_class("PretrainRunConfig", PretrainConfig, _PRETRAIN, _PretrainRun)


def production_encoder(paths: PipelinePaths) -> tuple[str, Path] | None:
    """(version, encoder.safetensors) the production models were built on; None without one.

    production.json names the models version; its card names the encoder version.
    """
    pointer = paths.artifacts / "models" / "production.json"
    if not pointer.exists():
        return None
    version = json.loads(pointer.read_text())["version"]
    card = json.loads((paths.artifacts / "models" / version / "card.json").read_text())
    encoder = paths.artifacts / "encoders" / card["encoder_version"] / "encoder.safetensors"
    if not encoder.exists():
        raise FileNotFoundError(
            f"production models {version} were built on encoder {card['encoder_version']}, "
            f"whose file {encoder} is gone: restore it (dvc pull) or set encoder_init: random"
        )
    return card["encoder_version"], encoder


def _run_torchrun(
    examples: Path,
    out_dir: Path,
    config: PretrainConfig,
    nproc: int,
    probe_sets: tuple[ExampleSet, ExampleSet],
    inputs: dict[str, Any],
    init_encoder: Path | None = None,
) -> PretrainResult:
    """The same pretraining as in-process, as `nproc` DDP ranks under torchrun.

    The asset's whole run happens there (probe and card provenance included), and the asset
    reads back the summary rank 0 prints: pretraining never runs twice, and the artifact is the
    one `torchrun -m models.jepa.cli` makes from the same examples and config.
    --standalone: a free rendezvous port, so two runs on one machine do not collide.
    """
    with tempfile.TemporaryDirectory(prefix="lungjepa-probe-") as tmp:
        probe_paths = [Path(tmp) / "probe_train.npz", Path(tmp) / "probe_test.npz"]
        for path, subset in zip(probe_paths, probe_sets, strict=True):
            subset.save(path)
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "models.jepa.cli",
            "--examples", str(examples), "--out", str(out_dir),
            "--config", json.dumps(config.to_dict()), "--inputs", json.dumps(inputs),
            "--probe-train", str(probe_paths[0]), "--probe-test", str(probe_paths[1]),
            "--no-progress",
        ]  # fmt: skip
        if init_encoder is not None:
            command += ["--init-encoder", str(init_encoder)]
        done = subprocess.run(
            command, cwd=REPO_ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, text=True
        )
    if done.returncode != 0:
        raise RuntimeError(f"torchrun pretraining of {out_dir} exited {done.returncode}")
    return PretrainResult.from_summary(json.loads(done.stdout.strip().splitlines()[-1]))


@dg.asset(
    group_name="training",
    deps=[training_examples],
    kinds={"pytorch", "safetensors"},
    code_version="1",
    pool="gpu",
    description="Multimodal JEPA encoder pretrained on the unlabeled archive (EMA target encoder, "
    "safetensors + card). Resumes from its last checkpoint; in-process, or as torchrun DDP "
    "ranks with nproc_per_node > 1; one at a time (pool gpu).",
)
def jepa_encoder(
    context: dg.AssetExecutionContext,
    config: PretrainRunConfig,
    paths: PipelinePaths,
    torch_device: TorchDevice,
) -> dg.MaterializeResult:
    archive_path = paths.examples("archive")
    archive = load_examples(archive_path)
    domain = config.domain(torch_device.resolve())
    if config.encoder_init not in ENCODER_INITS:
        raise ValueError(
            f"encoder_init must be one of {ENCODER_INITS}, got {config.encoder_init!r}"
        )
    start = production_encoder(paths) if config.encoder_init == "production" else None
    init_path = None if start is None else start[1]
    if config.encoder_init == "production":
        context.log.info(
            f"warm start from production encoder {start[0]}"
            if start is not None
            else "encoder_init production, but no production model yet: random init"
        )
    # The version is known before training, so a killed run resumes in the same folder.
    version = artifact_version(
        archive, domain, world_size=config.nproc_per_node, init_encoder=init_path
    )
    run_dir = paths.artifacts / "encoders" / version
    internal = load_examples(paths.examples("internal"))
    split = stratified_patient_split(internal.label, {"train": 0.7, "test": 0.3}, seed=config.seed)
    probe_sets = (internal.subset(split["train"]), internal.subset(split["test"]))
    inputs = {"cohort_manifests": manifest_summary(read_manifests(paths.data / "examples"))}
    if config.nproc_per_node > 1:
        context.log.info(f"pretraining on {config.nproc_per_node} DDP ranks (torchrun)")
        result = _run_torchrun(
            archive_path, run_dir, domain, config.nproc_per_node, probe_sets, inputs, init_path
        )
    else:
        result = pretrain(
            archive,
            run_dir,
            domain,
            progress=True,
            probe_sets=probe_sets,
            inputs=inputs,
            init_encoder=init_path,
        )
    manifests = inputs["cohort_manifests"]
    paths.point_latest("encoders", result.version, run_dir)
    card = json.loads(result.card_path.read_text())
    archive_record = read_key_record(paths.data / "examples").get("archive", {})
    metadata = {
        "version": dg.MetadataValue.text(result.version),
        "init": dg.MetadataValue.text(
            f"warm start from {start[0]}" if start is not None else "random"
        ),
        "encoder_path": dg.MetadataValue.path(str(result.encoder_path)),
        "resumed_from_step": dg.MetadataValue.int(result.resumed_from_step or 0),
        "loss_first": dg.MetadataValue.float(float(card["loss"]["first"])),
        "loss_last": dg.MetadataValue.float(float(result.final_loss)),
        "samples_per_s": dg.MetadataValue.float(float(result.samples_per_s)),
        **dvc_metadata(run_dir / "encoder.safetensors"),
        **flat_numbers(result.monitor, prefix="monitor/"),
        **flat_numbers(result.probe or {}, prefix="probe/"),
        **flat_numbers(card.get("ema", {}), prefix="ema/"),
        "key_fingerprint/archive": archive_record.get("key_fingerprint", ""),
        **{f"manifest/{c}": m["version"] for c, m in manifests.items()},
    }
    plot = run_dir / "pretrain.png"
    if plot.exists():
        metadata["loss_curve"] = image_markdown(plot, "JEPA pretraining curves")
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(result.version))
