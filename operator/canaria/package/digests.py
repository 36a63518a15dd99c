"""Digests: BLAKE3 for the archive Canaria builds, sha256 for the checksum the user gives.

The archive's digest is self-describing, `blake3:<hex>`, so that another algorithm can follow without
ambiguity. BLAKE3 hashes several GB/s per core (SIMD), where sha256 manages about 1.2 GB/s here, so the
digest no longer costs more than the copy it runs beside. `spec.model.sha256` stays sha256: that is the
checksum the user publishes with the file.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from pathlib import Path

import blake3

ALGORITHM = "blake3"


def labelled(hexdigest: str) -> str:
    """`blake3:<hex>`, the archive digest as it is printed and written to `<name>.digest`."""
    return f"{ALGORITHM}:{hexdigest}"


def blake3_of_bytes(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def blake3_of(path: Path, *, all_cores: bool = True) -> str:
    """BLAKE3 of a file read through mmap, outside the GIL.

    `all_cores` spreads the hash over every core; turn it off when another thread (a copy, a sha256)
    already keeps one core busy.
    """
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO if all_cores else 1)
    hasher.update_mmap(path)
    return hasher.hexdigest()


def sha256_of(path: Path) -> str:
    """sha256 of a file read through mmap: no copy into Python buffers, and the GIL is released while
    hashing, so another thread can work meanwhile."""
    with path.open("rb") as stream:
        if os.fstat(stream.fileno()).st_size == 0:
            return hashlib.sha256(b"").hexdigest()
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return hashlib.sha256(mapped).hexdigest()


def sha256_and_blake3_of(path: Path) -> tuple[str, str]:
    """Both digests of one file, hashed at the same time on two threads (the bytes are read once from
    disk; the second pass over them comes from the page cache, on the other core)."""
    result: list[str] = []
    failure: list[BaseException] = []

    def hash_blake3() -> None:
        try:
            result.append(blake3_of(path, all_cores=False))
        except BaseException as error:  # re-raised on the calling thread below
            failure.append(error)

    worker = threading.Thread(target=hash_blake3, name="canaria-blake3")
    worker.start()
    try:
        sha256 = sha256_of(path)
    finally:
        worker.join()
    if failure:
        raise failure[0]
    return sha256, result[0]
