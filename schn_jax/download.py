"""Files fetched from the web on first use, checked and cached: CIFAR-10's archive,
torchvision's ImageNet weights.

A `RemoteFile` is a published URL and the checksum of the file behind it. `fetch_all`
checks the cached copies and downloads the others with pooch, which streams each into
a temporary file beside its place in the cache and renames it there only once it has
been checked: the cache never holds a partial or unchecked file.

Environment:
  SCHN_JAX_CACHE         the cache folder (default: pooch's per-user cache folder,
                         ~/.cache/schn_jax on Linux);
  SCHN_JAX_DOWNLOAD_URL  a base URL that replaces every file's publisher: a mirror
                         that holds the files under their published names.

Without network, the error names each missing file, its URL and the path to put it at.
"""

import dataclasses
import logging
import os
import pathlib
import sys
import urllib.parse

import pooch
import requests

from schn_jax import errors

CACHE_ENV = "SCHN_JAX_CACHE"
URL_ENV = "SCHN_JAX_DOWNLOAD_URL"
# Seconds without a byte before a download is given up (connecting, or mid-body).
TIMEOUT_S = 60

# pooch logs every download, and the SHA-256 to paste into a registry, through a
# handler of its own; this module says what it downloads itself.
pooch.get_logger().setLevel(logging.WARNING)


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  """A published file: its URL, and '<algorithm>:<hex digest, or its leading digits>'
  (torchvision publishes the leading digits of each file's SHA-256, in its name)."""

  url: str
  checksum: str

  @property
  def name(self) -> str:
    return self.url.rsplit("/", 1)[-1]


class DownloadError(errors.DataNotFoundError):
  """Files that are not in the cache and could not be downloaded."""


class ChecksumError(ValueError):
  """A downloaded file whose digest is not the published one."""


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get(CACHE_ENV) or pooch.os_cache("schn_jax")).expanduser()


def cached_path(remote: RemoteFile) -> pathlib.Path:
  return cache_dir() / remote.name


def source_url(remote: RemoteFile) -> str:
  """Where `remote` is downloaded from: its URL, or its name under $SCHN_JAX_DOWNLOAD_URL."""
  mirror = os.environ.get(URL_ENV)
  return f"{mirror.rstrip('/')}/{remote.name}" if mirror else remote.url


def digest_mismatch(path, checksum: str) -> str | None:
  """None when the file at `path` has `checksum`; otherwise what it has instead."""
  algorithm, expected = checksum.split(":")
  digest = pooch.file_hash(str(path), alg=algorithm)
  if digest.startswith(expected.lower()):
    return None
  return f"its {algorithm} is {digest[: max(len(expected), 8)]}..., the published one {expected}"


class _CheckedDownload:
  """A pooch downloader that checks the file before pooch moves it into the cache.

  pooch compares whole digests only, and torchvision publishes leading digits: the
  check runs here, on the temporary file pooch streams into (and deletes on error).
  """

  def __init__(self, remote: RemoteFile):
    self.remote = remote
    self.http = pooch.HTTPDownloader(progressbar=sys.stderr.isatty(), timeout=TIMEOUT_S)

  def __call__(self, url, output_file, pooch_instance):
    self.http(url, output_file, pooch_instance)
    mismatch = digest_mismatch(output_file, self.remote.checksum)
    if mismatch:
      raise ChecksumError(f"the downloaded file is not the published one: {mismatch}")


def _download_failure(error, url) -> str:
  """Why a download failed, in a few words."""
  if isinstance(error, ChecksumError):
    return str(error)
  if isinstance(error, requests.HTTPError):
    return f"the server answered HTTP {error.response.status_code}"
  if isinstance(error, requests.exceptions.ChunkedEncodingError):
    return "the connection broke off before the end of the file"
  if isinstance(error, requests.Timeout):
    return f"no answer for {TIMEOUT_S} s"
  if isinstance(error, requests.ConnectionError):
    return f"cannot connect to {urllib.parse.urlsplit(url).netloc}"
  if isinstance(error, requests.RequestException):
    return f"{type(error).__name__}: {errors.one_line(error)}"
  return f"cannot write the cache folder ({error.strerror or error}; {CACHE_ENV} moves it)"


def _fetch(remote: RemoteFile) -> pathlib.Path:
  path = cached_path(remote)
  if path.is_file():
    mismatch = digest_mismatch(path, remote.checksum)
    if mismatch is None:
      return path
    logging.warning("%s is damaged or another version (%s): downloading it again", path, mismatch)
    path.unlink()
  url = source_url(remote)
  logging.info("downloading %s to %s", url, path)
  pooch.retrieve(
    url, known_hash=None, fname=path.name, path=path.parent, downloader=_CheckedDownload(remote)
  )
  return path


def fetch_all(remotes) -> list[pathlib.Path]:
  """The cached paths of `remotes`, downloading those that are missing or damaged.

  Raises DownloadError naming each file that could not be had, its URL and the
  path to put it at to work offline; nothing is left in the cache for those.
  """
  paths, failures = [], []
  for remote in remotes:
    try:
      paths.append(_fetch(remote))
    except (requests.RequestException, ChecksumError, OSError) as error:
      url = source_url(remote)
      failures.append(
        f"{url} ({_download_failure(error, url)}): put that file at {cached_path(remote)}"
      )
  if failures:
    raise DownloadError(
      f"not in the cache and cannot be downloaded: {'; '.join(failures)} "
      "(to work offline, copy each file there from a machine with network access)"
    )
  return paths
