"""Champion / challenger promotion: a new model replaces the one in use only when it is safe to.

A challenger is promoted when every blocking check passed (ONNX parity, drift below ERROR,
...) and it is non-inferior to the champion on a frozen evaluation set that no model trains
on: the one-sided lower confidence bound of the paired DeLong AUC difference (challenger
minus champion, same patients) lies above -margin. With no champion the first model that
passes its checks is promoted. Every decision, promoted or refused, is one JSON line in the
promotion log, so what is in production and why can always be read back.

Plain numpy/scipy: no Dagster, no torch (the scores come from onnxruntime in orchestration).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from models.evaluation import bootstrap_auc_ci, delong_test, roc_auc


@dataclass(frozen=True)
class PromotionConfig:
    """params.yaml `promotion`: non-inferiority margin (AUC) and the one-sided alpha; `model`
    is the exported model the gate compares on the frozen set."""

    margin: float = 0.02
    alpha: float = 0.05
    bootstrap_replicates: int = 1000
    seed: int = 0
    model: str = "jepa"


@dataclass
class Decision:
    """One promotion decision (a line of the log). AUCs carry their 95% bootstrap CIs."""

    promoted: bool
    reason: str
    challenger: str
    champion: str | None
    evaluation_set: str
    n: int
    challenger_auc: float | None
    challenger_ci: list[float] | None
    champion_auc: float | None = None
    champion_ci: list[float] | None = None
    diff: float | None = None
    lower_bound: float | None = None
    p_value: float | None = None
    margin: float = 0.0
    checks: dict[str, bool] = field(default_factory=dict)
    action: str = "gate"  # gate | promote (by hand) | rollback
    time: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    labels: np.ndarray,
    challenger_scores: np.ndarray,
    champion_scores: np.ndarray | None,
    checks: Mapping[str, bool],
    config: PromotionConfig,
    challenger: str,
    champion: str | None,
    evaluation_set: str,
) -> Decision:
    """Promote or refuse `challenger` (scores [n] on the frozen set's labels [n])."""
    y = np.asarray(labels).astype(np.int64)
    lo, hi = bootstrap_auc_ci(y, challenger_scores, config.bootstrap_replicates, config.seed)
    decision = Decision(
        promoted=False,
        reason="",
        challenger=challenger,
        champion=champion,
        evaluation_set=evaluation_set,
        n=int(len(y)),
        challenger_auc=roc_auc(y, challenger_scores),
        challenger_ci=[lo, hi],
        margin=config.margin,
        checks=dict(checks),
        time=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    failed = sorted(name for name, passed in checks.items() if not passed)
    if failed:
        decision.reason = f"blocking checks failed: {', '.join(failed)}"
        return decision
    if champion_scores is None or champion is None:
        decision.promoted, decision.reason = True, "no champion: first model that passed its checks"
        return decision
    test = delong_test(y, challenger_scores, champion_scores)
    z = stats.norm.ppf(1.0 - config.alpha)
    lower = test.diff - z * float(np.sqrt(test.var))
    c_lo, c_hi = bootstrap_auc_ci(y, champion_scores, config.bootstrap_replicates, config.seed)
    decision.champion_auc, decision.champion_ci = test.auc_b, [c_lo, c_hi]
    decision.diff, decision.lower_bound, decision.p_value = test.diff, lower, test.p_value
    if lower > -config.margin:
        decision.promoted = True
        decision.reason = (
            f"non-inferior: AUC difference {test.diff:+.3f}, one-sided "
            f"{1 - config.alpha:.0%} lower bound {lower:+.3f} > -{config.margin:.3f}"
        )
    else:
        decision.reason = (
            f"not shown non-inferior: AUC difference {test.diff:+.3f}, one-sided "
            f"{1 - config.alpha:.0%} lower bound {lower:+.3f} <= -{config.margin:.3f}"
        )
    return decision


def append_log(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line under an exclusive lock, flushed and fsynced (a log is never torn)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(dict(record), sort_keys=True) + "\n"
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every decision so far, oldest first (an empty list when there is no log yet)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def production_history(records: list[Mapping[str, Any]]) -> list[str]:
    """The versions that were put in production, in order (gate promotions and manual moves)."""
    history: list[str] = []
    for record in records:
        if record.get("promoted") and (not history or history[-1] != record["challenger"]):
            history.append(str(record["challenger"]))
    return history


def rollback_target(records: list[Mapping[str, Any]], current: str | None) -> str | None:
    """The version that was in production before `current` (None if the log has none)."""
    history = production_history(records)
    if current in history:
        history = history[: len(history) - history[::-1].index(current) - 1]
    earlier = [v for v in history if v != current]
    return earlier[-1] if earlier else None


def manual_decision(
    action: str, version: str, champion: str | None, checks: Mapping[str, bool], reason: str
) -> Decision:
    """A by-hand move of the production pointer (`promote` or `rollback`), logged like a gate."""
    if action not in ("promote", "rollback"):
        raise ValueError(f"action must be 'promote' or 'rollback', got {action!r}")
    return Decision(
        promoted=True,
        reason=reason,
        challenger=version,
        champion=champion,
        evaluation_set="not evaluated (by hand)",
        n=0,
        challenger_auc=None,
        challenger_ci=None,
        checks=dict(checks),
        action=action,
        time=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
