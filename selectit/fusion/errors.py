"""The fusion's errors: a request it cannot serve, and a write refused by the SQL console."""

from __future__ import annotations

from selectit.errors import FusionError  # defined with the base errors: `selectit.ranking` raises it too


class ReadOnlyError(FusionError):
    """A statement tried to change the curation database through the SQL console."""
