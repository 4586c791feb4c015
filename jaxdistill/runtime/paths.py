"""Workdir and checkpoint paths: local directories, ``file://`` URIs and buckets alike.

Every file jaxdistill writes under a workdir (checkpoints, config.json, metrics, reports,
caches, exports) goes through `etils.epath`, which reads ``gs://`` (and ``s3://``) through
fsspec: ``pip install 'jaxdistill[gcs]'`` adds gcsfs for Cloud Storage. ``os.path`` would
turn ``gs://bucket/run`` into a local ``./gs:/bucket/run``.

Object stores have no rename: a remote file is written in one piece (an object appears
whole or not at all), where a local one is written beside its target and renamed.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from typing import Any

from etils import epath

from jaxdistill.errors import ConfigError

# The fsspec filesystem epath needs per URI scheme, and the extra that installs it.
BACKENDS = {'gs': ('gcsfs', 'gcs'), 's3': ('s3fs', 's3')}
REMOTE = tuple(f'{s}://' for s in ('gs', 's3', 'az', 'hf'))


def is_remote(path: Any) -> bool:
    return str(path).startswith(REMOTE)


def resolve(path: Any) -> str:
    """An absolute local path (``~`` expanded, ``file://`` URIs unwrapped), or a bucket URI
    as given without its trailing slash."""
    text = str(path)
    if text.startswith('file://'):
        text = text[len('file://'):] or '/'
    if is_remote(text):
        return text.rstrip('/')
    if '://' in text:
        scheme = text.split('://', 1)[0]
        raise ConfigError(f'{text}: {scheme}:// is not a supported location; use a local '
                          'directory, file://, or gs:// (pip install "jaxdistill[gcs]")')
    return os.path.abspath(os.path.expanduser(text))


def Path(path: Any) -> epath.Path:  # noqa: N802 - a constructor, like epath.Path
    return epath.Path(resolve(path))


def join(base: Any, *parts: str) -> str:
    """``os.path.join`` that keeps ``gs://`` intact."""
    return str(epath.Path(resolve(base)).joinpath(*parts))


def backend_installed(scheme: str) -> bool:
    """Whether epath can read ``scheme://``: its fsspec filesystem (or TensorFlow)."""
    package = BACKENDS.get(scheme, (None,))[0]
    return (package is None or importlib.util.find_spec(package) is not None
            or importlib.util.find_spec('tensorflow') is not None)


def check_backend(path: Any, key: str = '--workdir', error: type[Exception] = ConfigError) -> None:
    """A one-line error when ``path`` is a bucket whose filesystem is not installed."""
    text = str(path)
    if not is_remote(text):
        return
    scheme = text.split('://', 1)[0]
    if not backend_installed(scheme):
        package, extra = BACKENDS[scheme]
        raise error(f'{key}={text!r}: {scheme}:// needs {package}, which is not installed: '
                    f'pip install "jaxdistill[{extra}]"')


def check_writable(path: Any, key: str = '--workdir') -> str:
    """Resolves ``path`` and proves it can be written, without leaving anything behind.

    Locally the nearest existing parent gets a temporary directory (permission bits do not
    tell root about read-only mounts); in a bucket a probe object is written and deleted.
    """
    path = resolve(path)
    check_backend(path, key)
    root = epath.Path(path)
    if root.exists() and not root.is_dir():
        raise ConfigError(f'{key}={path} is a file: give a directory')
    if is_remote(path):
        probe = root / f'.jaxdistill-probe-{secrets.token_hex(6)}'
        try:
            probe.write_text('probe')
            probe.unlink()
        except Exception as e:  # noqa: BLE001 - any filesystem's permission error
            raise ConfigError(f'{key}={path}: cannot write there ({type(e).__name__}: '
                              f'{" ".join(str(e).split())[:160]}); check the bucket and your '
                              'credentials, or choose another location') from None
        return path
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f'{key}={path}: {probe} is a file, not a directory; choose '
                          f'another {key}')
    try:
        import tempfile

        tempfile.TemporaryDirectory(dir=probe).cleanup()
    except OSError as e:
        raise ConfigError(f'{key}={path}: cannot write in {probe} ({e.strerror}); '
                          'choose a directory you can write to') from None
    return path


def makedirs(path: Any) -> None:
    epath.Path(resolve(path)).mkdir(parents=True, exist_ok=True)


def exists(path: Any) -> bool:
    return epath.Path(resolve(path)).exists()


def read_text(path: Any) -> str:
    return epath.Path(resolve(path)).read_text()


def write_atomic(path: Any, data: str | bytes) -> None:
    """Never a half-written file: locally written beside ``path`` and renamed; in a bucket
    uploaded as one object."""
    target = epath.Path(resolve(path))
    if is_remote(target):
        (target.write_bytes if isinstance(data, bytes) else target.write_text)(data)
        return
    tmp = target.parent / f'{target.name}.tmp-{os.getpid()}'
    (tmp.write_bytes if isinstance(data, bytes) else tmp.write_text)(data)
    tmp.replace(target)
