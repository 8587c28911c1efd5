"""``ctrd``: run the daemon, or print its config.

    ctrd [-c CONFIG] [--root DIR] [--state DIR] [-a ADDRESS] [-l LEVEL]
    ctrd config default      # the full default config, every plugin's section included
    ctrd config dump         # the effective config (file + flags)

argparse, not click: this is the daemon's start path, and every import counts there.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctrd", description="A containerd-compatible container "
                                "runtime daemon.")
    p.add_argument("-c", "--config", help="path to the TOML config file (version 2)")
    p.add_argument("--root", help="persistent data directory (default /var/lib/ctrd)")
    p.add_argument("--state", help="ephemeral state directory (default /run/ctrd)")
    p.add_argument("-a", "--address", help="gRPC socket path (default /run/ctrd/ctrd.sock)")
    p.add_argument("-l", "--log-level", choices=["trace", "debug", "info", "warn", "warning",
                                                 "error", "fatal", "panic"])
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument("--version", "-v", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")
    c = sub.add_parser("config", help="print configuration")
    c.add_argument("what", choices=["default", "dump"])
    return p


def _load(args: argparse.Namespace):
    from ctrd.config import load

    result = load(args.config)
    cfg = result.config
    if args.root:
        cfg.root = args.root
    if args.state:
        cfg.state = args.state
    if args.address:
        cfg.grpc.address = args.address
    if args.log_level:
        cfg.debug.level = args.log_level
    if args.log_format:
        cfg.debug.format = args.log_format
    return cfg, result.warnings


def config_toml(cfg, registry) -> str:
    """``cfg`` as TOML, with every plugin's section: defaults overlaid by what ``cfg`` sets."""
    import tomli_w

    from ctrd.config import encode

    data = encode(cfg)
    plugins = {uri: encode(c) for uri, c in registry.default_configs().items()}
    for uri, section in cfg.plugins.items():
        plugins.setdefault(uri, {}).update(section)
    data["plugins"] = dict(sorted(plugins.items()))
    return tomli_w.dumps(data)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ctrd import __version__, log
    from ctrd.errdefs import CtrdError

    if args.version:
        print(f"ctrd {__version__}")
        return 0
    try:
        cfg, warnings = _load(args)
    except CtrdError as e:
        print(f"ctrd: {e}", file=sys.stderr)
        return 1
    if args.command == "config":
        from ctrd.config import ServerConfig, decode
        from ctrd.plugins.registry import Registry

        registry = Registry()
        registry.discover()
        if args.what == "default":
            cfg = ServerConfig()
        else:
            for uri, section in cfg.plugins.items():  # validate what we print
                reg = next((r for r in registry.registrations if r.uri == uri), None)
                if reg is not None and reg.config is not None:
                    try:
                        decode(reg.config, section, f'plugins."{uri}"', warnings)
                    except CtrdError as e:
                        print(f"ctrd: {e}", file=sys.stderr)
                        return 1
            for w in warnings:
                print(f"ctrd: warning: {w}", file=sys.stderr)
        sys.stdout.write(config_toml(cfg, registry))
        return 0

    log.setup(cfg.debug.level, cfg.debug.format)
    import asyncio

    from ctrd.daemon import run

    try:
        asyncio.run(run(cfg, warnings))
    except CtrdError as e:
        print(f"ctrd: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    # Everything is closed and flushed by now; skip interpreter and grpc teardown, which
    # takes ~100 ms and would delay a restart.
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
