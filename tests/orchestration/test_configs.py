"""orchestration/configs.py: Dagster Config classes built from dataclass + params.yaml."""

from dataclasses import dataclass

import dagster as dg
import pytest

from models.jepa.config import PretrainConfig
from orchestration.assets.training import PretrainRunConfig
from orchestration.configs import config_class, config_type
from orchestration.params import section


@dataclass
class Knobs:
    steps: int = 1
    scale: tuple[float, float] = (0.1, 0.2)
    name: str = "x"


def test_fields_take_the_dataclass_types_and_the_params_values() -> None:
    config = config_class("KnobsConfig", Knobs, {"steps": 5, "scale": (0.3, 0.4)})
    assert set(config.model_fields) == {"steps", "scale"}  # only what params.yaml sets
    assert config().steps == 5 and config().scale == [0.3, 0.4]
    assert config(steps=7).steps == 7
    with pytest.raises(Exception, match="steps"):
        config(steps="many")  # typed as the dataclass types it
    assert config_type(tuple[float, float]) == list[float] and config_type(int) is int
    with pytest.raises(TypeError, match="mixed types"):
        config_type(tuple[int, str])


def test_a_params_key_the_dataclass_lacks_fails_at_definition() -> None:
    with pytest.raises(ValueError, match=r"\['stepz'\] are not Knobs fields"):
        config_class("KnobsConfig", Knobs, {"stepz": 5})


def test_a_null_in_params_is_an_optional_field_left_to_the_domain() -> None:
    config = config_class("KnobsConfig", Knobs, {"steps": None, "name": "y"})
    assert config().steps is None and config(steps=4).steps == 4
    with pytest.raises(Exception, match="steps"):
        config(steps="many")


def test_raw_archive_config_is_params_synth_typed_by_synth_config() -> None:
    from cohorts.synthetic import SynthConfig, preset_config
    from orchestration.assets.data import RawArchiveConfig

    params = section("synth")
    assert set(RawArchiveConfig.model_fields) == set(params)
    sizes = {k: v for k, v in params.items() if k.startswith("n_") and v is not None}
    expected = preset_config(
        params["preset"], seed=params["seed"], regime=params["regime"],
        workers=params["workers"], **sizes,
    )  # fmt: skip
    assert RawArchiveConfig().domain() == expected
    domain = RawArchiveConfig(seed=5, n_archive=9).domain()
    assert isinstance(domain, SynthConfig) and (domain.seed, domain.n_archive) == (5, 9)
    with pytest.raises(Exception, match="regime"):
        RawArchiveConfig(regime="high")


def test_pretrain_run_config_is_params_yaml_plus_the_run_knobs() -> None:
    params = section("pretrain")
    assert set(PretrainRunConfig.model_fields) == {*params, "nproc_per_node", "encoder_init"}
    assert issubclass(PretrainRunConfig, dg.Config)
    domain = PretrainRunConfig().domain("cpu")
    assert domain == PretrainConfig.from_dict({**params, "device": "cpu"})
    assert PretrainRunConfig(epochs=3).domain("cpu").epochs == 3


def test_a_crop_spacing_override_reaches_every_consumer(tmp_path) -> None:
    """The crop spacing is one run-config field (curated_scans'); the crops carry it to the
    examples, the Brock baseline's size measure (the models card) and the ONNX metadata that
    serving crops by. A second copy of the setting in any of them would disagree here."""
    import json

    import onnx
    import pandas as pd
    from pipeline_run import run_pipeline

    from cohorts.example_set import load_examples
    from orchestration.assets.evaluation import DiagnosticConfig
    from orchestration.assets.export import ExportConfig

    spacing = section("curate")["crop_spacing_mm"] + 0.25
    assert "crop_spacing_mm" not in DiagnosticConfig.model_fields
    assert "crop_spacing_mm" not in ExportConfig.model_fields
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        result = run_pipeline(
            tmp_path, instance, ops={"curated_scans": {"crop_spacing_mm": spacing}}
        )
        assert result.success
    data, artifacts = tmp_path / "data", tmp_path / "artifacts"
    for cohort in ("archive", "internal", "external"):
        nodules = pd.read_parquet(data / "curated" / cohort / "nodules.parquet")
        assert set(nodules["crop_spacing_mm"]) == {spacing}, cohort
        assert load_examples(data / "examples" / f"{cohort}.npz").crop_spacing_mm == spacing
    production = json.loads((artifacts / "models" / "production.json").read_text())
    models = artifacts / "models" / production["version"]
    assert json.loads((models / "card.json").read_text())["crop_spacing_mm"] == spacing
    meta = {
        p.key: p.value for p in onnx.load(models / "onnx" / "jepa" / "model.onnx").metadata_props
    }
    assert float(meta["crop_spacing_mm"]) == spacing


def test_diagnostic_config_is_params_yaml_finetune_built_from_its_dataclasses() -> None:
    """Each finetune setting is declared once in params.yaml and once in its dataclass
    (FinetuneConfig, ProtocolConfig, JepaRecipe); the run config is built from the two."""
    from models.baselines import ReaderError
    from models.finetune import FinetuneConfig
    from models.protocol import JepaRecipe
    from orchestration.assets.evaluation import DiagnosticConfig

    finetune, evaluate = section("finetune"), section("evaluate")
    assert set(DiagnosticConfig.model_fields) == {*finetune, "split_seed", "reader"}
    protocol = DiagnosticConfig().domain()
    assert protocol.finetune == FinetuneConfig(
        **{k: v for k, v in finetune.items() if k in FinetuneConfig.__dataclass_fields__}
    )
    assert protocol.jepa == JepaRecipe(**finetune["jepa"])
    assert protocol.seeds == tuple(finetune["seeds"]) and protocol.folds == finetune["folds"]
    assert protocol.reader == ReaderError(**evaluate["reader"], seed=evaluate["seed"])
    override = DiagnosticConfig(
        epochs=2, jepa={"probe_epochs": 1, "lr": 0.1, "encoder_lr_scale": 1.0}
    )
    assert override.domain().finetune.epochs == 2 and override.domain().jepa.probe_epochs == 1
    with pytest.raises(Exception, match="probe_epochs"):
        DiagnosticConfig(jepa={"probe_epochs": "many", "lr": 0.1, "encoder_lr_scale": 1.0})


def test_curation_and_promotion_configs_are_params_yaml_built_from_their_dataclasses() -> None:
    from models.promotion import PromotionConfig
    from orchestration.assets.data import CurationRunConfig
    from orchestration.assets.export import PromotionRunConfig

    curate, promotion = section("curate"), section("promotion")
    assert set(CurationRunConfig.model_fields) == set(curate)
    assert set(PromotionRunConfig.model_fields) == set(promotion)
    assert PromotionRunConfig().domain() == PromotionConfig(**promotion)
    assert PromotionRunConfig(margin=-1.0).domain().margin == -1.0
