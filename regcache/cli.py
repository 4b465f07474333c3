"""The `regcache` command: serve (default), and the maintenance subcommands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any, Callable, Coroutine

from regcache import __version__, cli_lifecycle
from regcache.config import ConfigError, Settings, load_settings
from regcache.log import setup_logging

log = logging.getLogger("regcache")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regcache", description="Pull-through cache for container registries")
    parser.add_argument("--version", action="version", version=f"regcache {__version__}")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the registry API (default)")
    serve.add_argument("--config", "-c", help="YAML config file (default: built-in, or $REGCACHE_CONFIG)")
    cli_lifecycle.add_parsers(sub, "YAML config file (default: built-in, or $REGCACHE_CONFIG)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "serve"
    try:
        settings = load_settings(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"regcache: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log)
    for warning in settings.warnings:
        log.warning("config: %s", warning)
    if command == "serve":
        return serve(settings)
    if command in ("gc", "check", "warm"):
        return cli_lifecycle.run(command, args, settings)
    parser.error(f"unknown command {command}")
    return 2


def serve(settings: Settings) -> int:
    runner: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop  # faster event loop; optional

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(_serve(settings))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


async def _serve(settings: Settings) -> None:
    from regcache.app import running

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings):
        log.info("regcache %s ready; storage at %s", __version__, settings.storage_root)
        await stop.wait()
        log.info("shutting down")
