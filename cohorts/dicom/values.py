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


def header_value(ds: pydicom.Dataset, tag: int, default: Any = None) -> Any:
    """``ds[tag].value`` (``default`` when absent), converted at most once per raw form.

    Raises what pydicom raises for an element that does not convert, like ``ds[tag]``.
    """
    raw = ds.get_item(tag, keep_deferred=True)
    if raw is None:
        return default
    if memoizable(raw) is None:
        return ds[tag].value
    charset = ds.original_character_set
    key = (
        raw.tag,  # type: ignore[union-attr]
        raw.VR,
        raw.value,
        raw.is_implicit_VR,
        raw.is_little_endian,
        tuple(charset) if isinstance(charset, list) else charset,
    )
    try:
        return _MEMO[key]
    except KeyError:
        pass
    value = ds[tag].value
    if len(_MEMO) >= _MEMO_LIMIT:
        _MEMO.clear()
    _MEMO[key] = value
    return value
