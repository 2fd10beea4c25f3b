"""Claim check: payloads too large for the broker travel through a payload store.

:class:`ClaimCheck` is given to publishers and dispatchers; the stores are
:class:`DirectoryPayloadStore`, :class:`SQLPayloadStore` (SQLite, PostgreSQL) and
:class:`S3PayloadStore` (boto3, imported only when one is made). The wire format is in
:mod:`melange.claimcheck.wire`; see also :doc:`/claim-check`.
"""

from __future__ import annotations

from melange.claimcheck.claim_check import DEFAULT_LIFETIME, HEADROOM, ClaimCheck, is_claim_checked
from melange.claimcheck.directory import DirectoryPayloadStore
from melange.claimcheck.s3 import S3PayloadStore
from melange.claimcheck.sql import SQLPayloadStore
from melange.claimcheck.store import (
    ClaimCheckError,
    InvalidReferenceError,
    PayloadMissingError,
    PayloadStore,
    PayloadStoreError,
    PayloadUnreadableError,
)

__all__ = [
    "DEFAULT_LIFETIME",
    "HEADROOM",
    "ClaimCheck",
    "ClaimCheckError",
    "DirectoryPayloadStore",
    "InvalidReferenceError",
    "PayloadMissingError",
    "PayloadStore",
    "PayloadStoreError",
    "PayloadUnreadableError",
    "S3PayloadStore",
    "SQLPayloadStore",
    "is_claim_checked",
]
