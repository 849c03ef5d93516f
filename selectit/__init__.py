"""selectit: SelectIT data selection as a database-backed, incremental curation system.

Importable without torch: the torch engine (`selectit.scoring.torch_engine`) and the model loader
(`selectit.scoring.loading`) import torch themselves, on use.
`selectit.open(url)` returns a `selectit.api.Store` (imported on first use); `selectit.Ranking`
says how to rank.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["open", "Store", "Ranking", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `import selectit` stays cheap (no SQLAlchemy, DuckDB or Arrow until the API is used).
    if name in ("open", "Store"):
        from selectit import api

        return getattr(api, name)
    if name == "Ranking":
        from selectit.ranking import Ranking

        return Ranking
    raise AttributeError(f"module 'selectit' has no attribute {name!r}")
