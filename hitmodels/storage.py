"""Where tables, stores and outputs live: a local path or an ``s3://`` URI, as a pyarrow filesystem.

The S3-compatible endpoint and region come from the environment (``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``); credentials from the usual AWS chain, never from arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs


def s3_max_attempts() -> int:
    """Attempts per S3 request, the first included, for pyarrow and boto3 alike: throttling (503 SlowDown),
    5xx answers and dropped connections are retried with the AWS SDKs' standard exponential backoff with
    jitter. ``$HITMUSIC_S3_MAX_ATTEMPTS`` (default 8, at least 1), read where the job starts: the bound
    travels with the filesystem to every Ray task (:class:`RetryingS3FileSystem`)."""
    return max(1, int(os.environ.get("HITMUSIC_S3_MAX_ATTEMPTS", "8")))


def _transient(error: BaseException) -> bool:
    # a missing object or a refused one stays missing or refused: only the rest of OSError is tried again
    return isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, PermissionError))


def s3_read(fs: pafs.FileSystem, read, *args, **kwargs):
    """``read(*args, **kwargs)``, a read of ``fs`` (idempotent), tried again on an ``OSError`` from S3 up to
    :func:`s3_max_attempts` times with exponential backoff (0.2 s doubling, at most 5 s, with jitter).
    pyarrow's S3 client does not retry a 5xx or SlowDown answer to a GET of a small byte range (a Parquet
    footer, one column chunk): the error body overflows the range's buffer and surfaces as
    ``INTERNAL_FAILURE ... Failed to flush response stream``. Local filesystems are read once."""
    if not isinstance(fs, pafs.S3FileSystem):
        return read(*args, **kwargs)
    import tenacity

    # the bound the job started with, which the filesystem carries to the task this may run in
    attempts = getattr(fs, "max_attempts", None) or s3_max_attempts()
    retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(attempts), reraise=True,
                                 retry=tenacity.retry_if_exception(_transient),
                                 wait=tenacity.wait_exponential_jitter(initial=0.2, max=5.0))
    return retrying(read, *args, **kwargs)


class RetryingS3FileSystem(pafs.S3FileSystem):
    """An ``S3FileSystem`` whose retry bound survives pickling. pyarrow's own ``__reduce__`` drops the
    retry strategy, so a filesystem made on the driver and handed to a Ray task (Ray Data, Tune,
    ``fn_kwargs``) would retry with the SDK's default of 3 attempts. Credentials are not pickled either:
    each process takes them from its own AWS chain (instance profile, env, config files)."""

    def __init__(self, max_attempts: int, **options):
        self._rebuild_args = (max_attempts, options)
        super().__init__(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts), **options)

    @property
    def max_attempts(self) -> int:
        return self._rebuild_args[0]

    def __reduce__(self):
        return _rebuild_s3, self._rebuild_args


def _rebuild_s3(max_attempts: int, options: dict) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(max_attempts, **options)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local path or ``s3://`` URI (S3-compatible endpoint from env;
    transient errors retried, :func:`s3_max_attempts`)."""
    parsed = urlparse(str(uri))
    if parsed.scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        fs = RetryingS3FileSystem(s3_max_attempts(), endpoint_override=endpoint, allow_bucket_creation=True,
                                  region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
        return fs, f"{parsed.netloc}{parsed.path}".rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def parquet_files(fs: pafs.FileSystem, path: str) -> list[str]:
    """The ``*.parquet`` files directly in directory ``path`` (none when it does not exist), sorted."""
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(f.path for f in fs.get_file_info(pafs.FileSelector(path)) if f.path.endswith(".parquet"))


def is_s3(uri) -> bool:
    return urlparse(str(uri)).scheme == "s3"


def location(uri) -> str:
    """``uri`` as every process of a cluster can use it: an ``s3://`` URI unchanged, a local path made
    absolute here (a Ray worker's working directory is not the caller's)."""
    return str(uri) if is_s3(uri) else str(Path(uri).resolve())


def read_parquet(uri, columns: list[str] | None = None):
    """A Parquet file or directory, local or ``s3://``, as a DataFrame (with the pandas metadata it was
    written with, ``attrs`` included)."""
    import pandas as pd

    fs, path = filesystem(uri)
    return pd.read_parquet(path, filesystem=fs, columns=columns)


def read_text(uri: str) -> str | None:
    """A small text file's contents (a job's state), or None when it does not exist."""
    fs, path = filesystem(uri)
    if not exists(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def write_text(uri: str, text: str) -> None:
    """Replace a small text file whole: locally written beside it and renamed (a crash leaves the old
    one); on S3 an object is replaced whole by its PUT anyway."""
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return
    with fs.open_output_stream(path) as f:
        f.write(text.encode())
