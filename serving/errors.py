"""The one exception of the prediction path, in a module of its own.

Why a module: the model, the EHR features, the single case and the batch all refuse inputs
with it, and ``serving.http`` answers it with a 422; here every one of them can import it
without importing the others.
"""

from __future__ import annotations


class PredictionError(ValueError):
    """An input the predict path cannot use; the message says which and why."""
