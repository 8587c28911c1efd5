"""ctrd's extension points, as pluggy hook specifications.

A third-party package joins in by declaring an entry point in the ``ctrd.plugins`` group that
names a module (or object) implementing some of these hooks with ``@ctrd.plugins.hookimpl``.
ctrd's own built-in plugins arrive through exactly this path (entry point ``builtin`` ->
:mod:`ctrd.plugins.builtin`).

Stages, in the order a daemon runs them:

1. discovery: :func:`ctrd_plugin_registrations` (each package lists its plugins);
2. start-up: :func:`ctrd_plugins_loaded` (after every plugin's init, before serving);
3. serving, per call: :func:`ctrd_container_create` (Containers/Create, before the record is
   stored: adjust the container's OCI spec, as NRI does for containerd);
4. shutdown: :func:`ctrd_shutdown` (after the sockets closed).

Every hook here is documented and has a test (tests/test_hooks.py checks both).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ctrd.metadata.containers import Container
    from ctrd.plugins.registration import Registration
    from ctrd.plugins.registry import PluginSet

PROJECT = "ctrd"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ctrd_plugin_registrations() -> "list[Registration]":
    """Discovery. Called once at daemon start (and by ``ctrd config default``).

    Return the :class:`~ctrd.plugins.registration.Registration` objects this package provides.
    Results of all implementations are concatenated; a (type, id) pair registered twice is an
    error that names both.
    """


@hookspec
def ctrd_plugins_loaded(plugins: "PluginSet") -> None:
    """Start-up. Called once after every plugin's init ran, before the sockets accept calls.

    ``plugins`` holds each plugin's outcome (instance or error). Use it to wire plugins
    together or to log; raising here is logged and does not stop the daemon.
    """


@hookspec
def ctrd_container_create(namespace: str, container: "Container", spec: dict) -> "dict | None":
    """Serving. Called by Containers/Create for each new container whose spec is OCI JSON
    (type URL ``types.containerd.io/opencontainers/runtime-spec/1/Spec``), after the request
    passed validation and before the record is stored.

    ``spec`` is the decoded OCI spec: change it in place, or return a new dict to replace it
    (None keeps it). Implementations run in pluggy's order, each seeing the spec as the
    previous ones left it; what the last one leaves is what gets stored (re-encoded as JSON;
    byte for byte the client's if nothing changed). ``container`` is the record about to be
    stored (read it, e.g. ``container.labels``; its ``spec`` field is replaced afterwards).
    Raising fails the create and stores nothing: a :class:`ctrd.errdefs.CtrdError` keeps its
    kind (gRPC code), anything else is UNKNOWN; the message names the plugin. The create can
    still fail after the hook ran (e.g. the id is taken): keep side effects out. Runs in a
    worker thread; blocking is allowed but delays the client.
    """


@hookspec
def ctrd_shutdown() -> None:
    """Shutdown. Called once when the daemon stops, after the sockets stopped accepting and
    in-flight calls finished, before the process exits. Raising is logged and ignored."""
