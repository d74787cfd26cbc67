"""Set every concurrency pool of the code location explicitly on the team instance.

    python deploy/team/pools.py          (deploy/team/team.sh up runs it; DAGSTER_HOME set)

Why not leave them to `concurrency.pools.default_limit`: Dagster creates a pool's row the first
time a step of it runs, and on PostgreSQL two runs that do so at the same moment crash one of
them (UniqueViolation on concurrency_limits_concurrency_key_key; dagster-io/dagster#33552,
open for 1.13). Seen here: two tiny pipelines submitted at once, one failed in ehr_features.
Explicit limits are also what an operator wants to see in the UI's concurrency page.
"""

from __future__ import annotations

import dagster as dg

LIMITS = {"gpu": 1}
"""Pools whose limit is not the default: one GPU step at a time across all runs."""
DEFAULT_LIMIT = 1
"""Every other pool is one asset's own: one materialisation of it at a time."""


def code_location_pools() -> set[str]:
    """The pools of every op (assets and checks) in every job of orchestration.definitions."""
    from orchestration.definitions import defs

    repository = defs.get_repository_def()
    return {
        op.pool
        for job in repository.get_all_jobs()
        for op in job.graph.iterate_op_defs()
        if op.pool
    }


def main() -> None:
    pools = code_location_pools()
    with dg.DagsterInstance.get() as instance:
        for pool in sorted(pools):
            instance.event_log_storage.set_concurrency_slots(pool, LIMITS.get(pool, DEFAULT_LIMIT))
    shown = ", ".join(f"{p}={LIMITS.get(p, DEFAULT_LIMIT)}" for p in sorted(pools))
    print(f"team: concurrency pools set: {shown}")


if __name__ == "__main__":
    main()
