"""Files of a shard set at any location, and object storage (``s3://``, ``gs://``, ``hf://``, ``az://``,
...) through fsspec: the only module that imports fsspec or one of its backends.

A shard set in object storage is a prefix holding ``manifest.json`` and the shards, exactly like a
folder. Credentials are whatever the backend reads from the environment (``AWS_ACCESS_KEY_ID`` /
``AWS_PROFILE`` / ``AWS_ENDPOINT_URL`` for s3fs, ``GOOGLE_APPLICATION_CREDENTIALS`` for gcsfs,
``HF_TOKEN`` for huggingface_hub) or fsspec's own ``FSSPEC_<PROTOCOL>_<OPTION>`` variables; vidshard
never takes a secret on its command line. A backend that is not installed is a :class:`MissingBackend`
error naming the extra to install (``pip install 'vidshard[s3]'``).

Readers never open these URLs directly: the loader's shards go through the sha256-checked cache
(:func:`vidshard.shards.cache.fetch_shard` calls :func:`download`); ``verify`` and ``copy`` stream whole
files of a set in a folder, at an http(s) prefix or in object storage with :func:`open_file` (and
hash every byte), small files (manifest, failures) come from :func:`read_file`, and ``copy`` writes
with :func:`upload`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .cache import CHUNK, FetchError, fetch_bytes
from .localset import open_set_file
from .schema import FAILURES, MANIFEST, MANIFEST_MAX_BYTES, check_shard_name

# Schemes that are not object storage: local paths, http(s) (urllib, with Range resumes), and
# webdataset's ``pipe:`` (no ``://``).
_NOT_REMOTE = ("file", "http", "https")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")

# Backend package and the vidshard extra that installs it, per scheme.
BACKENDS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
            "hf": ("huggingface_hub", "hf"), "az": ("adlfs", "azure"), "abfs": ("adlfs", "azure")}



class MissingBackend(FetchError):
    """The fsspec backend for a URL's scheme is not installed."""


def scheme(location: str) -> str | None:
    """``"s3"`` for ``s3://b/k``; ``None`` for a path or a ``pipe:`` command."""
    m = _SCHEME_RE.match(str(location))
    return m[1].lower() if m else None


def is_remote(location: str) -> bool:
    """True for an fsspec URL (object storage), False for a local path, ``file://``, http(s) or pipe:."""
    s = scheme(location)
    return s is not None and s not in _NOT_REMOTE


def join(base: str, name: str) -> str:
    """``s3://b/set/`` + ``train-000000.tar``; ``name`` must already be a checked shard name."""
    return base.rstrip("/") + "/" + name


def _is_http(location: str) -> bool:
    return str(location).startswith(("http://", "https://"))


def file_url(base: str, name: str) -> str:
    """URL or path of file ``name`` of the set at ``base`` (a folder, http(s) prefix or fsspec prefix).

    ``name`` is ``manifest.json``, ``failures.jsonl`` or a shard name, checked here (it may come from
    a manifest, and must not leave the set)."""
    if name not in (MANIFEST, FAILURES):
        check_shard_name(name)
    if is_remote(base) or _is_http(base):
        return join(base, name)
    return str(Path(base) / name)


def open_file(base: str, name: str, timeout_s: float = 60.0) -> BinaryIO:
    """A binary read stream of file ``name`` of the set at ``base`` (see :func:`file_url`).

    Missing: ``FileNotFoundError`` (local, object storage) or ``urllib.error.HTTPError``."""
    url = file_url(base, name)
    if is_remote(url):
        return open_stream(url)
    if _is_http(url):
        import urllib.request

        return urllib.request.urlopen(url, timeout=timeout_s)
    return open_set_file(base, name)  # never a link out of the set's folder


def read_file(base: str, name: str, limit: int = MANIFEST_MAX_BYTES) -> bytes:
    """The whole small file ``name`` (``manifest.json``, ``failures.jsonl``) of the set at ``base``,
    refused (``ValueError``) when over ``limit`` bytes; ``FileNotFoundError`` when absent."""
    url = file_url(base, name)
    if is_remote(url):
        return read_small(url, limit)
    if _is_http(url):
        data = fetch_bytes(url)
    else:
        with open_set_file(base, name) as f:
            data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{url}: over the {limit} bytes such a file may have")
    return data


def parent(url: str) -> str:
    """The prefix a file URL lives under, ending in ``/``."""
    return url.rsplit("/", 1)[0] + "/"


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path within it.

    Raises :class:`MissingBackend` (naming the extra to install) when its package is missing, and
    :class:`FetchError` for a scheme fsspec does not know.
    """
    s = scheme(url) or "file"
    try:
        import fsspec
    except ImportError:
        raise MissingBackend(f"{url}: object storage needs fsspec: pip install fsspec") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        package, extra = BACKENDS.get(s, (None, None))
        hint = (f"pip install 'vidshard[{extra}]' (or pip install {package})" if extra
                else f"install the fsspec backend for {s}://")
        raise MissingBackend(f"{url}: {s}:// needs a package that is not installed ({e}); {hint}") from None
    except ValueError as e:  # "Protocol not known"
        raise FetchError(f"{url}: {e}; give a folder, an http(s):// URL or an fsspec URL such as "
                         "s3://bucket/set/") from None


def size(url: str) -> int | None:
    """Bytes of the object at ``url``, or ``None`` when there is none."""
    fs, path = filesystem(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    if info.get("type") == "directory":
        return None
    return int(info["size"])


def read_small(url: str, limit: int = MANIFEST_MAX_BYTES) -> bytes:
    """The whole object at ``url`` (a manifest or failures list), refusing one over ``limit`` bytes."""
    n = size(url)
    if n is None:
        raise FileNotFoundError(f"{url}: no such object")
    if n > limit:
        raise FetchError(f"{url}: {n} bytes, more than the {limit} a manifest may have; is this the "
                         "shard set's manifest.json?")
    fs, path = filesystem(url)
    return fs.cat_file(path)


def open_stream(url: str) -> BinaryIO:
    """A binary read stream of the object at ``url`` (``FileNotFoundError`` when absent)."""
    fs, path = filesystem(url)
    return fs.open(path, "rb", block_size=4 * CHUNK)


def download(url: str, tmp: Path, expected: int) -> tuple[int, str]:
    """Fetch ``url`` into ``tmp``, resuming a partial ``tmp``; returns its size and SHA-256.

    At most ``expected + 1`` bytes are read, so a larger object is a size mismatch, not a full disk.
    """
    have = tmp.stat().st_size if tmp.exists() else 0
    if have > expected:
        have = 0
    sha = hashlib.sha256()
    if have:
        with open(tmp, "rb") as f:
            while block := f.read(CHUNK):
                sha.update(block)
    with open_stream(url) as src, open(tmp, "ab" if have else "wb") as f:
        if have:
            src.seek(have)
        got, left = 0, expected + 1 - have
        while left > 0 and (block := src.read(min(CHUNK, left))):
            f.write(block)
            sha.update(block)
            got, left = got + len(block), left - len(block)
        f.flush()
        os.fsync(f.fileno())
    return have + got, sha.hexdigest()


def upload(src: BinaryIO, url: str, on_bytes: Callable[[int], object] | None = None,
           limit: int | None = None) -> tuple[int, str]:
    """Write the stream ``src`` to ``url``; returns the bytes written and their SHA-256. At most
    ``limit`` bytes are read (a longer source is cut there and fails its size check).

    Object stores publish an object only when its upload completes, so a killed copy leaves nothing
    half-written under the shard's name.
    """
    fs, path = filesystem(url)
    sha, total = hashlib.sha256(), 0
    with fs.open(path, "wb") as out:
        while (limit is None or total < limit) and (block := src.read(CHUNK)):
            out.write(block)
            sha.update(block)
            total += len(block)
            if on_bytes:
                on_bytes(len(block))
    return total, sha.hexdigest()


def write_small(url: str, data: bytes) -> None:
    """Write a small object (the manifest, last) in one request."""
    fs, path = filesystem(url)
    fs.pipe_file(path, data)


def remove(url: str) -> None:
    """Delete the object at ``url`` if it exists."""
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)
