"""Settings: frozen groups, one per concept, loaded once and passed down.

``settings.store``, ``.encoder``, ``.index``, ``.search``, ``.ingest``, ``.worker``,
``.serve`` and ``.ray`` each hold the settings of one part of the service; a setting's
name is its group and field, ``index.hnsw_m``. ``config.yaml`` nests them the same way.

Precedence, highest first: command-line flag > ``RETRIEVE_*`` environment variables >
the file given by ``--config`` or ``RETRIEVE_CONFIG`` > ``./config.yaml`` > built-in
defaults. :func:`load_settings` records where each value came from so that
``retrieve config`` can say it.

Every setting also has the flat name it had before the groups (``hnsw_m``, ``search_k``):
``RETRIEVE_*`` environment variables keep those names (``RETRIEVE_SEARCH_K``), so do the
keyword arguments of :meth:`Settings.with_overrides`, and a config file in the flat form
still loads, with a one-line notice naming the new key of each old one.

Relative paths in a config file are taken relative to that file's folder (so a config
file works from any working directory); relative paths from flags, the environment and
the defaults are relative to the current directory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from retrieval.errors import ConfigError

log = logging.getLogger("retrieval")

ENV_PREFIX = "RETRIEVE_"
INDEX_TYPES = ("auto", "flat", "hnsw", "hnsw_sq", "ivf")
SEARCH_MODES = ("dense", "keyword", "hybrid")  # the first is the default
BACKENDS = ("auto", "torch", "onnx", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "int8")
DEVICES = ("cpu", "cuda", "mps", "auto")
EXECUTORS = ("local", "ray")
PUBLISH_MODES = ("background", "wait")


@dataclass(frozen=True)
class StoreSettings:
    """Where documents and the index live."""

    database_url: str = "sqlite:///data/retrieval.db"
    index_dir: str = "data/index"
    busy_timeout_ms: int = 30_000  # how long a writer waits for another writer's lock
    keep_index_versions: int = 2  # manifest generations kept on disk


@dataclass(frozen=True)
class EncoderSettings:
    """The embedding model and how it runs."""

    model: str = "all-MiniLM-L6-v2"
    batch_size: int = 64
    device: str = "cpu"
    backend: str = "auto"
    precision: str = "auto"
    threads: int | None = None


@dataclass(frozen=True)
class IndexSettings:
    """How segments are built (type, HNSW, the recall guard) and merged."""

    type: str = "auto"
    hnsw_min_docs: int = 20_000
    compressed_min_docs: int = 20_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 100
    hnsw_ef_search: int = 16
    min_recall: float = 0.98
    merge_segments_per_tier: int = 10
    merge_max_at_once: int = 10
    merge_floor_docs: int = 1000
    merge_max_tombstones: float = 0.2
    merge_threads: int = 1
    merge_inline_max_docs: int = 1000
    merge_memory_mb: int = 1024  # what one merge may hold in memory (bounds the largest segment)
    # Passages: a document longer than the model's window is split into passages of at
    # most chunk_tokens tokens (None: the model's window; 0: off, one vector per document,
    # truncated as sentence-transformers truncates), overlapping by chunk_overlap tokens.
    chunk_tokens: int | None = None
    chunk_overlap: int = 0


@dataclass(frozen=True)
class SearchSettings:
    """What a search returns and what it may cost."""

    k: int = 5
    max_k: int = 1000
    min_score: float | None = None
    max_query_chars: int = 10_000
    threads: int = 1
    timeout_ms: int = 30_000  # how long one search may run in the database (0: no limit)
    filter_exact_rows: int = 8192
    # The query sample the recall guard calibrates with: how many recent query vectors are
    # kept per store and model (0: none, nothing is written), and whether each query's
    # text is kept beside its vector (never, unless this is true).
    query_sample: int = 1000
    log_queries: bool = False


@dataclass(frozen=True)
class IngestSettings:
    """Documents in: their largest size, where they are embedded, progress bars."""

    max_document_bytes: int = 1 << 20
    executor: str = "local"
    progress: bool = True
    # A write of at most background_max_docs documents (ingest or delete, from Python or
    # HTTP) returns once its transaction is durable; the index generation that holds it
    # is published in the background. "wait": every write publishes before it returns.
    publish: str = "background"
    background_max_docs: int = 1000


@dataclass(frozen=True)
class WorkerSettings:
    """`retrieve worker` (and the worker inside `retrieve serve`)."""

    poll_interval: float = 1.0
    max_batch: int = 10_000
    replica_name: str | None = None  # None: host name and index folder


@dataclass(frozen=True)
class ServeSettings:
    """`retrieve serve`: where it listens, its key, and request limits."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_body_bytes: int = 10_485_760
    max_batch: int = 1000


@dataclass(frozen=True)
class RaySettings:
    """The Ray cluster `--executor ray` embeds on."""

    address: str | None = None
    actors: int | None = None
    threads: int = 1


GROUPS: dict[str, type] = {"store": StoreSettings, "encoder": EncoderSettings, "index": IndexSettings,
                           "search": SearchSettings, "ingest": IngestSettings, "worker": WorkerSettings,
                           "serve": ServeSettings, "ray": RaySettings}

# The flat name of every setting (its name before the groups, kept by environment
# variables and keyword overrides) -> its name now.
FLAT: dict[str, str] = {
    "database_url": "store.database_url", "index_dir": "store.index_dir", "busy_timeout_ms": "store.busy_timeout_ms",
    "keep_index_versions": "store.keep_index_versions",
    "model": "encoder.model", "batch_size": "encoder.batch_size", "device": "encoder.device",
    "backend": "encoder.backend", "precision": "encoder.precision", "threads": "encoder.threads",
    "index_type": "index.type", "hnsw_min_docs": "index.hnsw_min_docs", "compressed_min_docs": "index.compressed_min_docs",
    "hnsw_m": "index.hnsw_m", "merge_memory_mb": "index.merge_memory_mb",
    "hnsw_ef_construction": "index.hnsw_ef_construction", "hnsw_ef_search": "index.hnsw_ef_search",
    "min_recall": "index.min_recall", "merge_segments_per_tier": "index.merge_segments_per_tier",
    "merge_max_at_once": "index.merge_max_at_once", "merge_floor_docs": "index.merge_floor_docs",
    "merge_max_tombstones": "index.merge_max_tombstones", "merge_threads": "index.merge_threads",
    "merge_inline_max_docs": "index.merge_inline_max_docs",
    "chunk_tokens": "index.chunk_tokens", "chunk_overlap": "index.chunk_overlap",
    "search_k": "search.k", "max_k": "search.max_k", "min_score": "search.min_score",
    "max_query_chars": "search.max_query_chars", "search_threads": "search.threads",
    "search_timeout_ms": "search.timeout_ms", "filter_exact_rows": "search.filter_exact_rows",
    "query_sample": "search.query_sample", "log_queries": "search.log_queries",
    "max_document_bytes": "ingest.max_document_bytes", "executor": "ingest.executor", "progress": "ingest.progress",
    "publish": "ingest.publish", "background_max_docs": "ingest.background_max_docs",
    "worker_poll_interval": "worker.poll_interval", "worker_max_batch": "worker.max_batch",
    "replica_name": "worker.replica_name",
    "host": "serve.host", "port": "serve.port", "api_key": "serve.api_key", "max_body_bytes": "serve.max_body_bytes",
    "max_batch": "serve.max_batch",
    "ray_address": "ray.address", "ray_actors": "ray.actors", "ray_threads": "ray.threads",
}
# Every setting's name, group by group, in declaration order, with its field.
_FIELDS: dict[str, dataclasses.Field[Any]] = {f"{g}.{f.name}": f for g, cls in GROUPS.items() for f in fields(cls)}
assert set(FLAT.values()) == set(_FIELDS), "every setting has one flat name"


@dataclass(frozen=True)
class Settings:
    """Every setting of the service, by group; see config.yaml for what each one means."""

    store: StoreSettings = field(default_factory=StoreSettings)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    ray: RaySettings = field(default_factory=RaySettings)
    # Where each value came from, by name: "default", "./config.yaml", "env RETRIEVE_MODEL", ...
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def get(self, name: str) -> Any:
        """A setting by its name (``index.hnsw_m``) or its flat name (``hnsw_m``)."""
        group, key = _name(name, "get").split(".")
        return getattr(getattr(self, group), key)

    def with_overrides(self, source: str, **values: Any) -> Settings:
        """A copy with ``values`` (by flat name, as flags and scripts pass them; None means
        "not given") applied and validated."""
        return self.with_values(source, {_name(k, source): v for k, v in values.items() if v is not None})

    def with_values(self, source: str, values: Mapping[str, Any], *, validate: bool = True) -> Settings:
        """A copy with ``values`` (by name: ``index.hnsw_m``) from ``source`` applied."""
        if not values:
            return self
        changes: dict[str, dict[str, Any]] = {}
        srcs = dict(self.sources)
        for name, value in values.items():
            group, key = name.split(".")
            changes.setdefault(group, {})[key] = _coerce(name, value, source)
            srcs[name] = source
        new = dataclasses.replace(self, **{g: dataclasses.replace(getattr(self, g), **c) for g, c in changes.items()},
                                  sources=srcs)
        if validate:
            new.validate()
        return new

    def validate(self) -> None:
        """Check values that a type alone does not constrain."""
        e, i, s = self.encoder, self.index, self.search
        _choice("index.type", i.type, INDEX_TYPES, self.sources)
        _choice("encoder.backend", e.backend, BACKENDS, self.sources)
        _choice("encoder.precision", e.precision, PRECISIONS, self.sources)
        _choice("ingest.executor", self.ingest.executor, EXECUTORS, self.sources)
        _choice("ingest.publish", self.ingest.publish, PUBLISH_MODES, self.sources)
        if e.device not in DEVICES and not e.device.startswith("cuda:"):
            raise ConfigError(f"encoder.device: must be one of {', '.join(DEVICES)} or cuda:N, got {e.device!r}")
        for name in ("encoder.batch_size", "search.threads", "search.k", "search.max_k", "search.max_query_chars",
                     "index.hnsw_m", "index.hnsw_ef_search", "index.hnsw_ef_construction", "index.hnsw_min_docs",
                     "index.compressed_min_docs",
                     "index.merge_max_at_once", "index.merge_floor_docs", "index.merge_threads",
                     "search.filter_exact_rows", "worker.max_batch", "store.keep_index_versions",
                     "ingest.max_document_bytes", "ingest.background_max_docs", "ray.threads"):
            if self.get(name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {self.get(name)}")
        for name in ("encoder.threads", "ray.actors"):
            if self.get(name) is not None and self.get(name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {self.get(name)}")
        for name in ("store.busy_timeout_ms", "search.timeout_ms", "index.merge_inline_max_docs", "search.query_sample"):
            if self.get(name) < 0:
                raise ConfigError(f"{name}: must not be negative, got {self.get(name)}")
        if i.merge_memory_mb < 128:
            raise ConfigError(f"index.merge_memory_mb: must be at least 128, got {i.merge_memory_mb}")
        if i.chunk_tokens is not None and i.chunk_tokens != 0 and i.chunk_tokens < 8:
            raise ConfigError(f"index.chunk_tokens: must be 0 (off) or at least 8, got {i.chunk_tokens}")
        if i.chunk_overlap < 0 or (i.chunk_tokens and i.chunk_overlap >= i.chunk_tokens // 2):
            raise ConfigError(f"index.chunk_overlap: must be at least 0 and under half of index.chunk_tokens, "
                              f"got {i.chunk_overlap}")
        if not 0 < i.min_recall <= 1:
            raise ConfigError(f"index.min_recall: must be in (0, 1], got {i.min_recall}")
        if i.merge_segments_per_tier < 2:
            raise ConfigError(f"index.merge_segments_per_tier: must be at least 2, got {i.merge_segments_per_tier}")
        if not 0 < i.merge_max_tombstones < 1:
            raise ConfigError(f"index.merge_max_tombstones: must be in (0, 1), got {i.merge_max_tombstones}")
        if s.k > s.max_k:
            raise ConfigError(f"search.k ({s.k}) is larger than search.max_k ({s.max_k})")
        if self.worker.poll_interval <= 0:
            raise ConfigError(f"worker.poll_interval: must be positive, got {self.worker.poll_interval}")

    def describe(self) -> list[tuple[str, Any, str]]:
        """(name, value, source) for every setting, group by group."""
        return [(name, _masked(name, self.get(name)), self.sources.get(name, "default")) for name in _FIELDS]

    def as_nested(self) -> dict[str, dict[str, Any]]:
        """Every value, grouped as config.yaml nests them (secrets included)."""
        out: dict[str, dict[str, Any]] = {}
        for name in _FIELDS:
            group, key = name.split(".")
            out.setdefault(group, {})[key] = self.get(name)
        return out


def _choice(name: str, value: str, allowed: tuple[str, ...], sources: Mapping[str, str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: must be one of {', '.join(allowed)}, got {value!r} "
                          f"(from {sources.get(name, 'default')})")


def _name(key: str, source: str) -> str:
    """A setting's name from its name or its flat name; an unknown one is an error."""
    if key in _FIELDS:
        return key
    if key in FLAT:
        return FLAT[key]
    raise ConfigError(f"unknown setting {key!r} in {source} (known settings: {', '.join(_FIELDS)})")


_SECRETS = ("serve.api_key",)


def _masked(name: str, value: Any) -> Any:
    """Secrets are shown as set or not, never printed."""
    if name in _SECRETS and value:
        return "***"
    return value


_PATH_FIELDS = ("store.index_dir",)


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check ``value`` against the field's declared type; strings from env/flags are parsed."""
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
    if name == "store.database_url" and isinstance(value, str) and value.startswith("sqlite:///"):
        rest = value[len("sqlite:///") :]
        if rest and not rest.startswith("/") and not rest.startswith(":memory:"):
            return "sqlite:///" + str(base_dir / rest)
    return value


def _read_file(path: Path, label: str) -> dict[str, Any]:
    """A config file's values by name. Groups nest (``index: {hnsw_m: 32}``); a dotted
    key (``index.hnsw_m``) works too; a flat key of before the groups loads with a notice."""
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
    out: dict[str, Any] = {}
    old: list[str] = []
    for key, value in raw.items():
        if key in GROUPS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{key} in {label}: expected a mapping of {key} settings, got {_type_name(value)}")
            for sub, item in value.items():
                out[_name(f"{key}.{sub}", label)] = item
        elif key in FLAT:
            out[FLAT[key]] = value
            old.append(key)
        else:
            out[_name(str(key), label)] = value
    for key in old:
        log.warning("%s: setting %r is now %r (the old name still works)", label, key, FLAT[key])
    return out


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Settings:
    """Build the effective settings from defaults, config files, environment and flags.

    ``config_path`` is the ``--config`` flag; when None, ``RETRIEVE_CONFIG`` is used.
    ``overrides`` are command-line flags by flat name (None values are ignored).
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
        values = _read_file(path, label)
        base_dir = path.resolve().parent
        # A null in the file for an optional value means "explicitly unset".
        settings = settings.with_values(label, {k: _rebase(k, v, base_dir) for k, v in values.items()},
                                        validate=False)

    env_values: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key in (ENV_PREFIX + "CONFIG", ENV_PREFIX + "SERVER"):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in FLAT:
            raise ConfigError(f"unknown setting in environment variable {key} (known settings: {', '.join(FLAT)})")
        env_values[name] = value
    for name, value in env_values.items():
        settings = settings.with_values(f"env {ENV_PREFIX}{name.upper()}", {FLAT[name]: value}, validate=False)

    if overrides:
        for name, value in overrides.items():
            if value is not None:
                settings = settings.with_values(f"flag --{name.replace('_', '-')}", {_name(name, 'flags'): value},
                                                validate=False)
    settings.validate()
    return settings
