"""Where tables, stores and outputs live: a local path or an ``s3://`` URI, as a pyarrow filesystem.

The S3-compatible endpoint and region come from the environment (``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``); credentials from the usual AWS chain, never from arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local path or ``s3://`` URI (S3-compatible endpoint from env)."""
    parsed = urlparse(str(uri))
    if parsed.scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        fs = pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True,
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
