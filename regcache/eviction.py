"""Eviction policy: which cached objects to remove, decided from a snapshot. Pure: no I/O.

The input is one `Entry` per object found on disk (tag record, manifest or blob) with its
size, its last access (the file's mtime) and what it references. The output is a `Plan`.
Expiry is computed here, at sweep time, from the current config: no timers, no schedule,
so a TTL change applies to everything already cached (style.md C10).

Policy, in order:
1. Grace. Anything accessed or written within `grace` is never removed (in-flight fills
   have just committed; a client that got a manifest is about to ask for its blobs).
2. Orphans. A tag record naming a manifest that is not stored is removed (after grace).
3. Sliding TTL. Roots are the objects accessed within `ttl` (tags, manifests and blobs;
   every hit refreshes the access time) plus the protected ones. Everything reachable
   from a root is live: a tag keeps its manifest, an index keeps its child manifests, a
   manifest keeps its config and layers. A blob is therefore never removed while a live
   manifest references it, even if the blob itself was not pulled recently, and a blob
   shared by two images lives while either image does. What is not live has expired.
4. Size cap and free-space floor. If the live content (blob and manifest bytes) exceeds
   `high_watermark * max_size`, or free space is below `min_free_space`, live objects are
   evicted least-recently-used first until the content is down to `low_watermark *
   max_size` (and free space is back at the floor plus the same watermark gap).
   The unit of eviction is one object, in order of its own last access, but an object is
   pinned while a remaining object references it: evicting a tag unpins its manifest,
   evicting a manifest unpins its blobs, which then go in their own LRU turn, or at once
   if nothing but that pin held them (unused for `ttl` themselves). So content shared with
   a hot image is never evicted, and an image's blobs follow its manifest out.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

TAG, MANIFEST, BLOB = "tag", "manifest", "blob"


class Entry(NamedTuple):
    """One stored object. `key` is unique across kinds ("blob:sha256:..", "tag:up/repo/_tags/t").
    A NamedTuple: a gc of 100k blobs builds 100k of these."""

    key: str
    kind: str
    size: int
    last_access: float
    refs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    """The numbers the plan depends on, taken from CacheConfig (and --grace)."""

    ttl: float
    grace: float
    max_size: int = 0
    high_watermark: float = 0.95
    low_watermark: float = 0.85
    min_free_space: int = 0


@dataclass(slots=True)
class Plan:
    """What to remove and why; removals are listed referrers first (tags, manifests, blobs)."""

    expired: list[str] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    evicted: list[str] = field(default_factory=list)
    content_bytes: int = 0          # blob + manifest bytes before
    live_bytes: int = 0             # after expiry, before eviction
    target_bytes: int | None = None  # eviction target, if eviction was needed
    target_reached: bool = True

    def removals(self) -> list[tuple[str, str]]:
        """(key, reason) for every removal, referrers before what they reference."""
        items = [(k, "orphaned") for k in self.orphaned] + [(k, "expired") for k in self.expired] + \
                [(k, "evicted") for k in self.evicted]
        order = {TAG: 0, MANIFEST: 1, BLOB: 2}
        return sorted(items, key=lambda item: order[kind_of(item[0])])


def key_for(kind: str, name: str) -> str:
    return f"{kind}:{name}"


def kind_of(key: str) -> str:
    return key.split(":", 1)[0]


def counts_toward_size(entry: Entry) -> bool:
    """Store size is blob and manifest bytes; tag records are a few hundred bytes."""
    return entry.kind != TAG


def plan(entries: dict[str, Entry], now: float, policy: Policy, free_bytes: int | None = None) -> Plan:
    """Decide removals for this snapshot; see the module docstring for the policy."""
    result = Plan(content_bytes=sum(e.size for e in entries.values() if counts_toward_size(e)))
    protected = {k for k, e in entries.items() if now - e.last_access < policy.grace}
    result.orphaned = sorted(k for k, e in entries.items()
                             if e.kind == TAG and k not in protected and not _present(e.refs, entries))
    orphans = set(result.orphaned)
    roots = [k for k, e in entries.items()
             if k not in orphans and (k in protected or now - e.last_access < policy.ttl)]
    live = _reachable(roots, entries)
    result.expired = sorted(k for k in entries if k not in live and k not in orphans)
    result.live_bytes = sum(entries[k].size for k in live if counts_toward_size(entries[k]))
    target = _target_bytes(result, policy, free_bytes, entries)
    if target is not None:
        result.target_bytes = target
        result.evicted, remaining = _evict_lru(entries, live, protected, set(roots), result.live_bytes, target)
        result.target_reached = remaining <= target
    return result


def _present(refs: tuple[str, ...], entries: dict[str, Entry]) -> bool:
    return bool(refs) and all(r in entries for r in refs)


def _reachable(roots: Iterable[str], entries: dict[str, Entry]) -> set[str]:
    live: set[str] = set()
    stack = list(roots)
    while stack:
        key = stack.pop()
        if key in live or key not in entries:
            continue
        live.add(key)
        stack.extend(entries[key].refs)
    return live


def _target_bytes(result: Plan, policy: Policy, free_bytes: int | None,
                  entries: dict[str, Entry]) -> int | None:
    """Live content bytes to shrink to, or None when neither the cap nor the floor is hit."""
    live = result.live_bytes
    target: int | None = None
    if policy.max_size and live > policy.high_watermark * policy.max_size:
        target = int(policy.low_watermark * policy.max_size)
    if free_bytes is not None and policy.min_free_space:
        # Removing the expired content frees its bytes before eviction is considered.
        freed = result.content_bytes - live
        if free_bytes + freed < policy.min_free_space:
            gap = policy.high_watermark - policy.low_watermark
            wanted_free = int(policy.min_free_space * (1 + gap))
            floor_target = max(0, live - (wanted_free - free_bytes - freed))
            target = floor_target if target is None else min(target, floor_target)
    return target


def _evict_lru(entries: dict[str, Entry], live: set[str], protected: set[str], roots: set[str],
               live_bytes: int, target: int) -> tuple[list[str], int]:
    """Evict live, unprotected objects oldest first, honouring pins; returns (keys, bytes left).

    An object that was live only through a referrer (itself unused for `ttl`) goes with its
    last referrer at once, whatever the target: it has expired, the pin was all that held it.
    """
    pins = {k: 0 for k in live}
    for key in live:
        for ref in set(entries[key].refs):
            if ref in pins:
                pins[ref] += 1
    heap = [(entries[k].last_access, k) for k in live if k not in protected]
    heapq.heapify(heap)
    pinned_aside: set[str] = set()
    evicted: list[str] = []
    while heap and live_bytes > target:
        _, key = heapq.heappop(heap)
        if key in pinned_aside or pins[key] < 0:
            continue  # already evicted by a cascade
        if pins[key] > 0:
            pinned_aside.add(key)  # comes back when its last referrer is evicted
            continue
        cascade = [key]
        while cascade:
            victim = cascade.pop()
            pins[victim] = -1  # marks it evicted
            evicted.append(victim)
            if counts_toward_size(entries[victim]):
                live_bytes -= entries[victim].size
            for ref in set(entries[victim].refs):
                if ref not in pins or pins[ref] <= 0:
                    continue
                pins[ref] -= 1
                if pins[ref] == 0 and ref not in protected:
                    if ref not in roots:
                        pinned_aside.discard(ref)
                        cascade.append(ref)
                    elif ref in pinned_aside:
                        pinned_aside.discard(ref)
                        heapq.heappush(heap, (entries[ref].last_access, ref))
    return evicted, live_bytes
