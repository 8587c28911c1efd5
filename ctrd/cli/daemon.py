"""``ctrd``: run the daemon, or print its config.

    ctrd [-c CONFIG] [--root DIR] [--state DIR] [-a ADDRESS] [-l LEVEL]
    ctrd config default      # the full default config (version 3), every plugin's section
    ctrd config dump         # the effective config (file + flags), as version 3
    ctrd config migrate      # the config file (-c) as version 3 (its imports left as they are)

argparse, not click: this is the daemon's start path, and every import counts there. The
common daemon command lines (only the value options above, as ``--opt value`` or
``--opt=value``) are read by :func:`_fast_args` without importing argparse (and the
``shutil`` and ``gettext`` it pulls in: bench/README.md, "Figures the code cites");
anything else (help, the ``config`` command, a bad
value, an abbreviation) goes through argparse, so errors and help read as before.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

# What _fast_args accepts: option -> (destination, allowed values or None for any).
_LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal", "panic")
_VALUE_OPTIONS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "-c": ("config", None), "--config": ("config", None),
    "--root": ("root", None), "--state": ("state", None),
    "-a": ("address", None), "--address": ("address", None),
    "-l": ("log_level", _LOG_LEVELS), "--log-level": ("log_level", _LOG_LEVELS),
    "--log-format": ("log_format", ("text", "json")),
}


def _fast_args(argv: list[str]) -> SimpleNamespace | None:
    """The namespace argparse would build for ``argv``, when ``argv`` only holds the value
    options of :data:`_VALUE_OPTIONS` with plain values; None when argparse must decide."""
    ns = SimpleNamespace(config=None, root=None, state=None, address=None, log_level=None,
                         log_format=None, version=False, command=None)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            opt, _, value = arg.partition("=")
            i += 1
        else:
            if i + 1 >= len(argv):
                return None
            opt, value = arg, argv[i + 1]
            i += 2
            # argparse reads a value that starts with "-" as an option (or a negative number).
            if value.startswith("-"):
                return None
        spec = _VALUE_OPTIONS.get(opt)
        if spec is None or not value or (spec[1] is not None and value not in spec[1]):
            return None
        setattr(ns, spec[0], value)
    return ns


def _parser() -> "argparse.ArgumentParser":
    import argparse

    p = argparse.ArgumentParser(prog="ctrd", description="A containerd-compatible container "
                                "runtime daemon.")
    p.add_argument("-c", "--config", help="path to the TOML config file (containerd's format, "
                   "version 1 to 4)")
    p.add_argument("--root", help="persistent data directory (default /var/lib/ctrd)")
    p.add_argument("--state", help="ephemeral state directory (default /run/ctrd)")
    p.add_argument("-a", "--address", help="gRPC socket path (default /run/ctrd/ctrd.sock)")
    p.add_argument("-l", "--log-level", choices=list(_LOG_LEVELS))
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument("--version", "-v", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command")
    c = sub.add_parser("config", help="print configuration")
    c.add_argument("what", choices=["default", "dump", "migrate"])
    return p


def _load(args: "argparse.Namespace | SimpleNamespace"):
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

    from ctrd.config_versions import CRI, split_cri, to_v4

    data = encode(cfg)
    plugins = {uri: encode(c) for uri, c in registry.default_configs().items()}
    for uri, section in cfg.plugins.items():
        plugins.setdefault(uri, {}).update(section)
    if CRI in plugins:  # ctrd's one CRI table, as the version 3 sections
        plugins.update(split_cri(plugins[CRI]))
    data["plugins"] = dict(sorted(plugins.items()))
    return tomli_w.dumps(to_v4(data))


def migrate_toml(path: str | None) -> str:
    """The config file at ``path`` in the version 4 shape: only what the file sets, as
    containerd 2.3.4's ``config migrate`` (imported files are not read)."""
    import tomli_w

    from ctrd.config import ConfigError, _read_toml
    from ctrd.config_versions import to_v3, to_v4

    if path is None:
        raise ConfigError("config migrate: no config file (use -c FILE)")
    try:
        return tomli_w.dumps(to_v4(to_v3(_read_toml(Path(path)))))
    except ConfigError as e:
        raise ConfigError(f"config {path}: {e.detail}") from None


def main(argv: list[str] | None = None) -> int:
    args = _fast_args(sys.argv[1:] if argv is None else argv)
    if args is None:
        args = _parser().parse_args(argv)
    from ctrd import __version__, log
    from ctrd.errdefs import CtrdError

    if args.version:
        print(f"ctrd {__version__}")
        return 0
    if args.command == "config" and args.what == "migrate":
        try:
            sys.stdout.write(migrate_toml(args.config))
        except CtrdError as e:
            print(f"ctrd: {e}", file=sys.stderr)
            return 1
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
                    found: list[str] = []
                    try:
                        decode(reg.config, section, f'plugins."{uri}"', found)
                    except CtrdError as e:
                        print(f"ctrd: {cfg.rename(str(e))}", file=sys.stderr)
                        return 1
                    warnings += [cfg.rename(w) for w in found]
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
    # would delay a restart (bench/README.md: sigterm_to_exit).
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
