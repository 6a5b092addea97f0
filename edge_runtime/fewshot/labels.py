"""Class labels: one canonical form, safe in a URL path, with `unknown` reserved."""

from __future__ import annotations

import unicodedata

from edgessl.errors import GalleryError

UNKNOWN = "unknown"  # what the classifier answers below its threshold; not a valid label
MAX_LABEL_CHARS = 64
# Characters a label may not hold: they do not survive a URL path segment, even percent-encoded
# (servers and proxies decode `%2F` to `/`; some clients turn `\\` into `/`).
URL_UNSAFE = frozenset("/\\")
# Unicode categories refused: controls, format characters (zero-width joiners and the like),
# surrogates, private use, unassigned, line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def normalize_label(label: str) -> str:
    """The canonical form of a label, or GalleryError saying what is valid.

    NFC, trimmed, inner runs of white space made one space; 1-MAX_LABEL_CHARS characters, none
    of them a control, format (zero-width), surrogate, private-use or unassigned character, nor
    `/` or `\\` (a label is a URL path segment: DELETE /v1/classes/{label}); `unknown`
    in any case or spacing is reserved."""
    valid = (f"a label is 1-{MAX_LABEL_CHARS} printable characters, without {' '.join(sorted(URL_UNSAFE))}, "
             f"and not {UNKNOWN!r}")
    if not isinstance(label, str):
        raise GalleryError(f"label {label!r} is not text; {valid}")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in label):
        raise GalleryError(f"label {label!r} contains a lone surrogate (not valid Unicode); {valid}")
    if any(unicodedata.category(ch) == "Cc" for ch in label):
        raise GalleryError(f"label {label!r} contains control characters; use printable characters only")
    label = " ".join(unicodedata.normalize("NFC", label).split())
    if not label:
        raise GalleryError(f"the label is empty; {valid}")
    if len(label) > MAX_LABEL_CHARS:
        raise GalleryError(f"label {label[:20]!r}... has {len(label)} characters; at most {MAX_LABEL_CHARS} are allowed")
    bad = sorted({ch for ch in label if unicodedata.category(ch) in _REFUSED_CATEGORIES or ch in URL_UNSAFE})
    if bad:
        raise GalleryError(f"label {label!r} contains {', '.join(repr(c) for c in bad)}; {valid}")
    if set(label) <= {".", " "}:
        raise GalleryError(f"label {label!r} is only dots (not a usable URL path segment); {valid}")
    if "".join(label_key(label).split()) == UNKNOWN:
        raise GalleryError(f"label {label!r} is reserved: {UNKNOWN!r} is what frames that match no class get; "
                           f"choose another")
    return label


def label_key(label: str) -> str:
    """What two labels must differ in to name different classes: NFC of the case-folded label."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", label).casefold())


def validate_label(label: str) -> str:
    """Return the normalised label (see `normalize_label`) or raise GalleryError."""
    return normalize_label(label)
