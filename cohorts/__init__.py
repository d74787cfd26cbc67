"""Plain-Python data side of LungJEPA: DICOM curation, EHR features, the synthetic environment.

Nothing in this package imports Dagster or Feast; orchestration/ wires it.
"""
