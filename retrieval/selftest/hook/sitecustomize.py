"""Fault injection for the crash harness, retrieval.selftest (inert unless RETRIEVAL_CHAOS_* is set).

Put first on a child process's PYTHONPATH by the harness; Python imports it at start-up.
It pauses the process before its n-th durable step under the index folder (step
kills), or makes the first write of a new index file fail half-way with ENOSPC.
"""
import builtins
import errno
import os
import time

_INDEX = os.environ.get("RETRIEVAL_CHAOS_INDEX_DIR")
_PAUSE_AT = int(os.environ.get("RETRIEVAL_CHAOS_PAUSE_AT") or 0)
_MARKER = os.environ.get("RETRIEVAL_CHAOS_MARKER")
_ENOSPC = os.environ.get("RETRIEVAL_CHAOS_ENOSPC") == "1"
_count = 0


def _fd_path(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _under_index(path):
    return bool(_INDEX) and os.path.abspath(os.fsdecode(path)).startswith(_INDEX)


def _pausing(name, fn, path_of):
    def wrapper(*args, **kwargs):
        global _count
        if _under_index(path_of(args)):
            _count += 1
            if _count == _PAUSE_AT and _MARKER:
                # Say where we stopped, then wait for the SIGKILL.
                tmp = _MARKER + ".tmp"
                with builtins.open(tmp, "w") as fh:
                    fh.write(f"{name} #{_count} {os.fsdecode(path_of(args))}")
                _rename(tmp, _MARKER)
                time.sleep(3600)
        return fn(*args, **kwargs)
    return wrapper


class _FullDisk:
    """A file whose first write stores half the bytes, then fails like a full disk."""

    def __init__(self, fh, path):
        self._fh, self._path = fh, path

    def write(self, data):
        self._fh.write(bytes(data)[: max(1, len(data) // 2)])
        self._fh.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()
        return False

    def __getattr__(self, name):
        return getattr(self._fh, name)


def _is_new_index_file(path):
    p = os.fsdecode(path)
    return _under_index(p) and "/.tmp-" in p and os.path.basename(p).endswith(".faiss")


_rename = os.rename
if _INDEX and _PAUSE_AT:
    os.fsync = _pausing("fsync", os.fsync, lambda a: _fd_path(a[0]))
    os.rename = _pausing("rename", os.rename, lambda a: a[0])
    os.replace = _pausing("replace", os.replace, lambda a: a[0])

if _INDEX and _ENOSPC:
    _open = builtins.open
    _write = os.write

    def open(file, mode="r", *args, **kwargs):
        fh = _open(file, mode, *args, **kwargs)
        if isinstance(file, (str, bytes, os.PathLike)) and ("w" in mode or "a" in mode) and _is_new_index_file(file):
            return _FullDisk(fh, os.fsdecode(file))
        return fh

    def write(fd, data):
        if _is_new_index_file(_fd_path(fd)):
            _write(fd, bytes(data)[: max(1, len(data) // 2)])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _write(fd, data)

    builtins.open = open
    os.write = write
