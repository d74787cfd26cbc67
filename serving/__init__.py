"""The torch-free prediction path: one case or a batch from DICOM folders, and the HTTP service.

Nothing here imports torch or Dagster: a hospital inference box has onnxruntime, pydicom and
the feature store. ``predict`` reads a case with curation's own series code; ``service``
keeps the verified ONNX sessions and the Feast store open between calls; ``http`` serves it.
"""
