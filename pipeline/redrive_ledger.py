"""One record of dead-letter re-drives, shared by the console's re-drive button and
`orderstream dlq replay`, so a dead letter is re-driven once whichever way it is asked.

The record is a Redis key per dead letter, `orderstream:redrive:<dlq topic>:<partition>:<offset>`
(the topic carries the namespace), claimed with SET NX before anything is published. Why Redis
and not a compacted Kafka topic: two claimants at the same moment (an operator's click and a CLI
run) must see one winner before either publishes. SET NX decides that in one round trip; a
compacted topic is read after the fact, so both could read "nobody yet" and both publish. The
keys never expire: the console can re-drive any letter ClickHouse still holds, however old, and
a key per re-driven letter is a few dozen bytes (dead letters are the rare malformed messages).

A claim says who (the operator), how (console or cli) and when, and is `claimed` until the
broker acknowledged the re-driven message, then `sent`. A publish that failed releases its claim
(only its own: compare-and-delete), so the letter may be asked again. A claimant that died between
claim and publish leaves `claimed`: the refusal says so, and the raw topic's `redriven_from`
header tells whether it went out.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Protocol

KEY_PREFIX = "orderstream:redrive:"
CLAIMED, SENT = "claimed", "sent"
VIA = {"console": "the console", "cli": "`orderstream dlq replay`"}


@dataclass(frozen=True)
class Redrive:
    """Who re-drove (or is re-driving) one dead letter, how and when."""
    letter_id: str
    operator: str
    via: str
    at_ms: int
    state: str = CLAIMED

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, text: str | bytes) -> "Redrive":
        return cls(**json.loads(text))

    @property
    def at_iso(self) -> str:
        return datetime.fromtimestamp(self.at_ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def describe(self) -> str:
        """The refusal a second attempt is given: who, how, when."""
        how = VIA.get(self.via, self.via)
        if self.state == SENT:
            return f"{self.letter_id} was already re-driven by {self.operator} with {how} at {self.at_iso}"
        return (f"{self.letter_id} was claimed for re-drive by {self.operator} with {how} at {self.at_iso}, "
                f"not yet confirmed sent (look for its redriven_from header on the raw topic)")


class RedriveStore(Protocol):
    """The four atomic operations the ledger needs (Redis: RedisRedriveStore)."""
    def add(self, key: str, value: str) -> bool: ...                 # set when absent; False when present
    def get(self, key: str) -> str | None: ...
    def replace(self, key: str, old: str, new: str) -> bool: ...     # only while the key still holds `old`
    def remove(self, key: str, old: str) -> bool: ...
    def keys(self, prefix: str) -> list[str]: ...                    # every key starting with `prefix`


@dataclass(frozen=True)
class Claim:
    won: bool
    record: Redrive   # ours when won, else the one that was there first


class RedriveLedger:
    def __init__(self, store: RedriveStore) -> None:
        self.store = store

    @staticmethod
    def key(letter_id: str) -> str:
        return KEY_PREFIX + letter_id

    def claim(self, letter_id: str, operator: str, via: str, at_ms: int) -> Claim:
        """Claim one letter for re-drive; lost when anybody (console or CLI) claimed it first."""
        if not operator.strip():
            raise ValueError("a re-drive names its operator")
        if via not in VIA:
            raise ValueError(f"via must be one of {sorted(VIA)}, not {via!r}")
        mine = Redrive(letter_id, operator.strip(), via, at_ms)
        if self.store.add(self.key(letter_id), mine.encode()):
            return Claim(True, mine)
        prior = self.find(letter_id)
        if prior is None:  # released between our add and get: one more try, still atomic
            return self.claim(letter_id, operator, via, at_ms)
        return Claim(False, prior)

    def confirm(self, claim: Redrive) -> Redrive:
        """The broker acknowledged the re-driven message: the claim becomes `sent`."""
        sent = replace(claim, state=SENT)
        if not self.store.replace(self.key(claim.letter_id), claim.encode(), sent.encode()):
            raise RuntimeError(f"the re-drive claim on {claim.letter_id} changed under its owner")
        return sent

    def release(self, claim: Redrive) -> None:
        """The publish failed: give the letter back (only our own claim)."""
        self.store.remove(self.key(claim.letter_id), claim.encode())

    def find(self, letter_id: str) -> Redrive | None:
        text = self.store.get(self.key(letter_id))
        return None if text is None else Redrive.decode(text)

    def sent(self, dlq_topic: str) -> list[Redrive]:
        """Every confirmed re-drive of a letter on `dlq_topic` (the console mirrors them into its list)."""
        records = (self.find(key.removeprefix(KEY_PREFIX)) for key in self.store.keys(self.key(f"{dlq_topic}:")))
        return sorted((r for r in records if r is not None and r.state == SENT), key=lambda r: r.letter_id)


# compare-and-set / compare-and-delete: one server-side step, so no other claimant interleaves
_REPLACE = "if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('set', KEYS[1], ARGV[2]) return 1 end return 0"
_REMOVE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class RedisRedriveStore:
    """The ledger's store on the pipeline's Redis (sync client: the CLI is sync, the console calls
    it from a thread). The client connects on first use."""

    def __init__(self, client) -> None:
        self.client = client
        self._replace = client.register_script(_REPLACE)
        self._remove = client.register_script(_REMOVE)

    @classmethod
    def from_url(cls, url: str) -> "RedisRedriveStore":
        import redis
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, decode_responses=True))

    def add(self, key: str, value: str) -> bool:
        return bool(self.client.set(key, value, nx=True))

    def get(self, key: str) -> str | None:
        return self.client.get(key)

    def replace(self, key: str, old: str, new: str) -> bool:
        return bool(self._replace(keys=[key], args=[old, new]))

    def remove(self, key: str, old: str) -> bool:
        return bool(self._remove(keys=[key], args=[old]))

    def keys(self, prefix: str) -> list[str]:
        glob = re.sub(r"([*?\[\]\\])", r"\\\1", prefix)  # the prefix taken literally, then anything
        return list(self.client.scan_iter(match=glob + "*", count=500))


def redis_ledger(settings) -> RedriveLedger:
    return RedriveLedger(RedisRedriveStore.from_url(settings.redis))
