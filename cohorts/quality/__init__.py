"""Data-quality suites (great-expectations 1.x) and cohort drift statistics (KS, PSI).

Plain Python: no Dagster, no Feast. The orchestration layer turns the results into blocking
asset checks (orchestration/quality.py).
"""
