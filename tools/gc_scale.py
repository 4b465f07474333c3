#!/usr/bin/env python3
"""How long `regcache gc` takes on a big store: builds a synthetic store, times the real CLI.

    python3 tools/gc_scale.py                       # 100,000 blobs, 10,000 manifests
    python3 tools/gc_scale.py --blobs 20000 --dir /tmp/gcscale --keep

The store has the v1 layout written by regcache (blobs by digest, manifests with their
media type line, tag records), small random-sized blobs, and manifests that each reference
a config and 9 layers drawn from a shared pool (so blobs are shared, as base layers are).
Access times: a third of the tags are 40 days old (expired with the 720h TTL), the rest
spread over the last 10 days; max_size is set so that the size cap evicts too.
It then runs, as subprocesses: `gc --dry-run`, `gc` (the real removal) and `gc` again
(nothing left to do), and prints each one's wall time and summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
DAY = 86400


def write_blob(root: Path, data: bytes) -> str:
    hexd = hashlib.sha256(data).hexdigest()
    folder = root / "v1" / "blobs" / "sha256" / hexd[:2]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hexd).write_bytes(data)
    return hexd


def build(root: Path, blobs: int, manifests: int, seed: int = 1) -> dict[str, int]:
    rng = random.Random(seed)
    now = time.time()
    layers_per_manifest = 9
    pool = [write_blob(root, rng.randbytes(rng.randint(64, 4096))) for _ in range(blobs - manifests)]
    total_bytes = 0
    for i in range(manifests):
        config = write_blob(root, json.dumps({"image": i}).encode())
        layers = rng.sample(pool, layers_per_manifest)
        body = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                       "digest": f"sha256:{config}"},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 1,
                        "digest": f"sha256:{d}"} for d in layers]}).encode()
        mhex = hashlib.sha256(body).hexdigest()
        mpath = root / "v1" / "manifests" / "sha256" / mhex[:2] / mhex
        mpath.parent.mkdir(parents=True, exist_ok=True)
        mpath.write_bytes(MANIFEST_TYPE.encode() + b"\n" + body)
        tag = root / "v1" / "tags" / "docker.io" / f"org{i % 100}" / f"app{i}" / "_tags" / "latest"
        tag.parent.mkdir(parents=True, exist_ok=True)
        tag.write_text(json.dumps({"digest": f"sha256:{mhex}", "media_type": MANIFEST_TYPE,
                                   "size": len(body), "validated_at": now}))
        when = now - 40 * DAY if i % 3 == 0 else now - rng.uniform(0, 10 * DAY)
        paths = [tag, mpath, root / "v1" / "blobs" / "sha256" / config[:2] / config]
        paths += [root / "v1" / "blobs" / "sha256" / d[:2] / d for d in layers]
        for path in paths:  # a later image that shares a layer overwrites with its own time
            os.utime(path, (when, when))
    for sub in ("tmp", "quarantine"):
        (root / "v1" / sub).mkdir(parents=True, exist_ok=True)
    for folder in (root / "v1" / "blobs", root / "v1" / "manifests"):
        for dirpath, _, files in os.walk(folder):
            total_bytes += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return {"blobs": blobs, "manifests": manifests, "content_bytes": total_bytes}


def run_gc(config: Path, *extra: str) -> tuple[float, dict]:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "regcache", "gc", "--config", str(config), "--json", *extra],
                         check=True, capture_output=True, text=True)
    return time.monotonic() - started, json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blobs", type=int, default=100_000)
    parser.add_argument("--manifests", type=int, default=10_000)
    parser.add_argument("--dir", help="where to build the store (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    args = parser.parse_args()
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="gcscale-"))
    root = base / "data"
    if root.exists():
        shutil.rmtree(root)
    started = time.monotonic()
    info = build(root, args.blobs, args.manifests)
    print(f"built {info['blobs']} blobs, {info['manifests']} manifests, {info['manifests']} tags, "
          f"{info['content_bytes'] / 2**20:.1f} MiB in {time.monotonic() - started:.1f} s at {root}")
    config = base / "regcache.yaml"
    config.write_text(json.dumps({"storage": {"root": str(root)},
                                  "cache": {"max_size": int(info["content_bytes"] * 0.8)}}))
    for label, extra in (("gc --dry-run", ("--dry-run",)), ("gc", ()), ("gc (again)", ())):
        wall, report = run_gc(config, *extra)
        removed = report["removed_total"]
        print(f"{label:14} wall {wall:6.2f} s (gc itself {report['duration_seconds']:.2f} s): "
              f"scanned {sum(t['objects'] for t in report['scanned'].values())} objects, "
              f"removed {removed['objects']} ({removed['bytes'] / 2**20:.1f} MiB; "
              f"{ {k: v['objects'] for k, v in report['removed'].items()} }), "
              f"kept {report['kept']['objects']}")
    if not args.keep and not args.dir:
        shutil.rmtree(base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
