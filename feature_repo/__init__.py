"""Feast repo of the EHR features: definitions.py (objects), store.py (plain helpers)."""
