"""Header values read through a per-process memo keyed on the element's raw bytes.

Why: the header pass reads ~40 values from every file (ids, geometry, rescale, every Annex E
attribute), and pydicom converting each raw element (decode, split, validate, wrap) cost more
than parsing the file itself. Within a series nearly all of them repeat byte for byte (the
patient's name, the study UID, the orientation), so a value is converted once per distinct
raw form and then looked up. The result is exactly what ``ds[tag].value`` gives: the key holds
everything the conversion depends on (tag, VR, bytes, VR and byte-order encoding, character
set), and elements whose conversion depends on other elements (ambiguous "US or SS" VRs) or
that hold sequences are converted by pydicom every time.

Values come back shared between files: callers must treat them as read-only (they do: every
one is copied into a str, float or tuple).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement

_MEMO: dict[tuple[Any, ...], Any] = {}
_MEMO_LIMIT = 50_000  # entries; distinct values such as SOPInstanceUID would grow it forever


def forget_values() -> None:
    """Empty this process's memo, as in a freshly started process.

    For measurements: a run process (Dagster, the CLI) or a new pool worker starts with an
    empty memo, so timing repeated runs in one process must start each from here too.
    """
    _MEMO.clear()


@lru_cache(maxsize=4096)
def dictionary_vr(tag: int) -> str:
    """The data dictionary's VR for ``tag``; "UN" for a tag it does not know (private)."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def memoizable(raw: object) -> str | None:
    """The VR a raw element converts with, or None when it must be converted every time.

    None for elements already converted or deferred, sequences, "UN" (pydicom may re-read it
    with the dictionary's VR) and ambiguous VRs such as "US or SS", whose meaning depends on
    PixelRepresentation.
    """
    if not isinstance(raw, RawDataElement) or raw.value is None:
        return None
    vr = raw.VR or dictionary_vr(int(raw.tag))
    return None if vr in ("SQ", "UN") or " or " in vr else vr


class HeaderValues:
    """One dataset's top-level values by tag, each through the memo.

    Why a class: the header pass asks ~50 values of every file; taking the dataset's element
    table and character set once, and looking tags up as plain ints, halves the cost of each
    lookup against ``Dataset.get_item`` (which re-parses the tag and compares pydicom tags).
    """

    __slots__ = ("_charset", "_ds", "_raw")

    def __init__(self, ds: pydicom.Dataset) -> None:
        self._ds = ds
        self._raw = {int(tag): element for tag, element in ds.items()}
        charset = ds.original_character_set
        self._charset = tuple(charset) if isinstance(charset, list) else charset

    def get(self, tag: int, default: Any = None) -> Any:
        """``ds[tag].value``, or ``default`` when the element is absent."""
        raw = self._raw.get(tag)
        if raw is None:
            return default
        if memoizable(raw) is None:
            return self._ds[tag].value
        key = (
            tag,
            raw.VR,
            raw.value,
            raw.is_implicit_VR,
            raw.is_little_endian,
            self._charset,
        )
        try:
            return _MEMO[key]
        except KeyError:
            pass
        value = self._ds[tag].value
        if len(_MEMO) >= _MEMO_LIMIT:
            _MEMO.clear()
        _MEMO[key] = value
        return value
