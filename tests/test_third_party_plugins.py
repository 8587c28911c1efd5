"""A third-party package adds plugins through the ``ctrd.plugins`` entry point group.

The packages under tests/fixtures/ are installed for real (``pip install --target``) into a
temp dir that the daemon gets on its PYTHONPATH, exactly as a site-packages install would be
seen; the real ``ctr`` then looks at the result.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import CTR, ctr
from support.plugins import pip_install
from support.poll import wait_until

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CTR is None, reason="ctr is not installed (apt containerd)")]

@pytest.fixture
def site(tmp_root):
    target = tmp_root / "site"
    pip_install("demo-plugin", target, tmp_root)
    return target


def plugin_rows(address: str) -> dict[tuple[str, str], str]:
    r = ctr(address, "plugins", "ls")
    assert r.returncode == 0, r.stderr
    return {tuple(line.split()[:2]): line.split()[-1] for line in r.stdout.splitlines()[1:]}


def test_third_party_plugins_load_and_their_errors_show(start_ctrd, site, tmp_root):
    markers = tmp_root / "markers"
    markers.mkdir()
    d = start_ctrd(env={"PYTHONPATH": str(site), "CTRD_DEMO_MARKERS": str(markers)},
                   config_text='version = 2\n[plugins."io.containerd.internal.v1.demo"]\n'
                               'greeting = "hi there"\n')
    rows = plugin_rows(d.address)
    assert rows[("io.containerd.internal.v1", "demo")] == "ok"
    assert rows[("io.containerd.internal.v1", "broken")] == "error"
    assert rows[("io.containerd.grpc.v1", "version")] == "ok"  # built-ins unaffected

    detailed = ctr(d.address, "plugins", "ls", "-d", "id==broken").stdout
    assert "demo plugin refuses to start" in detailed
    detailed = ctr(d.address, "plugins", "ls", "-d", "id==demo").stdout
    assert "hi there" in detailed and "Capabilities:" in detailed
    assert (d.root / "io.containerd.internal.v1.demo" / "seen").read_text() == "hi there"

    # The daemon still serves everything else.
    assert ctr(d.address, "version").returncode == 0
    assert ctr(d.address, "namespaces", "create", "after").returncode == 0

    # Hooks: ctrd_plugins_loaded ran once with every outcome; ctrd_shutdown at stop.
    loaded = (markers / "loaded").read_text().splitlines()
    assert "io.containerd.internal.v1.demo ok" in loaded
    assert "io.containerd.internal.v1.broken error" in loaded
    assert not (markers / "shutdown").exists()
    assert d.stop() == 0
    assert (markers / "shutdown").read_text() == "bye"


def test_required_third_party_plugin_failure_stops_the_daemon(start_ctrd, site):
    d = start_ctrd(env={"PYTHONPATH": str(site)}, wait=False,
                   config_text='version = 2\n'
                               'required_plugins = ["io.containerd.internal.v1.broken"]\n')
    assert d.proc.wait(60) == 1
    log = d.read_log()
    assert ("load required plugin io.containerd.internal.v1.broken: "
            "demo plugin refuses to start") in log
    assert not Path(d.address).exists()


def test_a_package_that_fails_to_import_does_not_stop_the_daemon(start_ctrd, tmp_root):
    target = tmp_root / "site2"
    pip_install("broken-plugin", target, tmp_root)
    d = start_ctrd(env={"PYTHONPATH": str(target)})
    assert ctr(d.address, "version").returncode == 0
    assert plugin_rows(d.address)[("io.containerd.grpc.v1", "namespaces")] == "ok"
    wait_until(lambda: "broken on purpose" in d.read_log(), 5)
    assert "could not load a plugin package" in d.read_log()
    assert "broken on purpose" in d.read_log()


def test_disabled_third_party_plugin_is_not_loaded(start_ctrd, site):
    d = start_ctrd(env={"PYTHONPATH": str(site)},
                   config_text='version = 2\n'
                               'disabled_plugins = ["io.containerd.internal.v1.broken"]\n')
    rows = plugin_rows(d.address)
    assert ("io.containerd.internal.v1", "broken") not in rows
    assert rows[("io.containerd.internal.v1", "demo")] == "ok"
