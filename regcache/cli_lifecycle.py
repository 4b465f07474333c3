"""The maintenance subcommands `gc`, `check` and `warm`: arguments, output, exit status.

Summaries go to stdout (or one JSON document with --json); progress goes to stderr, at
most once a second, so a CronJob log shows that a long run is moving.
Exit status: 0 done (also when another gc held the lock), 1 a real failure (a file that
could not be read or removed, an image that could not be warmed), 2 bad usage or config;
`check` exits 1 when it found and quarantined corrupt content.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import TextIO

from regcache.config import ConfigError, Settings, parse_duration


class ProgressPrinter:
    """Progress lines on stderr (`gc: scan blobs 45000`), at most one per `every` seconds and
    none during the first `every` seconds: a short run prints only its summary."""

    def __init__(self, prefix: str, stream: TextIO | None = None, every: float = 1.0) -> None:
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.every = every
        self._last = time.monotonic()

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        of = f"/{total}" if total is not None else ""
        print(f"{self.prefix}: {phase} {done}{of}", file=self.stream, flush=True)


def add_parsers(sub: argparse._SubParsersAction, config_help: str) -> None:  # type: ignore[type-arg]
    gc = sub.add_parser("gc", help="remove expired, orphaned and over-budget content (safe while serving)")
    gc.add_argument("--config", "-c", help=config_help)
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    gc.add_argument("--grace", help="keep anything used or written within this duration (default: cache.gc_grace)")
    gc.add_argument("--list", action="store_true", help="print every removed object (default with --dry-run)")
    gc.add_argument("--progress", type=float, default=1.0, metavar="SECONDS",
                    help="progress on stderr at most this often, after the first SECONDS (default 1)")
    check = sub.add_parser("check", help="re-hash stored blobs and manifests; quarantine mismatches")
    check.add_argument("--config", "-c", help=config_help)
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--dry-run", action="store_true", help="report mismatches; move nothing")
    warm = sub.add_parser("warm", help="pull images (every platform) through a running regcache")
    warm.add_argument("--config", "-c", help=config_help)
    warm.add_argument("images", nargs="*", metavar="IMAGE", help="[host/]name[:tag|@digest]")
    warm.add_argument("-f", "--file", help="read images from this file (one a line, # comments)")
    warm.add_argument("--url", help="regcache URL (default: http://127.0.0.1:<first listener port>)")
    warm.add_argument("--platform", action="append", default=[],
                      help="only these platforms, e.g. linux/amd64 (repeatable; default: all)")
    warm.add_argument("--concurrency", type=int, default=4, help="blobs fetched at once (default 4)")
    warm.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(command: str, args: argparse.Namespace, settings: Settings) -> int:
    if command == "gc":
        return run_gc(args, settings)
    if command == "check":
        return run_check(args, settings)
    return run_warm(args, settings)


def run_gc(args: argparse.Namespace, settings: Settings) -> int:
    from regcache.gc import collect, summary_lines
    from regcache.store import FsStore

    try:
        grace = parse_duration(args.grace, "--grace") if args.grace is not None else None
    except ConfigError as exc:
        print(f"regcache gc: {exc}", file=sys.stderr)
        return 2
    store = FsStore(settings.storage_root)
    if not store.root.is_dir():
        print(f"regcache gc: {store.root} does not exist yet; nothing to collect", file=sys.stderr)
    report = collect(store, settings.cache, dry_run=args.dry_run, grace=grace,
                     progress=ProgressPrinter("gc", every=args.progress))
    with_items = args.list or args.dry_run
    if args.json:
        print(json.dumps(report.to_json(with_items=with_items), indent=2))
    else:
        if with_items:
            for item in report.items:
                print(f"{item.reason:8} {item.kind:8} {item.bytes:>12} {item.name}")
        print("\n".join(summary_lines(report)))
    for error in report.errors:
        print(f"regcache gc: {error}", file=sys.stderr)
    return 1 if report.errors else 0


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    from regcache.check import check_store, summary_lines
    from regcache.store import FsStore

    report = check_store(FsStore(settings.storage_root), quarantine=not args.dry_run,
                         progress=ProgressPrinter("check"))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(summary_lines(report)))
    for error in report.errors:
        print(f"regcache check: {error}", file=sys.stderr)
    if report.errors:
        return 1
    return 1 if report.corrupt else 0


def run_warm(args: argparse.Namespace, settings: Settings) -> int:
    from regcache.warm import default_url, read_image_list, warm_images

    images = list(args.images)
    if args.file:
        try:
            images += read_image_list(args.file)
        except OSError as exc:
            print(f"regcache warm: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return 2
    if not images:
        print("regcache warm: name at least one IMAGE or give -f FILE", file=sys.stderr)
        return 2
    url = args.url or default_url(settings)
    summary = asyncio.run(warm_images(url, images, platforms=args.platform,
                                      concurrency=max(1, args.concurrency), stream=sys.stderr))
    print(json.dumps(summary.to_json(), indent=2) if args.json else "\n".join(summary.lines()))
    return 1 if summary.failed else 0
