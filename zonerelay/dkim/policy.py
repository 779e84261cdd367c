"""The relay's DKIM policy: which keys sign a message (decided at ingest, recorded in the metadata for
``queue show``) and the signatures themselves (made by the delivery worker, just before the headers go out).

Signing never stops a delivery: a message whose planned key has gone, or whose body hash is missing, is
logged and sent with the signatures that can still be made.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from zonerelay.config.model import DkimConfig
from zonerelay.dkim.canon import Canon
from zonerelay.dkim.keys import DkimKey, KeyRing, KeySpec
from zonerelay.dkim.signer import SignatureRequest, sign_message

__all__ = ["DkimPolicy"]

log = logging.getLogger("zonerelay.dkim")


def _domain_of(address: object) -> str | None:
    if not isinstance(address, str) or "@" not in address:
        return None
    return address.rpartition("@")[2].strip().rstrip(".").lower() or None


class DkimPolicy:
    def __init__(self, config: DkimConfig) -> None:
        specs = [KeySpec(k.domain, k.selector, k.private_key, k.sign_all) for k in config.keys]
        self.ring = KeyRing(specs, config.keys_dir or None)
        header_canon, body_canon = config.canonicalization.split("/")
        self.request = SignatureRequest(
            header_canon=cast(Canon, header_canon),
            body_canon=cast(Canon, body_canon),
            headers=tuple(config.headers),
            expire=config.expire,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.ring.keys) or self.ring.keys_dir is not None

    def keys_for(self, meta: dict[str, Any]) -> list[DkimKey]:
        """Keys for a message, from the first From: address ingest parsed (``meta["parsedEnvelope"]``)."""
        envelope = meta.get("parsedEnvelope") or {}
        return self.ring.for_domain(_domain_of(envelope.get("from")))

    def plan(self, meta: dict[str, Any]) -> list[dict[str, str]]:
        """``meta["dkimSignatures"]``: the signatures that will be made, as ``queue show`` lists them."""
        return [key.describe() for key in self.keys_for(meta)] if self.enabled else []

    def signatures(self, message_id: str, header_block: bytes, meta: dict[str, Any]) -> bytes:
        """The DKIM-Signature fields to prepend to ``header_block`` (b"" when nothing signs)."""
        keys = self.keys_for(meta) if self.enabled else []
        have = {(k.domain, k.selector) for k in keys}
        for planned in meta.get("dkimSignatures") or []:
            if (planned.get("domain"), planned.get("selector")) not in have:
                log.warning(
                    "dkim key %s/%s is gone; message %s goes out without its signature",
                    planned.get("domain"),
                    planned.get("selector"),
                    message_id,
                )
        if not keys:
            return b""
        try:
            return sign_message(keys, self.request, header_block, meta)
        except Exception:  # never hold mail back for a signature: send it, and say so loudly
            log.exception("dkim signing of message %s failed; sending it unsigned", message_id)
            return b""
