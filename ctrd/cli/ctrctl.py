"""``ctrctl``: ctrd's friendlier command line (the real ``ctr`` is the behaviour reference).

    ctrctl [-a ADDRESS] [-n NAMESPACE] [--timeout DURATION] COMMAND ...
    ctrctl version [--format table|json]
    ctrctl plugins ls [-q] [-d] [--format table|json] [FILTER...]
    ctrctl namespaces ls [-q] [--format table|json]
    ctrctl namespaces create NAME [KEY=VALUE...]
    ctrctl namespaces label NAME KEY=VALUE...     # an empty value removes the label
    ctrctl namespaces rm NAME...

Aliases as in ctr: ``ns``/``namespace``, ``plugin``, ``list`` for ``ls``, ``remove`` for ``rm``,
``c`` for ``create``. Errors print ``ctrctl: <message>`` on stderr and exit 1; bad usage exits
2. grpc and the generated stubs are imported only by commands that talk to the daemon.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import click

from ctrd import __version__, errdefs
from ctrd.cli.client import DEFAULT_ADDRESS, DEFAULT_NAMESPACE, DEFAULT_TIMEOUT, Client
from ctrd.cli.output import FORMATS, print_json, print_table

PROG = "ctrctl"

# google.rpc.Code names as Go's codes.Code.String() spells them (what ctr prints)
CODE_NAMES = {
    0: "OK", 1: "Canceled", 2: "Unknown", 3: "InvalidArgument", 4: "DeadlineExceeded",
    5: "NotFound", 6: "AlreadyExists", 7: "PermissionDenied", 8: "ResourceExhausted",
    9: "FailedPrecondition", 10: "Aborted", 11: "OutOfRange", 12: "Unimplemented",
    13: "Internal", 14: "Unavailable", 15: "DataLoss", 16: "Unauthenticated",
}

STATUS_STYLES = {"ok": "green", "skip": "yellow", "error": "bold red"}


# -- plumbing -------------------------------------------------------------------------

class CommandError(click.ClickException):
    """A failed command: ``ctrctl: <message>`` on stderr, exit code 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"{PROG}: {self.format_message()}", file=file or sys.stderr)


class AliasedGroup(click.Group):
    """A group whose commands also answer to aliases (``ns``, ``list``, ``rm``...).

    Errors from the daemon (:class:`ctrd.errdefs.CtrdError`) raised anywhere below become
    :class:`CommandError`, so they print the same way whichever command failed.
    """

    def __init__(self, *args: Any, aliases: dict[str, str] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.aliases = dict(aliases or {})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, cmd, rest = super().resolve_command(ctx, args)
        return (cmd.name if cmd else name), cmd, rest  # the canonical name in help/errors

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        by_target: dict[str, list[str]] = {}
        for alias, target in self.aliases.items():
            by_target.setdefault(target, []).append(alias)
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            label = ", ".join([name] + sorted(by_target.get(name, [])))
            rows.append((label, cmd.get_short_help_str(formatter.width - 6 - len(label))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errdefs.CtrdError as e:
            raise CommandError(str(e)) from None


class Duration(click.ParamType):
    """Seconds as a number (``30``, ``1.5``) or a Go duration (``500ms``, ``1m30s``); 0 = none."""

    name = "duration"
    _UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    _PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for m in self._PART.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * self._UNITS[m.group(2)]
                pos = m.end()
            if pos != len(text) or not text:
                self.fail(f"{value!r} is not a duration (e.g. 30, 30s, 500ms, 1m30s)",
                          param, ctx)
        if seconds < 0:
            self.fail(f"{value!r} is negative", param, ctx)
        return seconds


@dataclass
class Globals:
    """The global options, and the one client a command invocation uses."""

    address: str
    namespace: str
    timeout: float
    _client: Client | None = field(default=None, repr=False)

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.address, self.namespace, self.timeout)
            click.get_current_context().call_on_close(self._client.close)
        return self._client


pass_globals = click.make_pass_decorator(Globals)


def format_option(f: Any) -> Any:
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table",
                        show_default=True, help="table for people, json for programs")(f)


def quiet_option(what: str) -> Any:
    return click.option("-q", "--quiet", is_flag=True, help=f"print only the {what}")


def parse_labels(args: tuple[str, ...]) -> dict[str, str]:
    """``KEY=VALUE`` arguments as ctr reads them: a bare ``KEY`` means ``KEY=true``."""
    labels = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not key:
            raise click.BadParameter(f"{arg!r}: the label key is empty", param_hint="KEY=VALUE")
        labels[key] = value if sep else "true"
    return labels


# -- the command tree -----------------------------------------------------------------

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=AliasedGroup, context_settings=CONTEXT,
             aliases={"ns": "namespaces", "namespace": "namespaces", "plugin": "plugins"})
@click.option("-a", "--address", envvar="CTRD_ADDRESS", default=DEFAULT_ADDRESS,
              show_default=True, metavar="PATH", help="the daemon's socket [env CTRD_ADDRESS]")
@click.option("-n", "--namespace", envvar="CONTAINERD_NAMESPACE", default=DEFAULT_NAMESPACE,
              show_default=True, help="namespace to work in [env CONTAINERD_NAMESPACE]")
@click.option("--timeout", type=Duration(), default=f"{DEFAULT_TIMEOUT:g}s", show_default=True,
              help="per-call timeout (30, 30s, 1m...; 0 waits for ever)")
@click.pass_context
def cli(ctx: click.Context, address: str, namespace: str, timeout: float) -> None:
    """ctrctl: manage a ctrd (or containerd) daemon."""
    ctx.obj = Globals(address, namespace, timeout)


# version ---------------------------------------------------------------------------

@cli.command()
@format_option
@pass_globals
def version(g: Globals, fmt: str) -> None:
    """Print the client and server versions and the server's UUID."""
    import platform

    client_info = {"version": __version__, "python": platform.python_version()}
    if fmt == "table":  # as ctr: the client's side is printed even if the server is down
        click.echo(f"Client:\n  Version:  {client_info['version']}\n"
                   f"  Python:   {client_info['python']}\n")
    from google.protobuf import empty_pb2

    c = g.client()
    v = c.version.Version(empty_pb2.Empty())
    uuid = c.introspection.Server(empty_pb2.Empty()).uuid
    server_info = {"version": v.version, "revision": v.revision, "uuid": uuid}
    if fmt == "json":
        print_json({"client": client_info, "server": server_info})
        return
    click.echo(f"Server:\n  Version:  {v.version}\n  Revision: {v.revision}\n  UUID:     {uuid}")


# plugins ---------------------------------------------------------------------------

@cli.group(cls=AliasedGroup, aliases={"list": "ls"})
def plugins() -> None:
    """Inspect the daemon's plugins."""


def platform_string(p: Any) -> str:
    """containerd's platforms.Format: os/arch[/variant], "unknown" without an os."""
    if not p.os:
        return "unknown"
    return "/".join(x for x in (p.os, p.architecture, p.variant) if x)


def plugin_record(p: Any) -> dict[str, Any]:
    """One plugin as ctrctl shows it (and the stable JSON shape)."""
    status, error = "ok", None
    if p.HasField("init_err"):
        # ctr's rule: a skipped plugin's error message says "skip plugin"
        status = "skip" if errdefs.SkipPlugin.kind in p.init_err.message else "error"
        error = {"code": CODE_NAMES.get(p.init_err.code, str(p.init_err.code)),
                 "message": p.init_err.message}
    return {
        "type": p.type,
        "id": p.id,
        "requires": list(p.requires),
        "platforms": sorted({platform_string(x) for x in p.platforms}),
        "exports": dict(sorted(p.exports.items())),
        "capabilities": list(p.capabilities),
        "status": status,
        "error": error,
    }


def _detailed(records: list[dict[str, Any]]) -> str:
    blocks = []
    for r in records:
        lines = [("Type:", r["type"]), ("ID:", r["id"]), ("Status:", r["status"])]
        lines += [("Requires:" if i == 0 else "", req) for i, req in enumerate(r["requires"])]
        if r["platforms"]:
            lines.append(("Platforms:", ",".join(r["platforms"])))
        lines += [("Exports:" if i == 0 else "", f"{k}={v}")
                  for i, (k, v) in enumerate(r["exports"].items())]
        if r["capabilities"]:
            lines.append(("Capabilities:", ",".join(r["capabilities"])))
        if r["error"]:
            lines.append(("Error:", f"{r['error']['code']}: {r['error']['message']}"))
        blocks.append("".join(f"{k:<14}{v}\n" for k, v in lines))
    return "\n".join(blocks)


@plugins.command("ls")
@quiet_option("plugin ids")
@click.option("-d", "--detailed", is_flag=True, help="everything about each plugin")
@format_option
@click.argument("filters", nargs=-1, metavar="[FILTER...]")
@pass_globals
def plugins_ls(g: Globals, quiet: bool, detailed: bool, fmt: str,
               filters: tuple[str, ...]) -> None:
    """List plugins and whether they initialised (ok, skip or error).

    FILTERs are containerd filters, e.g. type==io.containerd.grpc.v1 or id~=^over; a plugin
    is listed if it matches any of them.
    """
    from ctrd.api.containerd.services.introspection.v1 import introspection_pb2 as pb

    resp = g.client().introspection.Plugins(pb.PluginsRequest(filters=list(filters)))
    records = [plugin_record(p) for p in resp.plugins]
    if quiet:
        for r in records:
            click.echo(r["id"])
    elif fmt == "json":
        print_json(records)
    elif detailed:
        click.echo(_detailed(records), nl=False)
    else:
        headers = ["TYPE", "ID", "PLATFORMS", "STATUS"]
        with_errors = any(r["error"] for r in records)
        if with_errors:
            headers.append("ERROR")
        rows = []
        for r in records:
            row = [r["type"], r["id"], ",".join(r["platforms"]) or "-", r["status"]]
            if with_errors:
                row.append(r["error"]["message"] if r["error"] else "")
            rows.append(row)
        print_table(headers, rows, styles={"STATUS": STATUS_STYLES})


# namespaces ------------------------------------------------------------------------

@cli.group(cls=AliasedGroup, aliases={"list": "ls", "remove": "rm", "c": "create"})
def namespaces() -> None:
    """Manage namespaces, the unit of isolation for everything else."""


def _labels_text(labels: dict[str, str]) -> str:
    return ",".join(sorted(f"{k}={v}" for k, v in labels.items()))


@namespaces.command("ls")
@quiet_option("namespace names")
@format_option
@pass_globals
def namespaces_ls(g: Globals, quiet: bool, fmt: str) -> None:
    """List namespaces and their labels."""
    from ctrd.api.containerd.services.namespaces.v1 import namespace_pb2 as pb

    resp = g.client().namespaces.List(pb.ListNamespacesRequest())
    records = sorted(({"name": ns.name, "labels": dict(sorted(ns.labels.items()))}
                      for ns in resp.namespaces), key=lambda r: r["name"])
    if quiet:
        for r in records:
            click.echo(r["name"])
    elif fmt == "json":
        print_json(records)
    else:
        print_table(["NAME", "LABELS"], [[r["name"], _labels_text(r["labels"])]
                                         for r in records])


@namespaces.command("create")
@click.argument("name")
@click.argument("labels", nargs=-1, metavar="[KEY=VALUE...]")
@pass_globals
def namespaces_create(g: Globals, name: str, labels: tuple[str, ...]) -> None:
    """Create a namespace (its name must be unique), with optional labels."""
    from ctrd.api.containerd.services.namespaces.v1 import namespace_pb2 as pb

    ns = pb.Namespace(name=name, labels=parse_labels(labels))
    g.client().namespaces.Create(pb.CreateNamespaceRequest(namespace=ns))


@namespaces.command("label")
@click.argument("name")
@click.argument("labels", nargs=-1, required=True, metavar="KEY=VALUE...")
@pass_globals
def namespaces_label(g: Globals, name: str, labels: tuple[str, ...]) -> None:
    """Set labels on a namespace; KEY= (an empty value) removes KEY."""
    from google.protobuf import field_mask_pb2

    from ctrd.api.containerd.services.namespaces.v1 import namespace_pb2 as pb

    changes = parse_labels(labels)
    # one call, one mask path per key: the daemon applies them together
    req = pb.UpdateNamespaceRequest(
        namespace=pb.Namespace(name=name, labels=changes),
        update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in changes]))
    g.client().namespaces.Update(req)


@namespaces.command("rm")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@pass_globals
def namespaces_rm(g: Globals, names: tuple[str, ...]) -> None:
    """Remove namespaces (each must be empty); prints each one removed.

    As with ctr, a namespace that does not exist counts as removed.
    """
    from ctrd.api.containerd.services.namespaces.v1 import namespace_pb2 as pb

    c = g.client()
    failed = []
    for name in names:
        try:
            c.namespaces.Delete(pb.DeleteNamespaceRequest(name=name))
        except errdefs.NotFound:
            pass
        except errdefs.Unavailable:
            raise  # the daemon is gone: the other names would fail the same way
        except errdefs.CtrdError as e:
            click.echo(f"{PROG}: unable to delete {name}: {e}", err=True)
            failed.append(name)
            continue
        click.echo(name)
    if failed:
        raise click.exceptions.Exit(1)


# -- entry point ----------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name=PROG, standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BrokenPipeError:  # `ctrctl ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
