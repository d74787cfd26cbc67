"""orchestration/cli/: what the `lungjepa` commands print for the people who run them."""

import json
import re
from pathlib import Path

from orchestration.cli import demo_summary


def test_the_demo_summary_points_at_real_outputs_and_prints_the_measured_aucs(
    tiny_pipeline: tuple,
) -> None:
    """Every path the summary names exists (the ONNX files are the production pointer's),
    and its AUC table is evaluation.json's, model by model, with both cohorts' CIs."""
    root, _, result = tiny_pipeline
    assert result.success
    text = demo_summary(125.0, root)
    assert text.splitlines()[0] == "LungJEPA demo finished in 2.1 min"
    named = dict(
        re.match(r"  (\S.*?)\s+(/\S+)$", line).groups()
        for line in text.splitlines()
        if re.match(r"  \S.*?\s+/\S+$", line)
    )
    assert {"raw archive", "curated cohorts", "encoders", "metrics", "results"} <= set(named)
    assert all(Path(path).exists() for path in named.values()), named
    production = json.loads((root / "artifacts" / "models" / "production.json").read_text())
    onnx = {k: v for k, v in named.items() if k.startswith("ONNX")}
    assert sorted(Path(p) for p in onnx.values()) == sorted(
        root / "artifacts" / rel for rel in production["models"].values()
    )
    evaluation = json.loads((root / "metrics" / "evaluation.json").read_text())
    table = [line.split() for line in text.split("AUC [95% CI]")[1].splitlines()[1:]]
    assert [row[0] for row in table] == list(evaluation["internal"])
    for model, *cells in table:
        for cohort, (auc, low, high) in zip(
            ("internal", "external"), (cells[:3], cells[3:]), strict=True
        ):
            r = evaluation[cohort][model]
            assert auc == f"{r['auc']:.3f}"
            assert (low, high) == (f"[{r['ci'][0]:.3f},", f"{r['ci'][1]:.3f}]")
