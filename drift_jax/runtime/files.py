"""Workdir files on any filesystem epath knows (local, gs://, ...): atomic writes, and local copies for the
libraries that only open local files.

Every path the pipeline writes goes through here, so a `gs://` workdir holds every output and no host
keeps one locally. Writes are whole-or-nothing: locally a temporary file renamed into place; on an object
store an upload (an object appears whole or not at all). Libraries that need a local file (ArrayRecord,
safetensors, tokenizers, matplotlib, TensorBoard) write into a local staging folder that is uploaded when
it is complete (`local_output`), and read from a local copy fetched once (`local_input`; the cache is
keyed by the remote path, size and modification time). On a local workdir both are the path itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from etils import epath


def path(p: str | os.PathLike) -> epath.Path:
    return epath.Path(p)


def is_local(p: str | os.PathLike) -> bool:
    return "://" not in os.fspath(p)


def join(*parts: str | os.PathLike) -> str:
    """`os.path.join` that keeps a `gs://` prefix intact (it does: it only adds separators)."""
    return os.path.join(*map(os.fspath, parts))


def absolute(p: str | os.PathLike) -> str:
    """An absolute local path, or the remote path as is (`os.path.abspath` would turn gs://b into ./gs:/b)."""
    return os.path.abspath(os.fspath(p)) if is_local(p) else os.fspath(p)


def exists(p: str | os.PathLike) -> bool:
    return path(p).exists()


def makedirs(p: str | os.PathLike) -> None:
    path(p).mkdir(parents=True, exist_ok=True)


def read_text(p: str | os.PathLike) -> str:
    return path(p).read_text()


def write_bytes(p: str | os.PathLike, data: bytes) -> None:
    """Writes the file whole or not at all (a reader never sees a partial file)."""
    target = path(p)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not is_local(p):
        target.write_bytes(data)  # one upload: the object appears whole
        return
    fd, tmp = tempfile.mkstemp(dir=os.fspath(target.parent), prefix=f".{target.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, os.fspath(target))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text(p: str | os.PathLike, text: str) -> None:
    write_bytes(p, text.encode())


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Moves a file or folder (on an object store: copy, then delete)."""
    if is_local(src) and is_local(dst):
        os.makedirs(os.path.dirname(os.fspath(dst)), exist_ok=True)
        shutil.move(os.fspath(src), os.fspath(dst))
        return
    s = path(src)
    if s.is_dir():
        _copy_tree(src, dst)
        s.rmtree()
    else:
        path(dst).parent.mkdir(parents=True, exist_ok=True)
        s.rename(path(dst))


def _copy_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copies every file under the folder `src` to the same relative path under `dst` (any filesystems)."""
    for f in walk_files(src):
        target = path(dst) / os.path.relpath(f, os.fspath(src))
        target.parent.mkdir(parents=True, exist_ok=True)
        path(f).copy(target, overwrite=True)


def remove(p: str | os.PathLike) -> None:
    q = path(p)
    if q.is_dir():
        q.rmtree()
    elif q.exists():
        q.unlink()


def walk_files(root: str | os.PathLike) -> list[str]:
    """Every file under `root` (or `root` itself if it is a file), sorted, as full paths."""
    r = path(root)
    if not r.exists():
        return []
    if not r.is_dir():
        return [os.fspath(r)]
    if is_local(root):
        return sorted(os.path.join(d, f) for d, _, fs in os.walk(os.fspath(r)) for f in fs)
    out, folders = [], [r]
    while folders:  # epath refuses ** on object stores; one listing per folder
        for f in folders.pop().iterdir():
            (folders if f.is_dir() else out).append(f)
    return sorted(os.fspath(f) for f in out)


@contextlib.contextmanager
def local_output(p: str | os.PathLike, *, is_dir: bool = False) -> Iterator[str]:
    """A local path to write the file (or folder) `p` into; on a remote `p` it is uploaded when the block
    ends without an error. A local file is written to a temporary name and renamed into place."""
    if is_local(p):
        if is_dir:
            os.makedirs(os.fspath(p), exist_ok=True)
            yield os.fspath(p)
            return
        os.makedirs(os.path.dirname(os.path.abspath(os.fspath(p))), exist_ok=True)
        tmp = f"{os.fspath(p)}.tmp-{os.getpid()}"
        try:
            yield tmp
            os.replace(tmp, os.fspath(p))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        return
    with tempfile.TemporaryDirectory(prefix="drift-out-") as staging:
        local = os.path.join(staging, path(p).name)
        if is_dir:
            os.makedirs(local)
        yield local
        if is_dir:
            path(p).mkdir(parents=True, exist_ok=True)
            _copy_tree(local, p)
        else:
            path(p).parent.mkdir(parents=True, exist_ok=True)
            epath.Path(local).copy(path(p), overwrite=True)


def cache_dir() -> str:
    return os.environ.get("DRIFT_CACHE") or os.path.join(tempfile.gettempdir(), "drift-cache")


def local_input(p: str | os.PathLike) -> str:
    """A local path holding the file or folder `p`: `p` itself when local, else a cached download."""
    if is_local(p):
        return os.fspath(p)
    src = path(p)
    files = walk_files(src)
    stats = [path(f).stat() for f in files]
    stamp = "\0".join(f"{f}:{st.length}:{st.mtime}" for f, st in zip(files, stats))
    key = hashlib.sha256(f"{os.fspath(p)}\0{stamp}".encode()).hexdigest()[:20]
    local = os.path.join(cache_dir(), key, src.name)
    done = os.path.join(cache_dir(), key, ".complete")
    if not os.path.exists(done):
        shutil.rmtree(os.path.join(cache_dir(), key), ignore_errors=True)
        for f in files:
            dest = local if f == os.fspath(src) else os.path.join(local, os.path.relpath(f, os.fspath(src)))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            path(f).copy(epath.Path(dest), overwrite=True)
        if not files:
            raise FileNotFoundError(f"{p}: no such file or folder")
        open(done, "w").close()
    return local
