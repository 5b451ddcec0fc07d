"""Settings: one frozen dataclass, loaded once and passed down.

Precedence, highest first: command-line flag > ``RETRIEVE_*`` environment variables >
the file given by ``--config`` or ``RETRIEVE_CONFIG`` > ``./config.yaml`` > built-in
defaults. :func:`load_settings` records where each value came from so that
``retrieve config`` can say it.

Relative paths in a config file are taken relative to that file's folder (so a config
file works from any working directory); relative paths from flags, the environment and
the defaults are relative to the current directory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from retrieval.errors import ConfigError

ENV_PREFIX = "RETRIEVE_"
INDEX_TYPES = ("auto", "flat", "hnsw")
SEARCH_MODES = ("dense", "keyword", "hybrid")  # the first is the default
BACKENDS = ("auto", "torch", "onnx", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "int8")
DEVICES = ("cpu", "cuda", "mps", "auto")
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Settings:
    """Every setting of the service; see config.yaml for what each one means."""

    database_url: str = "sqlite:///data/retrieval.db"
    index_dir: str = "data/index"
    model: str = "all-MiniLM-L6-v2"
    batch_size: int = 64
    device: str = "cpu"
    backend: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    index_type: str = "auto"
    hnsw_min_docs: int = 20_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 100
    hnsw_ef_search: int = 128
    min_recall: float = 0.98
    merge_segments_per_tier: int = 10
    merge_max_at_once: int = 10
    merge_floor_docs: int = 1000
    merge_max_tombstones: float = 0.2
    merge_threads: int = 1
    merge_inline_max_docs: int = 1000
    filter_exact_rows: int = 8192
    search_threads: int = 1
    search_k: int = 5
    max_k: int = 1000
    min_score: float | None = None
    max_query_chars: int = 10_000
    # The largest document text (and metadata, as JSON) accepted, in bytes of UTF-8: from
    # files, over HTTP and from Python alike.
    max_document_bytes: int = 1 << 20
    # How long one search may run in the database before it is stopped (milliseconds;
    # 0: no deadline). Ctrl-C stops a search at any time.
    search_timeout_ms: int = 30_000
    busy_timeout_ms: int = 30_000
    keep_index_versions: int = 2
    worker_poll_interval: float = 1.0
    worker_max_batch: int = 10_000
    # The name of this index folder among the replicas following one database (worker
    # state, its lock); None: host name and index folder.
    replica_name: str | None = None
    # `retrieve serve`: bind address, API key (required off loopback) and request limits.
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_body_bytes: int = 10_485_760
    max_batch: int = 1000
    progress: bool = True
    # Where `retrieve ingest` and `retrieve embed` embed: in this process (local) or on a
    # Ray cluster (ray: the address, None for a local one or RAY_ADDRESS; the actors, None
    # for as many as the cluster's CPUs hold; the CPUs, and encoder threads, per actor).
    executor: str = "local"
    ray_address: str | None = None
    ray_actors: int | None = None
    ray_threads: int = 1
    # Where each value came from: "default", "./config.yaml", "env RETRIEVE_MODEL", ...
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def with_overrides(self, source: str, **values: Any) -> Settings:
        """Return a copy with ``values`` applied (None means "not given") and validated."""
        given = {k: v for k, v in values.items() if v is not None}
        if not given:
            return self
        checked = {name: _coerce(name, value, source) for name, value in given.items()}
        srcs = dict(self.sources)
        srcs.update({name: source for name in checked})
        new = dataclasses.replace(self, **checked, sources=srcs)
        new.validate()
        return new

    def validate(self) -> None:
        """Check values that a type alone does not constrain."""
        if self.index_type not in INDEX_TYPES:
            raise ConfigError(
                f"index_type: must be one of {', '.join(INDEX_TYPES)}, got {self.index_type!r} "
                f"(from {self.sources.get('index_type', 'default')})"
            )
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision: must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor: must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.ray_actors is not None and self.ray_actors < 1:
            raise ConfigError(f"ray_actors: must be at least 1, got {self.ray_actors}")
        if self.ray_threads < 1:
            raise ConfigError(f"ray_threads: must be at least 1, got {self.ray_threads}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads: must be at least 1, got {self.threads}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ConfigError(f"device: must be one of {', '.join(DEVICES)} or cuda:N, got {self.device!r}")
        for name in ("batch_size", "search_threads", "search_k", "max_k", "max_query_chars", "hnsw_m", "hnsw_ef_search",
                     "hnsw_ef_construction", "hnsw_min_docs", "merge_max_at_once", "merge_floor_docs", "merge_threads",
                     "filter_exact_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not 0 < self.min_recall <= 1:
            raise ConfigError(f"min_recall: must be in (0, 1], got {self.min_recall}")
        if self.merge_segments_per_tier < 2:
            raise ConfigError(f"merge_segments_per_tier: must be at least 2, got {self.merge_segments_per_tier}")
        if not 0 < self.merge_max_tombstones < 1:
            raise ConfigError(f"merge_max_tombstones: must be in (0, 1), got {self.merge_max_tombstones}")
        if self.merge_inline_max_docs < 0:
            raise ConfigError(f"merge_inline_max_docs: must not be negative, got {self.merge_inline_max_docs}")
        if self.search_k > self.max_k:
            raise ConfigError(f"search_k ({self.search_k}) is larger than max_k ({self.max_k})")
        if self.worker_poll_interval <= 0:
            raise ConfigError(f"worker_poll_interval: must be positive, got {self.worker_poll_interval}")
        if self.worker_max_batch < 1:
            raise ConfigError(f"worker_max_batch: must be at least 1, got {self.worker_max_batch}")
        if self.keep_index_versions < 1:
            raise ConfigError("keep_index_versions: must be at least 1")
        if self.busy_timeout_ms < 0:
            raise ConfigError("busy_timeout_ms: must not be negative")
        if self.max_document_bytes < 1:
            raise ConfigError(f"max_document_bytes: must be at least 1, got {self.max_document_bytes}")
        if self.search_timeout_ms < 0:
            raise ConfigError(f"search_timeout_ms: must not be negative, got {self.search_timeout_ms}")

    def describe(self) -> list[tuple[str, Any, str]]:
        """(name, value, source) for every setting, in declaration order."""
        return [
            (f.name, _masked(f.name, getattr(self, f.name)), self.sources.get(f.name, "default"))
            for f in fields(self)
            if f.name != "sources"
        ]


_SECRETS = ("api_key",)


def _masked(name: str, value: Any) -> Any:
    """Secrets are shown as set or not, never printed."""
    if name in _SECRETS and value:
        return "***"
    return value


_FIELDS = {f.name: f for f in fields(Settings) if f.name != "sources"}
_PATH_FIELDS = ("index_dir",)


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check ``value`` against the field's declared type; strings from env/flags are parsed."""
    if name not in _FIELDS:
        known = ", ".join(_FIELDS)
        raise ConfigError(f"unknown setting {name!r} in {source} (known settings: {known})")
    declared = _FIELDS[name].type
    optional = "None" in str(declared)
    base = str(declared).replace(" | None", "")
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} in {source}: a value is required")
    if isinstance(value, str) and base != "str":
        # Environment variables and flags arrive as strings: parse them as YAML scalars.
        if optional and value.strip().lower() in ("", "null", "none"):
            return None
        import yaml  # here, not at the top: a cold `retrieve search` with no config file never needs it

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    expected = {"str": str, "int": int, "float": float, "bool": bool}[base]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is not bool and isinstance(value, bool) or not isinstance(value, expected):
        want = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}[base]
        raise ConfigError(f"{name} in {source}: expected {want}, got {_type_name(value)} {value!r}")
    return value


def _rebase(name: str, value: Any, base_dir: Path) -> Any:
    """Resolve a relative path (or SQLite file URL) found in a config file against its folder."""
    if name in _PATH_FIELDS and isinstance(value, str) and not os.path.isabs(value):
        return str(base_dir / value)
    if name == "database_url" and isinstance(value, str) and value.startswith("sqlite:///"):
        rest = value[len("sqlite:///") :]
        if rest and not rest.startswith("/") and not rest.startswith(":memory:"):
            return "sqlite:///" + str(base_dir / rest)
    return value


def _read_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings, got {_type_name(raw)}")
    return raw


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Settings:
    """Build the effective settings from defaults, config files, environment and flags.

    ``config_path`` is the ``--config`` flag; when None, ``RETRIEVE_CONFIG`` is used.
    ``overrides`` are command-line flags (None values are ignored).
    """
    env = os.environ if environ is None else environ
    here = Path(cwd) if cwd is not None else Path.cwd()
    settings = Settings()

    files: list[Path] = []
    local = here / "config.yaml"
    if local.is_file():
        files.append(local)
    explicit = config_path if config_path is not None else env.get(ENV_PREFIX + "CONFIG") or None
    if explicit is not None:
        path = Path(explicit)
        path = path if path.is_absolute() else here / path
        if not files or path.resolve() != files[0].resolve():
            files.append(path)
    for path in files:
        label = "./config.yaml" if path == local else str(path)
        values = _read_file(path)
        unknown = [k for k in values if k not in _FIELDS]
        if unknown:
            raise ConfigError(
                f"unknown setting {unknown[0]!r} in {label} (known settings: {', '.join(_FIELDS)})"
            )
        base_dir = path.resolve().parent
        settings = settings.with_overrides(label, **{k: _rebase(k, v, base_dir) for k, v in values.items()})
        # A null in the file for an optional value means "explicitly unset".
        for key, value in values.items():
            if value is None:
                srcs = dict(settings.sources)
                srcs[key] = label
                settings = dataclasses.replace(settings, **{key: _coerce(key, None, label)}, sources=srcs)

    env_values: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key in (ENV_PREFIX + "CONFIG", ENV_PREFIX + "SERVER"):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting in environment variable {key} (known settings: {', '.join(_FIELDS)})")
        env_values[name] = value
    for name, value in env_values.items():
        settings = settings.with_overrides(f"env {ENV_PREFIX}{name.upper()}", **{name: value})

    if overrides:
        for name, value in overrides.items():
            if value is not None:
                settings = settings.with_overrides(f"flag --{name.replace('_', '-')}", **{name: value})
    settings.validate()
    return settings
