"""Hounsfield-unit constants shared by curation, the examples contract and serving."""

HU_AIR = -1024
"""Air in HU: the floor curation clips to, the fill outside a scan's field of view, and the
padding of absent scans in the training examples (an absent scan reads as empty air)."""
