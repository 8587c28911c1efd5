"""The plugin registry: ordering, failures, skips, required/disabled plugins, configs, dirs."""

from __future__ import annotations

import asyncio
import stat
from dataclasses import dataclass

import pytest

from ctrd.config import ConfigError, ServerConfig, setting
from ctrd.errdefs import NotFound, SkipPlugin
from ctrd.plugins.registration import Registration
from ctrd.plugins.registry import PluginGraphError, Registry, RequiredPluginError


def reg(type_, id_, requires=(), init=None, config=None):
    return Registration(type_, id_, init or (lambda ic: f"{type_}.{id_}"), tuple(requires),
                        config)


def registry(*regs):
    r = Registry()
    for x in regs:
        r.register(x)
    return r


def uris(regs):
    return [r.uri for r in regs]


def load(r, tmp_path, **cfg):
    config = ServerConfig(root=str(tmp_path / "root"), state=str(tmp_path / "state"), **cfg)
    return asyncio.run(r.load(config))


def test_requirements_come_first_in_registration_order():
    r = registry(reg("t.grpc", "a", ["t.svc"]), reg("t.svc", "s", ["t.meta"]),
                 reg("t.meta", "m"), reg("t.other", "o"))
    assert uris(r.graph()) == ["t.meta.m", "t.svc.s", "t.grpc.a", "t.other.o"]


def test_star_requires_every_other_plugin():
    r = registry(reg("t.all", "x", ["*"]), reg("t.a", "a"), reg("t.b", "b", ["t.a"]))
    assert uris(r.graph()) == ["t.a.a", "t.b.b", "t.all.x"]


def test_cycle_is_a_clear_error():
    r = registry(reg("t.a", "a", ["t.b"]), reg("t.b", "b", ["t.c"]), reg("t.c", "c", ["t.a"]))
    with pytest.raises(PluginGraphError, match=r"cycle: t.a.a -> t.b.b -> t.c.c -> t.a.a"):
        r.graph()


@pytest.mark.parametrize("bad, message", [
    (reg("", "a"), "type and id must be set"),
    (reg("t.a", ""), "type and id must be set"),
    (reg("t.a", "x.y"), "must not contain"),
    (reg("t.a", "a", ["*", "t.b"]), "only requirement"),
])
def test_invalid_registrations(bad, message):
    with pytest.raises(PluginGraphError, match=message):
        registry(bad)


def test_duplicate_registration():
    with pytest.raises(PluginGraphError, match="t.a.a: registered twice"):
        registry(reg("t.a", "a"), reg("t.a", "a"))


def test_disabled_plugins_are_left_out(tmp_path):
    r = registry(reg("t.a", "a"), reg("t.b", "b", ["t.a"]))
    assert uris(r.graph(["t.a.a"])) == ["t.b.b"]

    def needs_a(ic):
        return ic.get("t.a")

    r = registry(reg("t.a", "a"), reg("t.b", "b", ["t.a"], init=needs_a))
    plugins = load(r, tmp_path, disabled_plugins=["t.a.a"])
    (b,) = plugins.ordered
    assert b.status == "error" and isinstance(b.error, NotFound)
    assert "no plugins registered for t.a" in str(b.error)


def test_failures_are_recorded_and_loading_goes_on(tmp_path):
    def boom(ic):
        raise RuntimeError("kaput")

    def skip(ic):
        raise SkipPlugin("not on this host")

    def dependent(ic):
        return ic.get("t.bad")

    r = registry(reg("t.bad", "x", init=boom), reg("t.skip", "s", init=skip),
                 reg("t.ok", "o"), reg("t.dep", "d", ["t.bad"], init=dependent))
    plugins = load(r, tmp_path)
    status = {p.registration.uri: p.status for p in plugins}
    assert status == {"t.bad.x": "error", "t.skip.s": "skip", "t.ok.o": "ok",
                      "t.dep.d": "error"}
    assert str(plugins.get("t.dep.d").error) == "kaput"  # the dependency's own error
    assert "skip plugin" in str(plugins.get("t.skip.s").error)


def test_required_plugin_failure_stops_the_load(tmp_path):
    def boom(ic):
        raise RuntimeError("kaput")

    r = registry(reg("t.bad", "x", init=boom), reg("t.ok", "o"))
    with pytest.raises(RequiredPluginError, match="load required plugin t.bad.x: kaput"):
        load(r, tmp_path, required_plugins=["t.bad.x"])
    assert len(load(r, tmp_path, required_plugins=["t.ok.o"])) == 2


def test_required_plugin_missing_or_disabled(tmp_path):
    r = registry(reg("t.ok", "o"))
    with pytest.raises(RequiredPluginError, match="t.nope.x not included"):
        load(r, tmp_path, required_plugins=["t.nope.x"])
    with pytest.raises(RequiredPluginError, match="t.ok.o not included"):
        load(r, tmp_path, required_plugins=["t.ok.o"], disabled_plugins=["t.ok.o"])


@dataclass
class DemoConfig:
    size: int = setting(3)
    name: str = setting("demo")


def test_plugin_config_is_decoded_with_defaults(tmp_path):
    seen = {}

    def init(ic):
        seen["config"] = ic.config
        return object()

    r = registry(reg("t.a", "a", init=init, config=DemoConfig))
    warnings = []
    config = ServerConfig(root=str(tmp_path), state=str(tmp_path),
                          plugins={"t.a.a": {"size": 7, "colour": "red"},
                                   "t.gone.x": {"k": 1}})
    asyncio.run(r.load(config, warnings))
    assert seen["config"] == DemoConfig(size=7, name="demo")
    assert any('unknown key plugins."t.a.a".colour' in w for w in warnings)
    assert any('plugins."t.gone.x": no such plugin' in w for w in warnings)


def test_invalid_plugin_config_names_the_key(tmp_path):
    r = registry(reg("t.a", "a", config=DemoConfig))
    config = ServerConfig(root=str(tmp_path), state=str(tmp_path),
                          plugins={"t.a.a": {"size": "big"}})
    with pytest.raises(ConfigError, match=r'plugins."t.a.a".size: expected integer, got '
                                          r"string 'big'"):
        asyncio.run(r.load(config))


def test_async_init_and_lazy_private_dirs(tmp_path):
    async def init(ic):
        await asyncio.sleep(0)
        return ic.root / "data"

    def untouched(ic):
        return 1

    r = registry(reg("t.a", "a", init=init), reg("t.b", "b", init=untouched))
    plugins = load(r, tmp_path)
    path = plugins.get("t.a.a").instance
    assert path == tmp_path / "root" / "t.a.a" / "data"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not (tmp_path / "root" / "t.b.b").exists()  # never asked for: never created


def test_init_context_lookups(tmp_path):
    seen = {}

    def init(ic):
        seen["all"] = ic.get_all("t.snap")
        seen["one"] = ic.get_by_id("t.snap", "native")
        with pytest.raises(NotFound, match="no t.snap plugins with id zfs"):
            ic.get_by_id("t.snap", "zfs")
        return 1

    def broken(ic):
        raise RuntimeError("no btrfs here")

    r = registry(reg("t.snap", "overlay"), reg("t.snap", "native"),
                 reg("t.snap", "btrfs", init=broken), reg("t.user", "u", ["t.snap"], init=init))
    load(r, tmp_path)
    assert seen["all"] == {"overlay": "t.snap.overlay", "native": "t.snap.native"}
    assert seen["one"] == "t.snap.native"
