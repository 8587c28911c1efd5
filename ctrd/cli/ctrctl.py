"""``ctrctl``: ctrd's friendlier command line (the real ``ctr`` is the behaviour reference).

    ctrctl [-a ADDRESS] [-n NAMESPACE] [--timeout DURATION] COMMAND ...
    ctrctl version [--format table|json]
    ctrctl plugins ls [-q] [-d] [--format table|json] [FILTER...]
    ctrctl namespaces ls [-q] [--format table|json]
    ctrctl namespaces create NAME [KEY=VALUE...]
    ctrctl namespaces label NAME KEY=VALUE...     # an empty value removes the label
    ctrctl namespaces rm NAME...
    ctrctl content ls [-q] [--format table|json] [FILTER...]
    ctrctl content get DIGEST                     # the raw bytes, to stdout
    ctrctl content ingest REF [--file PATH] [--expected-digest D] [--expected-size N]
                              [--label KEY=VALUE]... [--lease ID] [--format table|json]
    ctrctl content label DIGEST KEY=VALUE...      # an empty value removes the label
    ctrctl content rm DIGEST...
    ctrctl content active [--format table|json] [FILTER...]
    ctrctl leases ls [-q] [--format table|json] [FILTER...]
    ctrctl leases create [--id ID] [--expires DURATION] [KEY=VALUE...]
    ctrctl leases rm [--sync] ID...
    ctrctl leases resources ID [--format table|json]
    ctrctl events [--format table|json] [FILTER...]
    ctrctl snapshots [--snapshotter NAME] ls [-q] [--format table|json] [FILTER...]
    ctrctl snapshots tree
    ctrctl snapshots prepare KEY [PARENT] [--label KEY=VALUE]... [--target DIR] [--mounts]
    ctrctl snapshots view KEY PARENT [--label KEY=VALUE]... [--target DIR] [--mounts]
    ctrctl snapshots commit NAME KEY [--label KEY=VALUE]...
    ctrctl snapshots mounts TARGET KEY              # mount commands, for `| sh`
    ctrctl snapshots mount KEY DIR                  # mounts it (root)
    ctrctl snapshots unmount DIR
    ctrctl snapshots rm KEY...
    ctrctl snapshots usage [-b] [--format table|json] [KEY...]
    ctrctl snapshots info KEY
    ctrctl snapshots label KEY KEY=VALUE...        # an empty value removes the label
    ctrctl gc
    ctrctl images ls [-q] [--format table|json] [FILTER...]
    ctrctl images rm [--sync] REF...
    ctrctl images tag SRC DST [--force]
    ctrctl images inspect REF                     # record, manifest and config as JSON
    ctrctl pull [--plain-http] [-u USER[:PASS]] REF
    ctrctl push [--plain-http] [-u USER[:PASS]] REF [LOCAL_REF]
    ctrctl export [--platform P|--all-platforms] [--skip-manifest-json] FILE REF...
                                                  # OCI layout + docker manifest.json; - is stdout
    ctrctl import [--no-unpack] [--platform P|--all-platforms] [--index-name NAME] [--digests]
                  FILE                            # OCI layout or docker save archive
    ctrctl login [-u USER] [--password-stdin] [SERVER]  # checks, then ~/.docker/config.json
    ctrctl logout [SERVER]
    ctrctl run [-d] [--rm] [-t] [-i] [-e K=V]... [--mount SPEC]... [--net-host] [--runtime R]
               [-u USER] [--cwd DIR] IMAGE ID [ARGS...]
    ctrctl ps | exec [--exec-id X] [-t] [-i] ID CMD... | kill [-s SIG] [--all] ID
    ctrctl stop [-t SECONDS] ID... | rm [-f] ID... | logs [-f] ID | pause ID | unpause ID
    ctrctl top ID                                 # (details: ctrd/cli/containers.py)

Aliases as in ctr: ``ns``/``namespace``, ``plugin``, ``lease``, ``event``, ``list`` for
``ls``, ``remove``/``del``/``delete`` for ``rm``, ``c`` for ``create``. Errors print
``ctrctl: <message>`` on stderr and exit 1; bad usage exits 2. grpc and the generated stubs
are imported only by commands that talk to the daemon.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import click

from ctrd import __version__, errdefs
from ctrd.cli.client import DEFAULT_ADDRESS, DEFAULT_NAMESPACE, DEFAULT_TIMEOUT, Client
from ctrd.cli.output import (FORMATS, age, human_size, is_tty, print_json, print_json_line,
                             print_table, progress, rfc3339)
from ctrd.durations import DurationError, parse_seconds

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
    """Seconds as a number (``30``, ``1.5``) or a Go duration (``500ms``, ``1m30s``:
    :mod:`ctrd.durations`); 0 = none; negative is refused."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            text = str(value).strip()
            try:
                seconds = float(text)
            except ValueError:
                try:
                    seconds = parse_seconds(text)
                except DurationError as e:
                    self.fail(f"{value!r} is not a duration: {e}", param, ctx)
            else:
                if not math.isfinite(seconds):
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
    snapshotter: str = "overlayfs"
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
             aliases={"ns": "namespaces", "namespace": "namespaces", "plugin": "plugins",
                      "lease": "leases", "event": "events", "snapshot": "snapshots",
                      "image": "images", "i": "images"})
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


# content ---------------------------------------------------------------------------

RM_ALIASES = {"remove": "rm", "del": "rm", "delete": "rm"}


@cli.group(cls=AliasedGroup, aliases={"list": "ls", **RM_ALIASES})
def content() -> None:
    """Manage the content store (blobs and ingests).

    Blobs are named by digest; ingests are transfers in progress, named by a ref. Content no
    lease holds and nothing references is removed by the next garbage
    collection, as with containerd: ingest under a lease (--lease) to keep it.
    """


def content_record(info: Any) -> dict[str, Any]:
    return {"digest": info.digest, "size": info.size, "created_at": rfc3339(info.created_at),
            "updated_at": rfc3339(info.updated_at), "labels": dict(sorted(info.labels.items()))}


@content.command("ls")
@quiet_option("digests")
@format_option
@click.argument("filters", nargs=-1, metavar="[FILTER...]")
@pass_globals
def content_ls(g: Globals, quiet: bool, fmt: str, filters: tuple[str, ...]) -> None:
    """List the blobs of the namespace (DIGEST, SIZE, AGE, LABELS).

    FILTERs are containerd filters on digest, size and labels (e.g. labels.app==web,
    'digest~=^sha256:ab'); a blob is listed if it matches any of them.
    """
    from ctrd.api.containerd.services.content.v1 import content_pb2 as pb

    infos = [info for resp in g.client().content.List(
        pb.ListContentRequest(filters=list(filters))) for info in resp.info]
    infos.sort(key=lambda i: i.digest)
    if quiet:
        for info in infos:
            click.echo(info.digest)
    elif fmt == "json":
        print_json([content_record(i) for i in infos])
    else:
        print_table(["DIGEST", "SIZE", "AGE", "LABELS"],
                    [[i.digest, human_size(i.size), age(i.created_at),
                      _labels_text(dict(i.labels)) or "-"] for i in infos])


@content.command("get")
@click.argument("digest")
@pass_globals
def content_get(g: Globals, digest: str) -> None:
    """Write the bytes of blob DIGEST to stdout (streamed, 1 MiB at a time)."""
    out = sys.stdout.buffer
    for chunk in g.client().read_content(digest):
        out.write(chunk)
    out.flush()


def _input(path: str | None) -> tuple[Any, bool, int | None]:
    """The file to ingest (PATH, or stdin), whether it can seek, and its size if known."""
    import stat

    f = open(path, "rb", buffering=0) if path else os.fdopen(os.dup(0), "rb", buffering=0)
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):
        return f, False, None
    try:
        pos = f.seek(0, os.SEEK_CUR)
    except OSError:
        return f, False, None
    return f, True, max(0, st.st_size - pos)


def _prefix_digest(f: Any, n: int) -> str:
    """sha256 of the next ``n`` bytes of ``f`` (its position moves by what was read)."""
    import hashlib

    from ctrd.cli.client import WRITE_CHUNK

    h = hashlib.sha256()
    while n > 0:
        block = f.read(min(WRITE_CHUNK, n))
        if not block:
            break
        h.update(block)
        n -= len(block)
    return "sha256:" + h.hexdigest()


@content.command("ingest")
@click.argument("ref")
@click.option("--file", "path", type=click.Path(dir_okay=False), metavar="PATH",
              help="read PATH instead of stdin")
@click.option("--expected-digest", default="", metavar="DIGEST",
              help="fail (and drop the ingest) unless the data has this digest")
@click.option("--expected-size", type=click.IntRange(min=0), default=0, metavar="BYTES",
              help="fail (and drop the ingest) unless the data has this size")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="label the blob (repeatable)")
@click.option("--lease", default=None, metavar="ID",
              help="hold the ingest and the blob under this lease (protects them from GC)")
@format_option
@pass_globals
def content_ingest(g: Globals, ref: str, path: str | None, expected_digest: str,
                   expected_size: int, labels: tuple[str, ...], lease: str | None,
                   fmt: str) -> None:
    """Store stdin (or --file PATH) as a blob; prints its digest.

    REF names the ingest (any text; unique per transfer). The data goes through one write
    session in 1 MiB messages, with a progress bar on a terminal. An interrupted ingest
    resumes: run the same command again with the same REF; from a file the data already
    sent is checked against what the daemon holds and not sent again (from a pipe the
    ingest starts over). If --expected-digest is already in the store, nothing is sent
    (but the --labels are still set). A blob that fails --expected-digest/--expected-size
    is dropped, not left as an ingest. `ctrctl content active` lists unfinished ingests.
    """
    from ctrd.cli.client import WRITE_CHUNK
    from ctrd.cli.output import iter_chunks

    if not ref:
        raise click.BadParameter("must not be empty", param_hint="REF")
    blob_labels = parse_labels(labels)
    try:
        f, seekable, size = _input(path)
    except OSError as e:
        raise CommandError(f"cannot read {path}: {e.strerror}") from None
    c = g.client()
    if lease:
        c = c.with_namespace(c.namespace, lease=lease)
    with f:
        try:
            session = c.writer(ref, total=expected_size, expected=expected_digest)
        except errdefs.AlreadyExists:
            _label_existing(c, expected_digest, blob_labels)
            _ingested(fmt, ref, expected_digest, expected_size or size, 0, True)
            return
        with session:
            resumed = session.offset
            if resumed:
                start = f.tell() if seekable else 0
                if not (seekable and (size is None or resumed <= size)
                        and _prefix_digest(f, resumed) == session.digest):
                    if seekable:
                        f.seek(start)
                    resumed = session.offset = 0  # the first WRITE at 0 starts it over
            total = expected_size or (None if size is None else size)
            try:
                with progress(ref, total=total, completed=resumed) as bar:
                    for chunk in iter_chunks(f.read, WRITE_CHUNK):
                        session.write(chunk)
                        bar.advance(len(chunk))
                    digest = session.commit(total=expected_size, expected=expected_digest,
                                            labels=blob_labels)
            except errdefs.AlreadyExists:
                digest = expected_digest or session.digest
                _label_existing(c, digest, blob_labels)
                _ingested(fmt, ref, digest, session.offset, resumed, True)
                return
            except errdefs.FailedPrecondition as e:
                session.close()
                # bad data: keeping it for a resume would only fail again
                aborted = _abort_ingest(c, ref)
                raise CommandError(f"ingest {ref} failed: {e}"
                                   + ("; the ingest was dropped" if aborted else "")) from None
            except OSError as e:
                raise CommandError(f"cannot read {path or 'stdin'}: {e.strerror}") from None
    _ingested(fmt, ref, digest, session.offset, resumed, False)


def _ingested(fmt: str, ref: str, digest: str, size: int | None, resumed: int,
              existed: bool) -> None:
    if fmt == "json":
        print_json({"ref": ref, "digest": digest, "size": size, "resumed_from": resumed,
                    "already_existed": existed})
    else:
        click.echo(digest)


def _label_existing(c: Client, digest: str, labels: dict[str, str]) -> None:
    """The blob was there already: still give it the labels asked for (containerd would
    drop them silently)."""
    if not labels:
        return
    from google.protobuf import field_mask_pb2

    from ctrd.api.containerd.services.content.v1 import content_pb2 as pb

    c.content.Update(pb.UpdateRequest(
        info=pb.Info(digest=digest, labels=labels),
        update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels])))


def _abort_ingest(c: Client, ref: str) -> bool:
    """Abort ``ref``, waiting a little for the daemon to release it; False if it could not."""
    import time

    from ctrd.api.containerd.services.content.v1 import content_pb2 as pb

    for attempt in range(20):
        try:
            c.content.Abort(pb.AbortRequest(ref=ref))
            return True
        except errdefs.NotFound:
            return True
        except errdefs.Unavailable:
            time.sleep(0.05 * (attempt + 1))
        except errdefs.CtrdError:
            return False
    return False


@content.command("label")
@click.argument("digest")
@click.argument("labels", nargs=-1, required=True, metavar="KEY=VALUE...")
@pass_globals
def content_label(g: Globals, digest: str, labels: tuple[str, ...]) -> None:
    """Set or remove labels on a blob.

    KEY=VALUE sets KEY, KEY= removes it, all in one update. Prints the blob's labels after
    the change.
    """
    from google.protobuf import field_mask_pb2

    from ctrd.api.containerd.services.content.v1 import content_pb2 as pb

    changes = parse_labels(labels)
    req = pb.UpdateRequest(
        info=pb.Info(digest=digest, labels={k: v for k, v in changes.items() if v}),
        update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in changes]))
    info = g.client().content.Update(req).info
    click.echo(_labels_text(dict(info.labels)))


@content.command("rm")
@click.argument("digests", nargs=-1, required=True, metavar="DIGEST...")
@pass_globals
def content_rm(g: Globals, digests: tuple[str, ...]) -> None:
    """Remove blobs from the namespace.

    Prints each one removed. As with ctr, a digest that is not there is skipped silently.
    The file itself goes at the next garbage collection once no namespace uses it (see
    `ctrctl gc`).
    """
    from ctrd.api.containerd.services.content.v1 import content_pb2 as pb

    c = g.client()
    failed = False
    for digest in digests:
        try:
            c.content.Delete(pb.DeleteContentRequest(digest=digest))
        except errdefs.NotFound:
            continue
        except errdefs.Unavailable:
            raise
        except errdefs.CtrdError as e:
            click.echo(f"{PROG}: unable to delete {digest}: {e}", err=True)
            failed = True
            continue
        click.echo(digest)
    if failed:
        raise click.exceptions.Exit(1)


@content.command("active")
@format_option
@click.argument("filters", nargs=-1, metavar="[FILTER...]")
@pass_globals
def content_active(g: Globals, fmt: str, filters: tuple[str, ...]) -> None:
    """List unfinished ingests (REF, OFFSET/TOTAL, STARTED, UPDATED).

    FILTERs are containerd filters on ref and expected (e.g. 'ref~=^layer-').
    """
    from ctrd.api.containerd.services.content.v1 import content_pb2 as pb

    resp = g.client().content.ListStatuses(pb.ListStatusesRequest(filters=list(filters)))
    statuses = sorted(resp.statuses, key=lambda s: s.ref)
    if fmt == "json":
        print_json([{"ref": s.ref, "offset": s.offset, "total": s.total,
                     "expected": s.expected, "started_at": rfc3339(s.started_at),
                     "updated_at": rfc3339(s.updated_at)} for s in statuses])
        return

    def progress_text(s: Any) -> str:
        if not s.total:
            return human_size(s.offset)
        return (f"{human_size(s.offset)}/{human_size(s.total)} "
                f"({100 * s.offset // s.total}%)")

    print_table(["REF", "OFFSET/TOTAL", "STARTED", "UPDATED"],
                [[s.ref, progress_text(s), age(s.started_at), age(s.updated_at)]
                 for s in statuses])


# leases ----------------------------------------------------------------------------

@cli.group(cls=AliasedGroup, aliases={"list": "ls", "c": "create", **RM_ALIASES})
def leases() -> None:
    """Manage leases (what a lease holds is safe from GC).

    While a lease lives, the content and ingests it holds are not garbage collected.
    """


def lease_record(lease: Any) -> dict[str, Any]:
    return {"id": lease.id, "created_at": rfc3339(lease.created_at),
            "labels": dict(sorted(lease.labels.items()))}


@leases.command("ls")
@quiet_option("lease ids")
@format_option
@click.argument("filters", nargs=-1, metavar="[FILTER...]")
@pass_globals
def leases_ls(g: Globals, quiet: bool, fmt: str, filters: tuple[str, ...]) -> None:
    """List the namespace's leases (ID, CREATED, LABELS).

    FILTERs are containerd filters on id and labels (e.g. 'id~=^ctrctl-').
    """
    from ctrd.api.containerd.services.leases.v1 import leases_pb2 as pb

    found = g.client().leases.List(pb.ListRequest(filters=list(filters))).leases
    found = sorted(found, key=lambda x: (x.created_at.seconds, x.created_at.nanos, x.id))
    if quiet:
        for lease in found:
            click.echo(lease.id)
    elif fmt == "json":
        print_json([lease_record(x) for x in found])
    else:
        print_table(["ID", "CREATED", "LABELS"],
                    [[x.id, rfc3339(x.created_at, local=True),
                      _labels_text(dict(x.labels)) or "-"] for x in found])


def random_lease_id() -> str:
    """A lease id as containerd's leases.WithRandomID makes them: the current time's
    nanoseconds within the second, a dash, 3 random bytes in URL-safe base64."""
    import base64
    import time

    return f"{time.time_ns() % 1_000_000_000}-{base64.urlsafe_b64encode(os.urandom(3)).decode()}"


def gc_expire(seconds: float) -> str:
    """``containerd.io/gc.expire`` for ``seconds`` from now: RFC 3339 in local time to the
    second, as ctr writes it (Go's time.RFC3339)."""
    import time

    return rfc3339(time.time() + seconds, local=True)


@leases.command("create")
@click.option("--id", "lease_id", default="", metavar="ID",
              help="the lease's id (default: generated, as ctr does)")
@click.option("-x", "--expires", type=Duration(), default="24h", show_default=True,
              help="expire after this long (30m, 24h...; 0 = never)")
@click.argument("labels", nargs=-1, metavar="[KEY=VALUE...]")
@pass_globals
def leases_create(g: Globals, lease_id: str, expires: float,
                  labels: tuple[str, ...]) -> None:
    """Create a lease and print its id.

    The expiry is the label containerd.io/gc.expire (RFC 3339), which ctr sets the same
    way; after it, the lease no longer protects anything and GC removes it.
    """
    from ctrd.api.containerd.services.leases.v1 import leases_pb2 as pb

    lease_labels = parse_labels(labels)
    if expires > 0:
        from ctrd.cli.client import GC_EXPIRE_LABEL

        lease_labels[GC_EXPIRE_LABEL] = gc_expire(expires)
    resp = g.client().leases.Create(pb.CreateRequest(id=lease_id or random_lease_id(),
                                                     labels=lease_labels))
    click.echo(resp.lease.id)


@leases.command("rm")
@click.option("--sync", is_flag=True,
              help="wait for the garbage collection that frees what the leases held")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@pass_globals
def leases_rm(g: Globals, sync: bool, ids: tuple[str, ...]) -> None:
    """Delete leases; prints each one deleted.

    What a lease held becomes collectable; with --sync the command returns only after a
    garbage collection (one, after the last lease) has removed it.
    """
    from ctrd.api.containerd.services.leases.v1 import leases_pb2 as pb

    c = g.client()
    failed, pending_gc = False, False
    for i, lease_id in enumerate(ids):
        last = i == len(ids) - 1
        try:
            c.leases.Delete(pb.DeleteRequest(id=lease_id, sync=sync and last))
        except errdefs.Unavailable:
            raise
        except errdefs.CtrdError as e:
            click.echo(f"{PROG}: unable to delete lease {lease_id}: {e}", err=True)
            failed = True
            continue
        pending_gc = sync and not last  # the sync delete of the last one collects
        click.echo(lease_id)
    if pending_gc:
        c.collect_garbage()  # the last delete failed: still collect for the others
    if failed:
        raise click.exceptions.Exit(1)


@leases.command("resources")
@click.argument("lease_id", metavar="ID")
@format_option
@pass_globals
def leases_resources(g: Globals, lease_id: str, fmt: str) -> None:
    """List what a lease holds (ID, TYPE: content, ingests, snapshots/<snapshotter>...)."""
    from ctrd.api.containerd.services.leases.v1 import leases_pb2 as pb

    found = g.client().leases.ListResources(pb.ListResourcesRequest(id=lease_id)).resources
    records = sorted(({"id": r.id, "type": r.type} for r in found),
                     key=lambda r: (r["type"], r["id"]))
    if fmt == "json":
        print_json(records)
    else:
        print_table(["ID", "TYPE"], [[r["id"], r["type"]] for r in records])


# events ----------------------------------------------------------------------------

_EVENT_TYPES: dict[str, Any] | None = None


def event_types() -> dict[str, Any]:
    """Message classes by full proto name, from the generated event modules
    (ctrd.api.containerd.events.*, plus containerd.services.images.v1)."""
    global _EVENT_TYPES
    if _EVENT_TYPES is None:
        import importlib
        import pkgutil

        import ctrd.api.containerd.events as events_pkg

        modules = [importlib.import_module(f"{events_pkg.__name__}.{m.name}")
                   for m in pkgutil.iter_modules(events_pkg.__path__)]
        modules.append(importlib.import_module(
            "ctrd.api.containerd.services.images.v1.images_pb2"))
        types: dict[str, Any] = {}
        for mod in modules:
            desc = getattr(mod, "DESCRIPTOR", None)
            for name in getattr(desc, "message_types_by_name", {}):
                cls = getattr(mod, name, None)
                if cls is not None:
                    types[cls.DESCRIPTOR.full_name] = cls
        _EVENT_TYPES = types
    return _EVENT_TYPES


def decode_event(any_: Any) -> tuple[str, dict[str, Any] | None]:
    """(type name, the event as a dict) for an Envelope's Any; None for an unknown type
    or one that does not parse."""
    from google.protobuf.json_format import MessageToDict
    from google.protobuf.message import DecodeError

    name = any_.type_url.rsplit("/", 1)[-1]
    cls = event_types().get(name)
    if cls is None:
        return any_.type_url, None
    msg = cls()
    try:
        msg.ParseFromString(any_.value)
    except DecodeError:
        return any_.type_url, None
    return name, MessageToDict(msg, preserving_proto_field_name=True)


@cli.command()
@format_option
@click.argument("filters", nargs=-1, metavar="[FILTER...]")
@pass_globals
def events(g: Globals, fmt: str, filters: tuple[str, ...]) -> None:
    """Print the daemon's events as they happen.

    Runs until Ctrl-C (or SIGTERM), then exits 0. One line per event: time (UTC),
    namespace, topic, the event as JSON (or, for a type ctrctl does not know, its type
    URL). --format json prints one JSON object per line.
    FILTERs are containerd filters on namespace, topic and event fields, e.g.
    'topic~=^/namespaces/' or 'namespace==default'; an event is shown if any matches.
    """
    import json
    import signal

    from ctrd.api.containerd.services.events.v1 import events_pb2 as pb

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        for env in g.client().events.Subscribe(pb.SubscribeRequest(filters=list(filters))):
            type_name, event = decode_event(env.event) if env.HasField("event") else ("", {})
            ts = rfc3339(env.timestamp)
            if fmt == "json":
                print_json_line({"timestamp": ts, "namespace": env.namespace,
                                 "topic": env.topic, "type": type_name, "event": event})
            else:
                shown = (json.dumps(event, sort_keys=True, separators=(",", ":"))
                         if event is not None else type_name)
                click.echo(f"{ts} {env.namespace} {env.topic} {shown}")
    except KeyboardInterrupt:
        return


# snapshots -------------------------------------------------------------------------

DEFAULT_SNAPSHOTTER = "overlayfs"
GC_ROOT_LABEL = "containerd.io/gc.root"
KIND_NAMES = {0: "Unknown", 1: "View", 2: "Active", 3: "Committed"}  # Go's Kind.String()


@cli.group(cls=AliasedGroup, aliases={"list": "ls", "m": "mounts", **RM_ALIASES})
@click.option("--snapshotter", envvar="CONTAINERD_SNAPSHOTTER", default=DEFAULT_SNAPSHOTTER,
              show_default=True,
              help="the snapshotter to use (overlayfs, native...) [env CONTAINERD_SNAPSHOTTER]")
@pass_globals
def snapshots(g: Globals, snapshotter: str) -> None:
    """Manage snapshots (the file systems containers run on).

    An active snapshot (prepare) is writable; committing it makes a read-only, named
    snapshot that others can be prepared or viewed (read-only) from. prepare, view and
    commit give the snapshot a containerd.io/gc.root label, as ctr does, so garbage
    collection leaves it alone until it is removed.
    """
    g.snapshotter = snapshotter or DEFAULT_SNAPSHOTTER  # as ctr: empty means the default


def _snapshots_pb() -> Any:
    from ctrd.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb

    return pb


def _gc_root() -> str:
    """The gc.root value ctr writes: now, UTC, RFC 3339 to the second."""
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def go_time(ts: Any) -> str:
    """A protobuf Timestamp as Go's time.Time marshals to JSON in UTC (RFC 3339 with the
    nanoseconds, trailing zeros dropped)."""
    from datetime import datetime, timezone

    text = datetime.fromtimestamp(ts.seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if ts.nanos:
        text += f".{ts.nanos:09d}".rstrip("0")
    return text + "Z"


def snapshot_record(info: Any) -> dict[str, Any]:
    """A snapshot as ctrctl's JSON shows it (ls --format json)."""
    return {"key": info.name, "parent": info.parent, "kind": KIND_NAMES.get(info.kind, "Unknown"),
            "labels": dict(sorted(info.labels.items())), "created_at": rfc3339(info.created_at),
            "updated_at": rfc3339(info.updated_at)}


def ctr_info(info: Any) -> dict[str, Any]:
    """A snapshot as ctr's `snapshots info` prints it (Go's snapshots.Info in JSON: field
    order, omitempty parent and labels)."""
    out: dict[str, Any] = {"Kind": KIND_NAMES.get(info.kind, "Unknown"), "Name": info.name}
    if info.parent:
        out["Parent"] = info.parent
    if info.labels:
        out["Labels"] = dict(sorted(info.labels.items()))
    out["Created"] = go_time(info.created_at)
    out["Updated"] = go_time(info.updated_at)
    return out


def mount_commands(target: str, mounts: Any) -> str:
    """ctr's printMounts: one ``mount -t TYPE SOURCE TARGET -o OPTIONS`` line per mount."""
    return "".join(f"mount -t {m.type} {m.source} {target} -o {','.join(m.options)}\n"
                   for m in mounts)


def _mounts_json(mounts: Any) -> None:
    """ctr's --mounts: the mounts as Go's mount.Mount in JSON (4-space indent, field order)."""
    import json

    click.echo(json.dumps([{"Type": m.type, "Source": m.source, "Options": list(m.options)}
                           for m in mounts], indent=4))


def _walk(g: Globals, filters: tuple[str, ...] = ()) -> list[Any]:
    pb = _snapshots_pb()
    return [info for resp in g.client().snapshots.List(
        pb.ListSnapshotsRequest(snapshotter=g.snapshotter, filters=list(filters)))
        for info in resp.info]


@snapshots.command("ls")
@quiet_option("keys")
@format_option
@click.argument("filters", nargs=-1, metavar="[FILTER...]")
@pass_globals
def snapshots_ls(g: Globals, quiet: bool, fmt: str, filters: tuple[str, ...]) -> None:
    """List the snapshots of the namespace (KEY, PARENT, KIND).

    FILTERs are containerd filters on name, parent, kind and labels (e.g. 'parent==base',
    'labels."app"==web'); a snapshot is listed if it matches any of them.
    """
    infos = sorted(_walk(g, filters), key=lambda i: i.name)
    if quiet:
        for info in infos:
            click.echo(info.name)
    elif fmt == "json":
        print_json([snapshot_record(i) for i in infos])
    else:
        print_table(["KEY", "PARENT", "KIND"],
                    [[i.name, i.parent, KIND_NAMES.get(i.kind, "Unknown")] for i in infos])


def tree_lines(infos: list[Any]) -> list[str]:
    """ctr's tree: roots (no parent) in walk order, each followed by its children indented
    two spaces a level behind ``\\_``. A parent missing from the list shows as a root, as
    ctr's placeholder node does."""
    order: list[str] = []
    parents: dict[str, str] = {}
    children: dict[str, list[str]] = {}

    def node(name: str) -> None:
        if name not in parents:
            parents[name] = ""
            order.append(name)
            children.setdefault(name, [])

    for info in infos:
        node(info.name)
        parents[info.name] = info.parent
        if info.parent:
            node(info.parent)
            children[info.parent].append(info.name)
    lines: list[str] = []

    def show(name: str, level: int, seen: frozenset[str]) -> None:
        prefix = "  " * level + ("\\_" if level else "")
        lines.append(f"{prefix} {name}")
        for child in children.get(name, []):
            if child not in seen:  # a cycle cannot happen, but never loop
                show(child, level + 1, seen | {child})

    for name in order:
        if not parents[name]:
            show(name, 0, frozenset([name]))
    return lines


@snapshots.command("tree")
@pass_globals
def snapshots_tree(g: Globals) -> None:
    """Show the snapshots as a tree, each parent above its children (as ctr)."""
    for line in tree_lines(sorted(_walk(g), key=lambda i: i.name)):
        click.echo(line)


def _target_option(f: Any) -> Any:
    f = click.option("--mounts", "as_json", is_flag=True,
                     help="print the mounts as JSON (as ctr)")(f)
    return click.option("-t", "--target", metavar="DIR",
                        help="print the mount command(s) for mounting it at DIR")(f)


def _label_option(f: Any) -> Any:
    return click.option("-l", "--label", "labels", multiple=True, metavar="KEY=VALUE",
                        help="a label for the snapshot (repeatable)")(f)


def _print_mounts(mounts: Any, target: str | None, as_json: bool) -> None:
    if target:
        click.echo(mount_commands(target, mounts), nl=False)
    if as_json:
        _mounts_json(mounts)


def _create_snapshot(g: Globals, call: str, key: str, parent: str, labels: tuple[str, ...],
                     target: str | None, as_json: bool) -> None:
    """Snapshots.Prepare or .View, labelled a GC root (as ctr labels what it creates), then
    the mounts as requested."""
    pb = _snapshots_pb()
    request = getattr(pb, f"{call}SnapshotRequest")(
        snapshotter=g.snapshotter, key=key, parent=parent,
        labels={GC_ROOT_LABEL: _gc_root(), **parse_labels(labels)})
    resp = getattr(g.client().snapshots, call)(request)
    _print_mounts(resp.mounts, target, as_json)


@snapshots.command("prepare")
@_label_option
@_target_option
@click.argument("key")
@click.argument("parent", required=False, default="")
@pass_globals
def snapshots_prepare(g: Globals, labels: tuple[str, ...], target: str | None, as_json: bool,
                      key: str, parent: str) -> None:
    """Create the active (writable) snapshot KEY, on top of the committed PARENT if given.

    With --target, prints the commands that mount it there (see `mounts`).
    """
    _create_snapshot(g, "Prepare", key, parent, labels, target, as_json)


@snapshots.command("view")
@_label_option
@_target_option
@click.argument("key")
@click.argument("parent")
@pass_globals
def snapshots_view(g: Globals, labels: tuple[str, ...], target: str | None, as_json: bool,
                   key: str, parent: str) -> None:
    """Create the read-only view KEY of the committed snapshot PARENT.

    With --target, prints the commands that mount it there (see `mounts`).
    """
    _create_snapshot(g, "View", key, parent, labels, target, as_json)


@snapshots.command("commit")
@_label_option
@click.argument("name")
@click.argument("key")
@pass_globals
def snapshots_commit(g: Globals, labels: tuple[str, ...], name: str, key: str) -> None:
    """Commit the active snapshot KEY as the read-only snapshot NAME (KEY is gone after).

    Unmount KEY first: its changes are then NAME's.
    """
    pb = _snapshots_pb()
    g.client().snapshots.Commit(pb.CommitSnapshotRequest(
        snapshotter=g.snapshotter, name=name, key=key,
        labels={GC_ROOT_LABEL: _gc_root(), **parse_labels(labels)}))


@snapshots.command("mounts")
@click.argument("target")
@click.argument("key")
@pass_globals
def snapshots_mounts(g: Globals, target: str, key: str) -> None:
    """Print the commands that mount snapshot KEY at TARGET, exactly as ctr does:

        ctrctl snapshots mounts /mnt KEY | sh
    """
    pb = _snapshots_pb()
    resp = g.client().snapshots.Mounts(pb.MountsRequest(snapshotter=g.snapshotter, key=key))
    click.echo(mount_commands(target, resp.mounts), nl=False)


@snapshots.command("usage")
@click.option("-b", "in_bytes", is_flag=True, help="sizes in bytes")
@format_option
@click.argument("keys", nargs=-1, metavar="[KEY...]")
@pass_globals
def snapshots_usage(g: Globals, in_bytes: bool, fmt: str, keys: tuple[str, ...]) -> None:
    """Disk usage of snapshots (KEY, SIZE, INODES): the given ones, or all.

    The size of a snapshot is what it adds on top of its parent.
    """
    pb = _snapshots_pb()
    c = g.client()
    names = list(keys) or sorted(i.name for i in _walk(g))
    records = []
    for name in names:
        try:
            u = c.snapshots.Usage(pb.UsageRequest(snapshotter=g.snapshotter, key=name))
        except errdefs.NotFound:
            if keys:
                raise
            continue  # removed while we looked
        records.append({"key": name, "size": u.size, "inodes": u.inodes})
    if fmt == "json":
        print_json(records)
    else:
        print_table(["KEY", "SIZE", "INODES"],
                    [[r["key"], str(r["size"]) if in_bytes else human_size(r["size"]),
                      str(r["inodes"])] for r in records])


@snapshots.command("info")
@click.argument("key")
@pass_globals
def snapshots_info(g: Globals, key: str) -> None:
    """Print everything about snapshot KEY as JSON, in ctr's shape (Kind, Name, Parent,
    Labels, Created, Updated)."""
    import json

    pb = _snapshots_pb()
    info = g.client().snapshots.Stat(pb.StatSnapshotRequest(snapshotter=g.snapshotter,
                                                            key=key)).info
    click.echo(json.dumps(ctr_info(info), indent=4))


@snapshots.command("label")
@click.argument("key")
@click.argument("labels", nargs=-1, required=True, metavar="KEY=VALUE...")
@pass_globals
def snapshots_label(g: Globals, key: str, labels: tuple[str, ...]) -> None:
    """Set or remove labels on a snapshot.

    KEY=VALUE sets KEY, KEY= removes it, all in one update. Prints the snapshot's labels
    after the change.
    """
    from google.protobuf import field_mask_pb2

    pb = _snapshots_pb()
    changes = parse_labels(labels)
    req = pb.UpdateSnapshotRequest(
        snapshotter=g.snapshotter,
        info=pb.Info(name=key, labels={k: v for k, v in changes.items() if v}),
        update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in changes]))
    info = g.client().snapshots.Update(req).info
    click.echo(_labels_text(dict(info.labels)))


@snapshots.command("rm")
@click.argument("keys", nargs=-1, required=True, metavar="KEY...")
@pass_globals
def snapshots_rm(g: Globals, keys: tuple[str, ...]) -> None:
    """Remove snapshots; prints each one removed.

    A committed snapshot with children cannot be removed: remove the children first.
    Unmount an active snapshot before removing it.
    """
    pb = _snapshots_pb()
    c = g.client()
    failed = False
    for key in keys:
        try:
            c.snapshots.Remove(pb.RemoveSnapshotRequest(snapshotter=g.snapshotter, key=key))
        except errdefs.Unavailable:
            raise
        except errdefs.FailedPrecondition as e:
            if "child" in str(e):
                msg = (f"cannot remove snapshot {key}: other snapshots are based on it "
                       f"(see `ctrctl snapshots tree`); remove them first")
            else:
                msg = f"cannot remove snapshot {key}: {e}"
            click.echo(f"{PROG}: {msg}", err=True)
            failed = True
            continue
        except errdefs.CtrdError as e:
            click.echo(f"{PROG}: cannot remove snapshot {key}: {e}", err=True)
            failed = True
            continue
        click.echo(key)
    if failed:
        raise click.exceptions.Exit(1)


@snapshots.command("mount")
@click.argument("key")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@pass_globals
def snapshots_mount(g: Globals, key: str, directory: str) -> None:
    """Mount snapshot KEY at DIR (created if missing); needs root on the daemon's host.

    Undo with `ctrctl snapshots unmount DIR`.
    """
    from ctrd.snapshots.mount import MountError, mount_all
    from ctrd.snapshots.snapshotter import Mount

    pb = _snapshots_pb()
    resp = g.client().snapshots.Mounts(pb.MountsRequest(snapshotter=g.snapshotter, key=key))
    try:
        os.makedirs(directory, exist_ok=True)
        mount_all([Mount(type=m.type, source=m.source, options=list(m.options))
                   for m in resp.mounts], directory)
    except MountError as e:
        raise CommandError(f"cannot mount snapshot {key} at {directory}: "
                           f"{e.strerror or e}") from None
    except OSError as e:
        raise CommandError(f"cannot mount snapshot {key} at {directory}: "
                           f"{e.strerror or e}") from None


@snapshots.command("unmount")
@click.argument("directory", metavar="DIR")
def snapshots_unmount(directory: str) -> None:
    """Unmount what `snapshots mount` mounted at DIR (every mount stacked there)."""
    from ctrd.snapshots.mount import MountError, is_mountpoint, unmount_all

    if not os.path.isdir(directory):
        raise CommandError(f"cannot unmount {directory}: no such directory")
    if not is_mountpoint(directory):
        raise CommandError(f"cannot unmount {directory}: nothing is mounted there")
    try:
        unmount_all(directory)
    except MountError as e:
        raise CommandError(f"cannot unmount {directory}: {e.strerror or e}") from None


# gc --------------------------------------------------------------------------------

@cli.command()
@pass_globals
def gc(g: Globals) -> None:
    """Run a garbage collection now and wait for it to finish.

    It removes, in every namespace, what nothing holds any more: content and snapshots no
    lease, image, container or gc.root label keeps, expired leases, abandoned ingests.

    containerd's API has no call for this; but deleting a lease with sync=true makes the
    daemon collect before it answers. So ctrctl creates a throwaway lease
    (ctrctl-gc-<random>, in the current namespace, which is created if missing) and
    deletes it with sync. Works the same against containerd. The wait is bounded by
    --timeout.
    """
    lease_id, seconds = g.client().collect_garbage()
    click.echo(f"garbage collection done in {seconds * 1000:.0f} ms "
               f"(through lease {lease_id}, created and deleted with sync)")


# images ----------------------------------------------------------------------------

@cli.group(cls=AliasedGroup, aliases={"list": "ls", **RM_ALIASES})
def images() -> None:
    """Manage images (named references to a manifest or index in the content store).

    An image record keeps what it references from garbage collection; content stays in the
    daemon, ctrctl reads it through the Content API (sizes, platforms, inspect, push,
    export).
    """


def _images_pb() -> Any:
    from ctrd.api.containerd.services.images.v1 import images_pb2

    return images_pb2


def _reader(c: Client) -> Any:
    return lambda digest: c.read_content(digest)


def _desc(target: Any) -> Any:
    from ctrd.images.manifest import Descriptor

    return Descriptor(target.media_type, target.digest, target.size,
                      annotations=dict(target.annotations))


def image_size(c: Client, target: Any) -> int | None:
    """What ``ctr images ls`` shows as SIZE: the root, and for the host platform the
    manifest, config and layers (None if some of that content is missing)."""
    from ctrd.images.manifest import host_platform
    from ctrd.images.push import walk

    try:
        nodes = walk(_reader(c), _desc(target), host_platform(), strict=False)
    except (errdefs.NotFound, errdefs.InvalidArgument):
        return None
    return sum(n.desc.size for n in nodes)


def image_platforms(c: Client, target: Any) -> list[str]:
    from ctrd.images.push import platforms

    try:
        return platforms(_reader(c), _desc(target))
    except (errdefs.NotFound, errdefs.InvalidArgument, ValueError):
        return []


def image_record(img: Any) -> dict[str, Any]:
    t = img.target
    return {"name": img.name,
            "target": {"mediaType": t.media_type, "digest": t.digest, "size": t.size,
                       **({"annotations": dict(sorted(t.annotations.items()))}
                          if t.annotations else {})},
            "labels": dict(sorted(img.labels.items())),
            "created_at": rfc3339(img.created_at), "updated_at": rfc3339(img.updated_at)}


@images.command("ls")
@quiet_option("image names")
@format_option
@click.argument("filters", nargs=-1, metavar="[FILTER...]")
@pass_globals
def images_ls(g: Globals, quiet: bool, fmt: str, filters: tuple[str, ...]) -> None:
    """List images (REF, TYPE, DIGEST, SIZE, PLATFORMS, LABELS).

    SIZE adds up the index (if any) and the host platform's manifest, config and layers, as
    read from content ("-" if some is missing). FILTERs are containerd filters on name,
    target.digest, target.mediatype and labels (e.g. 'name~=busybox', labels.app==web).
    """
    pb = _images_pb()
    c = g.client()
    found = sorted(c.images.List(pb.ListImagesRequest(filters=list(filters))).images,
                   key=lambda i: i.name)
    if quiet:
        for img in found:
            click.echo(img.name)
        return
    records = []
    for img in found:
        r = image_record(img)
        r["size"] = image_size(c, img.target)
        r["platforms"] = image_platforms(c, img.target)
        records.append(r)
    if fmt == "json":
        print_json(records)
        return
    print_table(["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"],
                [[r["name"], r["target"]["mediaType"], r["target"]["digest"],
                  "-" if r["size"] is None else human_size(r["size"]),
                  ",".join(r["platforms"]) or "-", _labels_text(r["labels"]) or "-"]
                 for r in records])


@images.command("rm")
@click.option("--sync", is_flag=True,
              help="wait for the garbage collection that frees the images' content")
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@pass_globals
def images_rm(g: Globals, sync: bool, refs: tuple[str, ...]) -> None:
    """Remove images; prints each one removed (one not found: a warning, as with ctr).

    Their content and snapshots become collectable; with --sync the command returns only
    after a garbage collection has removed them.
    """
    pb = _images_pb()
    c = g.client()
    failed, removed, synced = False, False, False
    for i, ref in enumerate(refs):
        last = i == len(refs) - 1
        try:
            c.images.Delete(pb.DeleteImageRequest(name=ref, sync=sync and last))
        except errdefs.NotFound:
            click.echo(f"{PROG}: warning: {ref}: image not found", err=True)
            continue
        except errdefs.Unavailable:
            raise
        except errdefs.CtrdError as e:
            click.echo(f"{PROG}: unable to delete {ref}: {e}", err=True)
            failed = True
            continue
        removed, synced = True, sync and last
        click.echo(ref)
    if sync and removed and not synced:
        c.collect_garbage()  # the last delete did not collect: collect for the others
    if failed:
        raise click.exceptions.Exit(1)


@images.command("tag")
@click.option("--force", is_flag=True, help="replace DST if it exists")
@click.argument("src")
@click.argument("dst")
@pass_globals
def images_tag(g: Globals, force: bool, src: str, dst: str) -> None:
    """Create image DST pointing at SRC's target (with SRC's labels); prints DST."""
    pb = _images_pb()
    c = g.client()
    img = c.images.Get(pb.GetImageRequest(name=src)).image
    new = pb.Image(name=dst, labels=dict(img.labels), target=img.target)
    try:
        c.images.Create(pb.CreateImageRequest(image=new))
    except errdefs.AlreadyExists:
        if not force:
            raise CommandError(f"image {dst!r} already exists (use --force to replace "
                               "it)") from None
        c.images.Update(pb.UpdateImageRequest(image=new))
    click.echo(dst)


@images.command("inspect")
@click.argument("ref")
@pass_globals
def images_inspect(g: Globals, ref: str) -> None:
    """Print an image as JSON: its record, and its index (if any), the host platform's
    manifest and its config, as documents read from content."""
    import json

    from ctrd.images import manifest as m
    from ctrd.images.push import read_all

    pb = _images_pb()
    c = g.client()
    read = _reader(c)
    img = c.images.Get(pb.GetImageRequest(name=ref)).image
    out: dict[str, Any] = {"image": image_record(img)}
    desc = _desc(img.target)
    for _ in range(8):
        if desc.media_type not in m.INDEXES:
            break
        data = read_all(read, desc)
        out.setdefault("index", json.loads(data))
        desc = m.select(m.parse_index(data, desc.media_type), m.host_platform())
    if desc.media_type in m.MANIFESTS:
        data = read_all(read, desc)
        out["manifest"] = json.loads(data)
        man = m.parse_manifest(data, desc.media_type)
        out["config"] = json.loads(read_all(read, man.config, m.MAX_CONFIG))
    print_json(out)


# -- pull -----------------------------------------------------------------------------------

@cli.command("pull")
@click.argument("ref")
@click.option("--plain-http", is_flag=True, help="talk HTTP, not HTTPS, to the registry")
@click.option("--platform", default="", metavar="OS/ARCH[/VARIANT]",
              help="the platform to pull (default: the daemon's)")
@click.option("--snapshotter", envvar="CONTAINERD_SNAPSHOTTER", default="overlayfs",
              show_default=True)
@click.option("--skip-unpack", is_flag=True, help="fetch only")
@click.option("-u", "--user", default="", metavar="USER[:PASSWORD]",
              help="registry credentials (default: ~/.docker/config.json's helpers or auths, "
                   "$DOCKER_CONFIG)")
@pass_globals
def pull_cmd(g: Globals, ref: str, plain_http: bool, platform: str, snapshotter: str,
             skip_unpack: bool, user: str) -> None:
    """Pull an image from a registry and unpack it, in the daemon (progress per layer)."""
    from ctrd.api.ctrd.v1 import images_pb2

    username, _, secret = user.partition(":")
    if not username:  # as docker and nerdctl: the user's ~/.docker/config.json (helpers)
        from ctrd.remotes.credhelpers import docker_credentials
        from ctrd.remotes.reference import parse

        creds = docker_credentials(parse(ref).host)
        if creds is not None:
            username, secret = creds.username, creds.secret
    req = images_pb2.PullRequest(ref=ref, plain_http=plain_http, platform=platform,
                                 snapshotter=snapshotter, skip_unpack=skip_unpack,
                                 username=username, secret=secret)
    stream = g.client().transfer.Pull(req)
    last = None
    if is_tty(sys.stderr):
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)

        with Progress(TextColumn("{task.description}"), BarColumn(),
                      DownloadColumn(binary_units=True), TransferSpeedColumn(),
                      TimeRemainingColumn(),
                      console=Console(file=sys.stderr, highlight=False)) as bar:
            tasks: dict[str, Any] = {}
            for msg in stream:
                for b in msg.blobs:
                    desc = f"{b.digest[7:19]} {b.status:<11}"
                    if b.digest not in tasks:
                        tasks[b.digest] = bar.add_task(desc, total=b.total or None)
                    bar.update(tasks[b.digest], completed=b.done, description=desc)
                last = msg
    else:
        seen: dict[str, str] = {}
        for msg in stream:
            for b in msg.blobs:
                if seen.get(b.digest) != b.status:
                    seen[b.digest] = b.status
                    click.echo(f"{b.digest}: {b.status} "
                               f"({human_size(b.done)}/{human_size(b.total)})",
                               err=True)
            last = msg
    if last is None or not last.image:
        raise CommandError("pull ended without a result")
    click.echo(f"{last.image} {last.target.digest} pulled in {last.seconds:.2f} s")


# -- push -----------------------------------------------------------------------------------

@cli.command("push")
@click.argument("ref")
@click.argument("local_ref", required=False, default="")
@click.option("--plain-http", is_flag=True, help="talk HTTP, not HTTPS, to the registry")
@click.option("--hosts-dir", default="", metavar="DIR",
              help="containerd's certs.d directory of per-registry host settings")
@click.option("-u", "--user", default="", metavar="USER[:PASSWORD]",
              help="registry credentials")
@pass_globals
def push_cmd(g: Globals, ref: str, local_ref: str, plain_http: bool, hosts_dir: str,
             user: str) -> None:
    """Push image LOCAL_REF (default: REF) to the registry as REF.

    The push runs in ctrctl: it reads the image's content from the daemon (Content.Read)
    and uploads the blobs the registry lacks, then the manifests (children first), then the
    tag. An index is pushed with all its manifests, so each must be in the content store.
    """
    from ctrd.images.push import push
    from ctrd.remotes.auth import Credentials
    from ctrd.remotes.reference import parse
    from ctrd.remotes.registry import Registry

    pb = _images_pb()
    c = g.client()
    img = c.images.Get(pb.GetImageRequest(name=local_ref or ref)).image
    target = _desc(img.target)
    remote = parse(ref)
    if remote.digest and remote.digest != target.digest:
        raise CommandError(f"{ref} names digest {remote.digest}, but the image is "
                           f"{target.digest}")
    username, _, secret = user.partition(":")
    creds = {remote.host: Credentials(username, secret)} if username else None
    if creds is None:  # as pull: what `ctrctl login` saved, or a credential helper's
        from ctrd.remotes.credhelpers import docker_credentials

        saved = docker_credentials(remote.host)
        creds = {remote.host: saved} if saved is not None else None
    registry = Registry(hosts_dir=hosts_dir or None, plain_http=plain_http, credentials=creds)

    def report(digest: str, status: str) -> None:
        click.echo(f"{digest}: {status}", err=True)

    try:
        result = push(_reader(c), registry.repository(remote), target, tag=remote.tag,
                      progress=report)
    except errdefs.NotFound as e:
        raise CommandError(f"cannot push {local_ref or ref}: {e} (every blob of the image "
                           "must be in the content store)") from None
    click.echo(f"{remote} {target.digest} pushed ({len(result.pushed)} blobs uploaded, "
               f"{len(result.skipped)} already there, {len(result.manifests)} manifests)")


# -- export / import -------------------------------------------------------------------------

def _platform_option(f: Any) -> Any:
    return click.option("--platform", default="", metavar="OS/ARCH[/VARIANT]",
                        help="the platform (default: this host's)")(f)


@cli.command("export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@_platform_option
@click.option("--all-platforms", is_flag=True,
              help="every manifest of an index (each must be in the content store)")
@click.option("--skip-manifest-json", is_flag=True,
              help="no Docker manifest.json (OCI layout only)")
@pass_globals
def export_cmd(g: Globals, file: str, refs: tuple[str, ...], platform: str,
               all_platforms: bool, skip_manifest_json: bool) -> None:
    """Write images to FILE ('-': stdout) as `ctr images export` does: an OCI image layout
    tar that also holds Docker's manifest.json (`docker load`, skopeo docker-archive:).

    Content is read from the daemon (Content.Read), streamed and verified. Of an index,
    only the manifests for the platform are written unless --all-platforms.
    """
    from ctrd.images.archive import export
    from ctrd.images.manifest import parse_platform

    pb = _images_pb()
    c = g.client()
    plat = parse_platform(platform) if platform else None
    chosen = []
    for ref in refs:
        img = c.images.Get(pb.GetImageRequest(name=ref)).image
        chosen.append((ref, _desc(img.target)))
    opts = dict(platform=plat, all_platforms=all_platforms,
                docker_manifest=not skip_manifest_json)
    if file == "-":
        export(_reader(c), sys.stdout.buffer, chosen, **opts)
        sys.stdout.buffer.flush()
        return
    tmp = f"{file}.ctrctl-{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as out:
            blobs = export(_reader(c), out, chosen, **opts)
        os.replace(tmp, file)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    click.echo(f"exported {len(chosen)} image(s), {len(blobs)} blobs, to {file}", err=True)


class _DaemonStore:
    """:class:`ctrd.images.archive.Store` over the Content API (writes under ``c``'s lease)."""

    def __init__(self, c: Client) -> None:
        self.c = c

    def _abort(self, ref: str) -> None:
        from ctrd.api.containerd.services.content.v1 import content_pb2 as cpb

        try:
            self.c.content.Abort(cpb.AbortRequest(ref=ref))
        except errdefs.CtrdError:
            pass

    def write(self, desc: Any, chunks: Any) -> None:
        ref = f"ctrctl-import-{desc.digest}"
        try:
            w = self.c.writer(ref, total=desc.size, expected=desc.digest)
        except errdefs.AlreadyExists:
            return
        try:
            with w:
                w.offset = 0
                for chunk in chunks:
                    w.write(chunk)
                w.commit(total=desc.size, expected=desc.digest)
        except errdefs.AlreadyExists:
            return
        except BaseException:
            self._abort(ref)
            raise

    def ingest(self, size: int, chunks: Any) -> str:
        """A blob whose digest the daemon tells us at commit (a Docker archive's files)."""
        import hashlib

        ref = f"ctrctl-import-tar-{os.urandom(8).hex()}"
        h = hashlib.sha256()
        try:
            with self.c.writer(ref, total=size) as w:
                w.offset = 0
                for chunk in chunks:
                    h.update(chunk)
                    w.write(chunk)
                try:
                    return w.commit(total=size)
                except errdefs.AlreadyExists:
                    return "sha256:" + h.hexdigest()
        except BaseException:
            self._abort(ref)
            raise

    def read(self, digest: str) -> Any:
        return self.c.read_content(digest)

    def exists(self, desc: Any) -> bool:
        from ctrd.api.containerd.services.content.v1 import content_pb2 as cpb

        try:
            self.c.content.Info(cpb.InfoRequest(digest=desc.digest))
            return True
        except errdefs.NotFound:
            return False

    def size(self, digest: str) -> int:
        from ctrd.api.containerd.services.content.v1 import content_pb2 as cpb

        return self.c.content.Info(cpb.InfoRequest(digest=digest)).info.size

    def label(self, digest: str, labels: dict[str, str]) -> None:
        from google.protobuf import field_mask_pb2

        from ctrd.api.containerd.services.content.v1 import content_pb2 as cpb

        if labels:
            self.c.content.Update(cpb.UpdateRequest(
                info=cpb.Info(digest=digest, labels=labels),
                update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels])))

    def compressed(self, diff_id: str) -> Any:
        from ctrd.api.containerd.services.content.v1 import content_pb2 as cpb
        from ctrd.images.manifest import Descriptor

        flt = f'labels."containerd.io/uncompressed"=={diff_id}'
        for resp in self.c.content.List(cpb.ListContentRequest(filters=[flt])):
            for info in resp.info:
                return Descriptor("", info.digest, info.size)
        return None


@cli.command("import")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--no-unpack", is_flag=True, help="do not unpack the images")
@click.option("--snapshotter", envvar="CONTAINERD_SNAPSHOTTER", default="overlayfs",
              show_default=True)
@_platform_option
@click.option("--all-platforms", is_flag=True,
              help="every manifest of an index must be in the archive (and is kept)")
@click.option("--index-name", default="", metavar="NAME",
              help="also create image NAME for the archive's index")
@click.option("--digests", is_flag=True,
              help="also create an image import-<date>@<digest> per manifest of the index")
@pass_globals
def import_cmd(g: Globals, file: str, no_unpack: bool, snapshotter: str, platform: str,
               all_platforms: bool, index_name: str, digests: bool) -> None:
    """Import the images of an OCI image layout tar (`ctr images export`, `ctrctl export`)
    or a Docker archive (`docker save`, skopeo docker-archive:), and unpack them.

    The archive is streamed (twice: headers first, then data) and treated as hostile: no
    traversal or links out of it, capped index.json/manifest.json, at most 10000 entries;
    every blob's digest is verified as it is written. A Docker archive becomes a Docker
    schema 2 manifest per image, as containerd converts it. Everything is written under a
    temporary lease; image records are created (or updated) only when every image is
    complete and unpacked for the platform (ctr's default too; --no-unpack skips it), so a
    bad archive, one without a manifest for the platform, or a layer past the daemon's unpack
    limits creates no image and leaves no content or snapshot.
    """
    import time as _time

    from google.protobuf import field_mask_pb2

    from ctrd.api.containerd.services.leases.v1 import leases_pb2 as lpb
    from ctrd.cli.client import GC_EXPIRE_LABEL
    from ctrd.cli.unpack import unpack
    from ctrd.images.archive import import_archive
    from ctrd.images.manifest import host_platform, parse_platform

    pb = _images_pb()
    c = g.client()
    plat = parse_platform(platform) if platform else host_platform()
    lease_id = f"ctrctl-import-{os.urandom(6).hex()}"
    c.leases.Create(lpb.CreateRequest(id=lease_id, labels={GC_EXPIRE_LABEL: gc_expire(3600)}))
    leased = c.with_namespace(c.namespace, lease=lease_id)
    done = False
    try:
        result = import_archive(lambda: open(file, "rb"), _DaemonStore(leased),
                                platform=plat, all_platforms=all_platforms,
                                keep_index=bool(index_name), unnamed=digests)
        wanted = list(result.images)
        if index_name and result.index is not None:
            wanted.insert(0, (index_name, result.index))
        if digests:
            prefix = f"import-{_time.strftime('%Y-%m-%d')}"
            wanted += [(f"{prefix}@{d.digest}", d) for d in result.manifests]
        # Unpack first (under the lease), then create the records: an image whose layers do
        # not unpack (a wrong diff_id) is never created.
        if not no_unpack:
            unpacked: set[str] = set()
            for name, root in wanted:
                if root.digest in unpacked:
                    continue
                unpacked.add(root.digest)
                try:
                    chain = unpack(leased, root, snapshotter, plat)
                except errdefs.NotFound as e:
                    # No manifest for the platform: an image that cannot be mounted or run
                    # is not created (ctr creates it; --no-unpack imports without it).
                    raise CommandError(f"cannot import {file}: unpacking {name} for {plat}: "
                                       f"{e.detail}") from None
                except errdefs.FailedPrecondition as e:
                    raise CommandError(f"cannot import {file}: unpacking {name}: "
                                       f"{e.detail}") from None
                click.echo(f"unpacked {name} ({root.digest}) into {snapshotter}: {chain}",
                           err=True)
        for name, root in wanted:
            target = pb.Image(name=name, target=_target_pb(root))
            try:
                c.images.Update(pb.UpdateImageRequest(  # as containerd's Import: "target"
                    image=target, update_mask=field_mask_pb2.FieldMask(paths=["target"])))
            except errdefs.NotFound:
                c.images.Create(pb.CreateImageRequest(image=target))
            click.echo(f"{name} {root.digest}")
        done = True
    except errdefs.InvalidArgument as e:
        raise CommandError(f"cannot import {file}: {e.detail}") from None
    finally:
        try:
            c.leases.Delete(lpb.DeleteRequest(id=lease_id, sync=not done))
        except errdefs.CtrdError:
            pass


# -- login / logout --------------------------------------------------------------------------

@cli.command("login")
@click.argument("server", required=False, default="docker.io")
@click.option("-u", "--username", default="", help="default: asked for on a terminal")
@click.option("--password-stdin", is_flag=True, help="read the password from stdin")
@click.option("--plain-http", is_flag=True, help="talk HTTP, not HTTPS, to the registry")
@click.option("--hosts-dir", default="", metavar="DIR",
              help="containerd's certs.d directory of per-registry host settings")
def login_cmd(server: str, username: str, password_stdin: bool, plain_http: bool,
              hosts_dir: str) -> None:
    """Check credentials against registry SERVER (default: Docker Hub) and save them in
    ~/.docker/config.json ($DOCKER_CONFIG), where `ctrctl pull`/`push` and docker find them.

    The registry's /v2/ is asked with them (Basic, or a Bearer token fetched with them);
    nothing is saved unless it accepts them. The file keeps all its other settings and is
    replaced atomically, mode 0600.
    """
    from ctrd.remotes import login
    from ctrd.remotes.auth import Unauthorized

    if not username:
        if not sys.stdin.isatty() or password_stdin:
            raise CommandError("a username is required (-u) when stdin is not a terminal")
        username = click.prompt("Username", err=True)
    if password_stdin:
        secret = sys.stdin.read().rstrip("\r\n")
    elif sys.stdin.isatty():
        secret = click.prompt("Password", hide_input=True, err=True)
    else:
        raise CommandError("no password: use --password-stdin, or run on a terminal")
    if not secret:
        raise CommandError("the password must not be empty")
    try:
        login.verify(server, username, secret, plain_http=plain_http,
                     hosts_dir=hosts_dir or None)
    except Unauthorized as e:
        raise CommandError(f"login to {server} failed: {e}") from None
    path, key = login.store(server, username, secret)
    click.echo(f"credentials for {key} saved in {path}", err=True)
    click.echo("Login Succeeded")


@cli.command("logout")
@click.argument("server", required=False, default="docker.io")
def logout_cmd(server: str) -> None:
    """Remove the saved credentials of registry SERVER (default: Docker Hub)."""
    from ctrd.remotes import login

    if login.remove(server):
        click.echo(f"Removing login credentials for {login.server_key(server)}")
    else:
        click.echo(f"Not logged in to {login.server_key(server)}")


def _target_pb(desc: Any) -> Any:
    from ctrd.api.containerd.types import descriptor_pb2

    return descriptor_pb2.Descriptor(media_type=desc.media_type, digest=desc.digest,
                                     size=desc.size, annotations=dict(desc.annotations))


# -- container commands (ctrd/cli/containers.py) ------------------------------------------

from ctrd.cli import containers as _containers  # noqa: E402  (needs cli, defined above)

_containers.register(cli)


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
