"""Dagster wiring: assets, resources, checks, schedules and sensors around cohorts/ and models/."""
