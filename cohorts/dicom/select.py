"""The one rule for which series of a study becomes its scan, for curation and serving alike.

A CT study often holds several reconstructions of one acquisition (thin and thick slices,
lung and soft-tissue kernels). Training (curation) and prediction (serving) must choose the
same one, or a deployed model sees other images than it was validated on. The rule:

- candidates are the series that passed the header checks (``validate_headers``), keyed by
  their *pseudonymised* series id, the id curation writes, so that ties break the same way
  wherever the rule runs (raw UIDs would order differently from their pseudonyms);
- order: thinnest reconstruction first (``min(slice thickness, z spacing)``, mm), then most
  slices, then the id;
- the first candidate that decodes is the study's scan; the candidates after it are
  ``not_selected``; one that fails to decode is skipped with its reason.

Curation decodes the head of every study's queue in one pool round (``StudySelection``, one
per study); serving decodes one series at a time (``first_decodable``). Both go through
``StudySelection``, so the rule lives here only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from cohorts.dicom.series import SeriesError, SeriesGeometry

T = TypeVar("T")


def candidate_order(candidates: Mapping[str, SeriesGeometry]) -> list[str]:
    """Series ids in the order they are tried: thinnest first, then most slices, then id."""

    def key(series_id: str) -> tuple[float, int, str]:
        g = candidates[series_id]
        return (round(min(g.slice_thickness_mm, g.spacing_mm[0]), 3), -g.shape[0], series_id)

    return sorted(candidates, key=key)


class StudySelection:
    """The state of one study's choice: which candidate to decode next, and the outcome.

    ``next`` is the candidate to decode; report it with ``accept`` (it decoded: the study is
    done and the candidates after it are returned, to be marked not_selected) or ``reject``
    (it failed: the next one is tried). ``done`` once a candidate was accepted or none is left.
    """

    def __init__(self, candidates: Mapping[str, SeriesGeometry]) -> None:
        self._pending = candidate_order(candidates)
        self.chosen: str | None = None

    @property
    def next(self) -> str | None:
        """The candidate to decode now; None when the study is done."""
        return self._pending[0] if self._pending else None

    @property
    def done(self) -> bool:
        return not self._pending

    def accept(self, series_id: str) -> list[str]:
        """``series_id`` decoded: it is the study's scan; returns the candidates not selected."""
        self._check_next(series_id)
        self.chosen = series_id
        others, self._pending = self._pending[1:], []
        return others

    def reject(self, series_id: str) -> None:
        """``series_id`` failed to decode: the next candidate is tried."""
        self._check_next(series_id)
        self._pending.pop(0)

    def _check_next(self, series_id: str) -> None:
        if series_id != self.next:
            raise ValueError(f"series {series_id} is not the next candidate ({self.next})")


def first_decodable(
    candidates: Mapping[str, SeriesGeometry], decode: Callable[[SeriesGeometry], T]
) -> tuple[str | None, T | None, list[tuple[str, SeriesError]]]:
    """Decode candidates in the rule's order, one at a time, until one decodes.

    Returns (chosen series id, its decoded value, [(series id, error) of those that failed
    before it]); (None, None, errors) when none decodes. Only ``SeriesError`` counts as a
    failure to decode; anything else propagates.
    """
    selection = StudySelection(candidates)
    errors: list[tuple[str, SeriesError]] = []
    while (series_id := selection.next) is not None:
        try:
            value = decode(candidates[series_id])
        except SeriesError as err:
            errors.append((series_id, err))
            selection.reject(series_id)
            continue
        selection.accept(series_id)
        return series_id, value, errors
    return None, None, errors
