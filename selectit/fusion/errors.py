"""The fusion's errors: a request it cannot serve, and a write refused by the SQL console."""

from __future__ import annotations

from selectit.errors import SelectitError


class FusionError(SelectitError):
    """A ranking, selection or export request that cannot be served as asked."""


class ReadOnlyError(FusionError):
    """A statement tried to change the curation database through the SQL console."""
