"""Storage URLs as they may be shown: in notes, errors and results.json."""

from __future__ import annotations


def display_url(url: str) -> str:
    """A storage URL without its password (for notes and results.json)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for display
        return url
