"""A payload store in an S3 bucket, through boto3 (the ``aws`` extra).

Each payload is one object, ``<prefix><key>``. boto3 is imported when a store is made, never
when Melange is. On AWS, a lifecycle rule expiring the prefix after the claim check's
lifetime does what :meth:`S3PayloadStore.purge` does, without a process to run it.
"""

from __future__ import annotations

from typing import Any

from melange.claimcheck.store import (
    PayloadMissingError,
    PayloadStore,
    PayloadStoreError,
    check_key,
)
from melange.exceptions import ConfigurationError

_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class S3PayloadStore(PayloadStore):
    """Keeps payloads as objects of an S3 bucket.

    Args:
        bucket: The bucket (it must exist).
        prefix: Prepended to every key (``"melange/payloads/"`` by default).
        client: A boto3 S3 client; by default one is made from ``client_options``
            (``endpoint_url``, ``region_name``, credentials) and the environment.
        client_options: Keyword arguments for ``boto3.client("s3", ...)``.
    """

    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "melange/payloads/",
        client: Any = None,
        **client_options: Any,
    ) -> None:
        if not bucket:
            raise ConfigurationError("S3PayloadStore needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix
        if client is None:
            try:
                import boto3
            except ImportError as exc:  # pragma: no cover - depends on the installation
                raise ConfigurationError(
                    "S3PayloadStore needs boto3: pip install melange[aws]"
                ) from exc
            client = boto3.client("s3", **client_options)
        self._client = client

    def __repr__(self) -> str:
        return f"S3PayloadStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _object(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _failed(self, action: str, key: str, exc: Exception) -> PayloadStoreError:
        return PayloadStoreError(
            f"{self!r} failed to {action} payload {key!r}: {type(exc).__name__}: {exc}"
        )

    def put(self, key: str, data: bytes) -> None:
        """Upload ``data`` as the object of ``key``."""
        name = self._object(key)
        try:
            self._client.put_object(Bucket=self.bucket, Key=name, Body=data)
        except Exception as exc:
            raise self._failed("store", key, exc) from exc

    def get(self, key: str) -> bytes:
        """Download the object of ``key``."""
        name = self._object(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=name)
            body: bytes = response["Body"].read()
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                raise PayloadMissingError(f"no payload {key!r} in {self!r}") from None
            raise self._failed("read", key, exc) from exc
        return body

    def delete(self, key: str) -> None:
        """Delete the object of ``key`` (S3 answers the same whether it existed or not)."""
        name = self._object(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=name)
        except Exception as exc:
            raise self._failed("delete", key, exc) from exc

    def purge(self, stored_before: float) -> int:
        """Delete the objects under the prefix last modified before ``stored_before``."""
        removed = 0
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                stale = [
                    {"Key": item["Key"]}
                    for item in page.get("Contents", ())
                    if item["LastModified"].timestamp() < stored_before
                ]
                # delete_objects takes at most 1,000 keys, as many as a listing page holds.
                if stale:
                    self._client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": stale, "Quiet": True}
                    )
                    removed += len(stale)
        except Exception as exc:
            raise PayloadStoreError(
                f"{self!r} failed to purge: {type(exc).__name__}: {exc}"
            ) from exc
        return removed


__all__ = ["S3PayloadStore"]
