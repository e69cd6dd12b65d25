"""The cache that makes a rerun cost nothing: samples and verdicts in diskcache under KOPT_HOME.

Every entry is written the moment it exists (one sample, one verdict), so an interrupted run resumes
where it stopped. Keys are a schema version, a namespace and the sha256 of the JSON of everything that
changes the value; values carry their own checksum, and an entry that fails it (or does not decode) is
dropped and recomputed, never trusted.

Namespaces:
- "sample": model, prompt hash, sampler parameters, seed, sample index -> Sample JSON
- "check":  candidate code hash, task hash, target, device, toolchain, isolation, eval settings -> EvalResult JSON
- "time":   the same plus the timing settings -> timed EvalResult JSON
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from kopt.config import kopt_home

SCHEMA = "v1"


def key_of(namespace: str, parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return f"{SCHEMA}:{namespace}:{hashlib.sha256(blob.encode()).hexdigest()}"


class Cache:
    """A small typed front on diskcache: JSON values, checksums, hit/miss counters per namespace."""

    def __init__(self, directory: Path | None = None, enabled: bool = True):
        self.directory = Path(directory) if directory else kopt_home() / "cache"
        self.enabled = enabled
        self.hits: Counter[str] = Counter()
        self.misses: Counter[str] = Counter()
        self.corrupt: Counter[str] = Counter()
        self._dc = None

    @property
    def _store(self):
        if self._dc is None:
            import diskcache

            self.directory.mkdir(parents=True, exist_ok=True)
            self._dc = diskcache.Cache(str(self.directory), size_limit=2**34)
        return self._dc

    def get(self, namespace: str, parts: dict[str, Any]) -> Any | None:
        if not self.enabled:
            self.misses[namespace] += 1
            return None
        key = key_of(namespace, parts)
        raw = self._store.get(key)
        if raw is None:
            self.misses[namespace] += 1
            return None
        try:
            envelope = json.loads(raw)
            payload = envelope["payload"]
            if hashlib.sha256(payload.encode()).hexdigest() != envelope["sha256"]:
                raise ValueError("checksum mismatch")
            value = json.loads(payload)
        except (ValueError, KeyError, TypeError):
            # A torn write or a disk error: never trust it, recompute.
            self._store.delete(key)
            self.corrupt[namespace] += 1
            self.misses[namespace] += 1
            return None
        self.hits[namespace] += 1
        return value

    def set(self, namespace: str, parts: dict[str, Any], value: Any) -> None:
        if not self.enabled:
            return
        payload = json.dumps(value, sort_keys=True, default=str)
        envelope = json.dumps({"sha256": hashlib.sha256(payload.encode()).hexdigest(), "payload": payload})
        self._store.set(key_of(namespace, parts), envelope)

    def stats(self) -> dict[str, Any]:
        return {
            "hits": dict(self.hits),
            "misses": dict(self.misses),
            "corrupt_dropped": dict(self.corrupt),
        }

    def save_run_stats(self, command: str) -> None:
        """Remember this run's hits and misses for `kopt cache info`."""
        if not self.enabled:
            return
        self._store.set(f"{SCHEMA}:meta:last_run", json.dumps({"command": command, "at": time.time(), **self.stats()}))

    def info(self) -> dict[str, Any]:
        store = self._store
        counts: Counter[str] = Counter()
        for key in store.iterkeys():
            parts = str(key).split(":")
            if len(parts) >= 2 and parts[1] != "meta":
                counts[parts[1]] += 1
        last = store.get(f"{SCHEMA}:meta:last_run")
        return {
            "directory": str(self.directory),
            "size_bytes": int(store.volume()),
            "entries": dict(counts),
            "last_run": json.loads(last) if last else None,
        }

    def clear(self) -> int:
        return int(self._store.clear())

    def close(self) -> None:
        if self._dc is not None:
            self._dc.close()
            self._dc = None

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
