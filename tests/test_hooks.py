"""Every pluggy hook spec is documented and tested; each hook runs where its docs say.

End-to-end, a third-party package's hooks are exercised in test_third_party_plugins.py
(ctrd_plugin_registrations, ctrd_plugins_loaded, ctrd_shutdown in a real daemon). Here the
same hooks run in-process, with the daemon's own classes.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

from ctrd.config import ServerConfig
from ctrd.daemon import Daemon
from ctrd.plugins import hookspec
from ctrd.plugins.registration import Registration
from ctrd.plugins.registry import Registry

HOOKS = [name for name, fn in vars(hookspec).items()
         if name.startswith("ctrd_") and inspect.isfunction(fn)]


def test_every_hook_is_documented_and_tested():
    assert HOOKS, "no hook specs found"
    # A hook counts as tested when some test (or test fixture package) implements it.
    sources = "".join(p.read_text() for p in Path(__file__).parent.rglob("*.py"))
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspec, name)) or ""
        assert len(doc) > 40, f"hook {name} needs a docstring saying when it runs"
        assert f"def {name}(" in sources, f"hook {name} has no test implementing it"


class Recorder:
    def __init__(self):
        self.calls = []

    @hookspec.hookimpl
    def ctrd_plugin_registrations(self):
        self.calls.append("registrations")
        return [Registration("test.kind.v1", "rec", lambda ic: "instance")]

    @hookspec.hookimpl
    def ctrd_plugins_loaded(self, plugins):
        self.calls.append(("loaded", [p.registration.uri for p in plugins]))

    @hookspec.hookimpl
    def ctrd_shutdown(self):
        self.calls.append("shutdown")


def test_hooks_run_in_daemon_lifecycle_order(tmp_path):
    rec = Recorder()
    registry = Registry()
    registry.hooks.register(rec, name="recorder")
    # Discovery through an empty path: only our registered hook implementation answers.
    assert registry.discover(path=[]) == []
    cfg = ServerConfig(root=str(tmp_path / "r"), state=str(tmp_path / "s"))
    cfg.grpc.address = str(tmp_path / "s" / "ctrd.sock")

    async def lifecycle():
        d = Daemon(cfg, registry)
        await d.start()
        rec.calls.append("serving")
        await d.stop(grace=1)

    asyncio.run(lifecycle())
    assert rec.calls == ["registrations", ("loaded", ["test.kind.v1.rec"]), "serving",
                         "shutdown"]
    assert not Path(cfg.grpc.address).exists()


def test_a_failing_hook_does_not_stop_the_daemon(tmp_path):
    class Bad:
        @hookspec.hookimpl
        def ctrd_plugins_loaded(self, plugins):
            raise RuntimeError("hook bug")

        @hookspec.hookimpl
        def ctrd_shutdown(self):
            raise RuntimeError("hook bug")

    registry = Registry()
    registry.hooks.register(Bad())
    cfg = ServerConfig(root=str(tmp_path / "r"), state=str(tmp_path / "s"))
    cfg.grpc.address = str(tmp_path / "s" / "ctrd.sock")

    async def lifecycle():
        d = Daemon(cfg, registry)
        await d.start()
        await d.stop(grace=1)

    asyncio.run(lifecycle())
