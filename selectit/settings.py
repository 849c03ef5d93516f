"""The one module that reads the process environment.

`Settings` holds the runner's and the fleet's knobs (every `SELECTIT_*` variable of the planner,
the leases, the runner and the Celery app), read into a typed object by `Settings.from_env()`.
Every other variable (the database URL, the connect timeout, the model cache, the engines'
options, a served model's API key) is read through `environment(name)`, here, so that a test can
tell that no other module reads the environment. An entry point (`selectit.open`, the CLI's one
`Store`, `celery -A selectit.workers.app`) reads it once and passes the values down; a bad value
fails at that moment with the variable's name, not deep in a job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from selectit.errors import SelectitError


class SettingsError(SelectitError):
    """An environment variable of selectit holds a value it cannot use."""


def _number(convert: Callable[[str], Any], minimum: float) -> Callable[[str, str], Any]:
    def parse(name: str, raw: str) -> Any:
        try:
            value = convert(raw)
        except ValueError:
            value = None
        if value is None or value < minimum:
            kind = "a whole number" if convert is int else "a number"
            raise SettingsError(f"${name} must be {kind} ≥ {minimum:g}, not {raw!r}; fix it or unset it "
                                f"to use the default.")
        return value
    return parse


def _hook(name: str, raw: str) -> str:
    module, sep, attr = raw.partition(":")
    if not module or (sep and not attr):
        raise SettingsError(f"${name} must be module:function (e.g. selectit.scoring.torch_engine:load_scorer), not {raw!r}.")
    return raw


@dataclass(frozen=True)
class Settings:
    """The runner's knobs; each field's metadata names its variable."""

    #: How many times a failing cell is tried before it stays failed.
    max_cell_attempts: int = 3
    #: How many claims of one job may end (expired lease, error) before the job is failed.
    max_job_attempts: int = 3
    #: Estimated prompt tokens per planned job (samples × prompts): a few minutes on one GPU.
    job_tokens: int = 200_000
    #: Samples per committed batch of a job (a kill loses at most one batch).
    batch_size: int = 16
    #: A claim's lease in seconds, renewed after every batch.
    lease_seconds: float = 300.0
    #: `module:callable` turning a model version (an `LLM` row) into a scoring engine.
    scorer: str = "selectit.scoring.engines:load_engine"
    #: The Celery broker of the fleet.
    broker_url: str = "redis://localhost:6379/0"
    #: Seconds to wait for the broker to accept a connection or answer (a silent one never hangs us).
    broker_timeout: float = 10.0
    #: Seconds between the control loop's plans, and between its expired-lease sweeps.
    plan_interval: float = 60.0
    requeue_interval: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings of `environ` (default `os.environ`); unset or empty variables keep the default.

        Example:
            >>> Settings.from_env({"SELECTIT_BATCH_SIZE": "4"}).batch_size
            4
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name, parse = _VARIABLES[f.name]
            raw = env.get(name)
            if raw:
                values[f.name] = parse(name, raw.strip())
        return cls(**values)


#: field → (environment variable, parser)
_VARIABLES: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "max_cell_attempts": ("SELECTIT_MAX_ATTEMPTS", _number(int, 1)),
    "max_job_attempts": ("SELECTIT_MAX_JOB_ATTEMPTS", _number(int, 1)),
    "job_tokens": ("SELECTIT_JOB_TOKENS", _number(int, 1)),
    "batch_size": ("SELECTIT_BATCH_SIZE", _number(int, 1)),
    "lease_seconds": ("SELECTIT_LEASE_SECONDS", _number(float, 0)),
    "scorer": ("SELECTIT_SCORER", _hook),
    "broker_url": ("SELECTIT_BROKER_URL", lambda _name, raw: raw),
    "broker_timeout": ("SELECTIT_BROKER_TIMEOUT", _number(float, 0.1)),
    "plan_interval": ("SELECTIT_PLAN_INTERVAL", _number(float, 0.1)),
    "requeue_interval": ("SELECTIT_REQUEUE_INTERVAL", _number(float, 0.1)),
}


def environment(name: str) -> str | None:
    """The variable `name` of the process environment (None when unset): the package's one read
    of it, made by the entry points (and, for a served model's API key, when a request needs it,
    so that the key is never kept anywhere)."""
    return os.environ.get(name)


#: The documented defaults, for library calls made without settings (an entry point reads the environment).
DEFAULT_SETTINGS = Settings()


def variable(field_name: str) -> str:
    """The environment variable of a field: `variable("batch_size")` → `SELECTIT_BATCH_SIZE`."""
    return _VARIABLES[field_name][0]
