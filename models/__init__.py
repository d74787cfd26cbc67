"""Torch side of LungJEPA: encoders, JEPA pretraining, finetuning, evaluation, ONNX export.

Nothing in this package imports Dagster or Feast; orchestration/ wires it.
"""
