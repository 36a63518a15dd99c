"""Fetch a model's files from where the ModelDeployment says they are.

Sources: `http(s)://` (one file, or a .tar.gz/.tgz/.tar/.zip that is unpacked), `s3://bucket/prefix` (one object
or every object under the prefix), a local or PVC path (file or directory, read in place), and a prebuilt
`.mar` from any of those. A directory source is the root that the model's relative paths resolve against.
"""

from __future__ import annotations

import hashlib
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import blake3

from .digests import sha256_and_blake3_of, sha256_of
from .errors import PackagingError, SpecField

if TYPE_CHECKING:
    from typing import BinaryIO

CHUNK_BYTES = 8 << 20
HTTP_TIMEOUT_SECONDS = 30
HTTP_ATTEMPTS = 3
# Bundles that hold a whole model directory; they are unpacked, and a single top-level folder is entered.
BUNDLE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


@dataclass(frozen=True)
class FetchedModel:
    """The model's files on local disk.

    `root` is the directory that relative paths (serialized file, model file, handler, ...) resolve against.
    `single_file` is the file itself when the source named one file rather than a directory.
    """

    root: Path
    single_file: Path | None = None
    # BLAKE3 of `single_file`, when it was hashed anyway (alongside the sha256 check): not hashed again.
    single_file_blake3: str | None = None
    # sha256 of `single_file`, when it was hashed while downloading.
    single_file_sha256: str | None = None
    # BLAKE3 hex of downloaded files (resolved paths), hashed as they were written: not read again.
    downloaded_blake3: Mapping[Path, str] = field(default_factory=dict)

    def known_blake3(self, path: Path) -> str | None:
        resolved = path.resolve()
        if self.single_file is not None and resolved == self.single_file.resolve() and self.single_file_blake3:
            return self.single_file_blake3
        return self.downloaded_blake3.get(resolved)

    @property
    def prebuilt_archive(self) -> Path | None:
        """A .mar file, or a .mar directory (torch-model-archiver's unpacked layout), served as it is."""
        if self.single_file is not None and self.single_file.suffix == ".mar":
            return self.single_file
        if self.single_file is None and self.root.suffix == ".mar":
            return self.root
        return None


def fetch(source: str, staging: Path, sha256: str | None = None) -> FetchedModel:
    """Bring the source onto local disk (downloads go under `staging`), check its digest, unpack bundles."""
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        fetched = _fetch_http(source, staging / "download", with_sha256=bool(sha256))
    elif scheme == "s3":
        fetched = _fetch_s3(source, staging / "download", with_sha256=bool(sha256))
    elif scheme in ("", "file"):
        fetched = _fetch_local(source)
    else:
        raise PackagingError(
            f"source {source}",
            f"unsupported scheme {scheme!r}: use http(s)://, s3:// or a path",
            SpecField.STORAGE_URI,
        )
    if sha256:
        fetched = _verify_sha256(source, fetched, sha256)
    if fetched.single_file is not None and fetched.single_file.name.endswith(BUNDLE_SUFFIXES):
        return FetchedModel(root=_unpack(source, fetched.single_file, staging / "unpacked"))
    return fetched


# --- local and PVC paths -------------------------------------------------------------------------------


def _fetch_local(source: str) -> FetchedModel:
    path = Path(unquote(urlsplit(source).path) if source.startswith("file:") else source)
    if path.is_dir():
        return FetchedModel(root=path)
    if path.is_file():
        return FetchedModel(root=path.parent, single_file=path)
    raise PackagingError(f"source {source}", "no such file or directory", SpecField.STORAGE_URI)


# --- http(s) -------------------------------------------------------------------------------------------


# --- downloads: written and hashed in one pass ------------------------------------------------------------


class HashingWriter:
    """Writes a download to its file and hashes each chunk on its way there: the file is never read back.

    Not seekable, so that s3transfer, which fetches byte ranges concurrently, hands it the ranges in order.
    """

    def __init__(self, out: BinaryIO, *, with_blake3: bool, with_sha256: bool) -> None:
        self._out = out
        # One thread per hash: the download's other threads (or the network) keep the other core.
        self._blake3 = blake3.blake3(max_threads=1) if with_blake3 else None
        self._sha256 = hashlib.sha256() if with_sha256 else None

    def write(self, data: bytes) -> int:
        written = self._out.write(data)
        for hasher in (self._blake3, self._sha256):
            if hasher is not None:
                hasher.update(data)
        return written

    def seekable(self) -> bool:
        return False

    def digests(self) -> tuple[str | None, str | None]:
        """(BLAKE3 hex, sha256 hex) of everything written, each None when not asked for."""
        return (
            self._blake3.hexdigest() if self._blake3 is not None else None,
            self._sha256.hexdigest() if self._sha256 is not None else None,
        )


@contextmanager
def hashing_writer(destination: Path, *, with_sha256: bool) -> Iterator[HashingWriter]:
    # A bundle is unpacked, not archived: its BLAKE3 would serve nothing.
    with destination.open("wb") as out:
        yield HashingWriter(out, with_blake3=not destination.name.endswith(BUNDLE_SUFFIXES), with_sha256=with_sha256)


def _fetch_http(url: str, destination_dir: Path, *, with_sha256: bool) -> FetchedModel:
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    if not name:
        raise PackagingError(
            f"source {url}", "the URL names no file (a directory cannot be listed over HTTP)", SpecField.STORAGE_URI
        )
    destination_dir.mkdir(parents=True, exist_ok=True)
    destination = destination_dir / name
    digests: list[tuple[str | None, str | None]] = []
    _retry(lambda: digests.append(_download(url, destination, with_sha256)), retryable=_is_transient_http_error)
    (blake3_hex, sha256_hex), *_ = digests
    return FetchedModel(destination_dir, destination, single_file_blake3=blake3_hex, single_file_sha256=sha256_hex)


def _download(url: str, destination: Path, with_sha256: bool) -> tuple[str | None, str | None]:
    import urllib.error  # only http(s) sources pay for importing the HTTP client
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "canaria-package"})
    try:
        with (
            urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response,
            hashing_writer(destination, with_sha256=with_sha256) as writer,
        ):
            while chunk := response.read(CHUNK_BYTES):
                writer.write(chunk)
            return writer.digests()
    except urllib.error.HTTPError as error:
        raise _HttpFailure(
            url, f"HTTP {error.code} {error.reason}", transient=error.code >= 500 or error.code == 429
        ) from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise _HttpFailure(url, f"unreachable ({reason})", transient=True) from error


class _HttpFailure(PackagingError):
    def __init__(self, url: str, problem: str, *, transient: bool) -> None:
        super().__init__(f"source {url}", problem, SpecField.STORAGE_URI)
        self.transient = transient


def _is_transient_http_error(error: Exception) -> bool:
    return isinstance(error, _HttpFailure) and error.transient


def _retry(action: Callable[[], None], retryable: Callable[[Exception], bool]) -> None:
    """Run `action`, retrying transient failures with a short backoff (kubelet restarts us after that)."""
    for attempt in range(1, HTTP_ATTEMPTS + 1):
        try:
            action()
            return
        except Exception as error:
            if attempt == HTTP_ATTEMPTS or not retryable(error):
                raise
            time.sleep(0.25 * 2**attempt)


# --- s3 ------------------------------------------------------------------------------------------------


def _fetch_s3(uri: str, destination_dir: Path, *, with_sha256: bool) -> FetchedModel:
    """One object, or every object under the prefix, downloaded with its path below the prefix kept.

    The endpoint (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3), region and credentials come from the environment,
    which botocore reads itself.
    """
    parts = urlsplit(uri)
    bucket, prefix = parts.netloc, parts.path.lstrip("/")
    if not bucket:
        raise PackagingError(f"source {uri}", "no bucket in the URI", SpecField.STORAGE_URI)
    client = _s3_client(uri)
    with _s3_errors(uri):
        if prefix and not prefix.endswith("/") and _s3_object_exists(client, bucket, prefix):
            destination = destination_dir / PurePosixPath(prefix).name
            destination_dir.mkdir(parents=True, exist_ok=True)
            blake3_hex, sha256_hex = _s3_download(client, bucket, prefix, destination, with_sha256)
            return FetchedModel(
                destination_dir, destination, single_file_blake3=blake3_hex, single_file_sha256=sha256_hex
            )
        folder = prefix.rstrip("/") + "/" if prefix else ""
        keys = list(_s3_keys(client, bucket, folder))
        if not keys:
            raise PackagingError(f"source {uri}", "object not found", SpecField.STORAGE_URI)
        downloaded = {}
        for key in keys:
            destination = _inside(destination_dir, key[len(folder) :], uri)
            destination.parent.mkdir(parents=True, exist_ok=True)
            blake3_hex, _ = _s3_download(client, bucket, key, destination, with_sha256=False)
            if blake3_hex is not None:
                downloaded[destination.resolve()] = blake3_hex
    return FetchedModel(root=destination_dir, downloaded_blake3=downloaded)


def _s3_download(
    client: Any, bucket: str, key: str, destination: Path, with_sha256: bool
) -> tuple[str | None, str | None]:
    """One object, its byte ranges fetched concurrently and written (and hashed) in order."""
    with hashing_writer(destination, with_sha256=with_sha256) as writer:
        client.download_fileobj(bucket, key, writer)
        return writer.digests()


def _s3_client(uri: str) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:  # pragma: no cover - the serving image always has boto3
        raise PackagingError(f"source {uri}", "boto3 is not installed in this image", SpecField.STORAGE_URI) from None
    config = Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.session.Session().client("s3", config=config)  # a fresh session: no cached credentials


def _s3_object_exists(client: Any, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def _s3_keys(client: Any, bucket: str, folder: str) -> Iterator[str]:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=folder):
        for item in page.get("Contents", []):
            if not item["Key"].endswith("/"):  # folder markers made by some consoles
                yield item["Key"]


@contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """Translate botocore's exceptions into one line that names the problem."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    subject = f"source {uri}"
    try:
        yield
    except NoCredentialsError as error:
        problem = "no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from a Secret)"
        raise PackagingError(subject, problem, SpecField.STORAGE_URI) from error
    except EndpointConnectionError as error:
        endpoint = error.kwargs.get("endpoint_url", "unknown endpoint")
        raise PackagingError(subject, f"S3 endpoint unreachable ({endpoint})", SpecField.STORAGE_URI) from error
    except ClientError as error:
        raise PackagingError(subject, _describe_s3_client_error(error), SpecField.STORAGE_URI) from error
    except BotoCoreError as error:
        raise PackagingError(subject, f"S3 request failed ({error})", SpecField.STORAGE_URI) from error


def _describe_s3_client_error(error: Any) -> str:
    details = error.response.get("Error", {})
    code = str(details.get("Code", "unknown"))
    if code in ("NoSuchBucket",):
        return "bucket not found"
    if code in ("404", "NoSuchKey", "NotFound"):
        return "object not found"
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return f"access denied ({code}): check the credentials Secret and the bucket policy"
    return f"S3 error {code}: {details.get('Message', '')}".strip()


# --- checks and bundles --------------------------------------------------------------------------------


def _verify_sha256(source: str, fetched: FetchedModel, expected: str) -> FetchedModel:
    """Check the user's sha256; a file that goes into the archive as it is gets its BLAKE3 in the same pass."""
    if fetched.single_file is None:
        raise PackagingError(f"source {source}", "a sha256 was given but the source is a directory", SpecField.SHA256)
    if fetched.single_file_sha256 is not None:  # hashed while downloading
        actual, blake3_hex = fetched.single_file_sha256, fetched.single_file_blake3
    elif fetched.single_file.name.endswith(BUNDLE_SUFFIXES):  # unpacked: its own BLAKE3 would serve nothing
        actual, blake3_hex = sha256_of(fetched.single_file), None
    else:
        actual, blake3_hex = sha256_and_blake3_of(fetched.single_file)
    if actual != expected.strip().lower():
        raise PackagingError(
            f"source {source}", f"sha256 mismatch: expected {expected}, got {actual}", SpecField.SHA256
        )
    return replace(fetched, single_file_blake3=blake3_hex)


def _unpack(source: str, bundle: Path, destination: Path) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    try:
        if bundle.name.endswith(".zip"):
            with zipfile.ZipFile(bundle) as archive:
                for member in archive.namelist():
                    _inside(destination, member, source)
                archive.extractall(destination)
        else:
            with tarfile.open(bundle) as archive:
                # The "data" filter refuses links out of the tree, device files and absolute paths.
                archive.extractall(destination, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as error:
        raise PackagingError(
            f"source {source}", f"cannot unpack {bundle.name} ({error})", SpecField.STORAGE_URI
        ) from error
    entries = list(destination.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else destination


def _inside(root: Path, relative: str, source: str) -> Path:
    """`root / relative`, refusing names that would escape `root` (`..`, absolute paths)."""
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise PackagingError(f"source {source}", f"refusing the path {relative!r}", SpecField.STORAGE_URI)
    return target
