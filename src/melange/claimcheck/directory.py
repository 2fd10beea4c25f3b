"""A payload store in a directory: one file per payload.

Every process that publishes or consumes must see the same directory (a local disk for one
host, a shared volume such as NFS or EFS for several). A payload is written to a temporary
file and renamed into place, so a reader never sees half of it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from melange.claimcheck.store import (
    PayloadMissingError,
    PayloadStore,
    PayloadStoreError,
    check_key,
)

#: The suffix of the files being written (never read as payloads, purged when stale).
_PARTIAL = ".partial"


class DirectoryPayloadStore(PayloadStore):
    """Keeps each payload in a file of ``directory`` (created if missing).

    Args:
        directory: The directory; every publisher and consumer must see the same one.
    """

    name = "directory"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"DirectoryPayloadStore({str(self.directory)!r})"

    def _path(self, key: str) -> Path:
        return self.directory / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key``, atomically (temporary file, then rename)."""
        path = self._path(key)
        try:
            handle, temporary = tempfile.mkstemp(
                dir=self.directory, prefix=f".{key}.", suffix=_PARTIAL
            )
            try:
                with os.fdopen(handle, "wb") as file:
                    file.write(data)
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as exc:
            raise PayloadStoreError(f"could not write payload {key!r} to {self!r}: {exc}") from exc

    def get(self, key: str) -> bytes:
        """The payload under ``key``."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise PayloadMissingError(f"no payload {key!r} in {self!r}") from None
        except OSError as exc:
            raise PayloadStoreError(f"could not read payload {key!r} from {self!r}: {exc}") from exc

    def delete(self, key: str) -> None:
        """Remove the payload under ``key`` (nothing if there is none)."""
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise PayloadStoreError(f"could not delete payload {key!r} in {self!r}: {exc}") from exc

    def purge(self, stored_before: float) -> int:
        """Remove the payloads (and abandoned partial writes) last written before
        ``stored_before``."""
        removed = 0
        for entry in os.scandir(self.directory):
            if not entry.is_file(follow_symlinks=False):
                continue
            try:
                if entry.stat().st_mtime < stored_before:
                    os.unlink(entry.path)
                    if not entry.name.endswith(_PARTIAL):
                        removed += 1
            except FileNotFoundError:
                continue  # removed by another process meanwhile
        return removed


__all__ = ["DirectoryPayloadStore"]
