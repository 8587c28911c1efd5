"""containerd 2.x config files (versions 3 and 4) start ctrd unchanged; version 1 and 2 files
keep working, migrated in memory as containerd 2.3.4 migrates them, with a deprecation
reported; ``ctrd config migrate`` / ``config default`` print version 4 (as containerd 2.3.4
does); hostile files are
refused naming the key as the file spells it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import containerd2
from conftest import launch_ctrd
from ctrd.config import ConfigError, decode, load
from ctrd.config_versions import CRI, CRI_IMAGES, CRI_RUNTIME, split_cri, to_v3
from ctrd.cri.config import CRIConfig

CTR2 = containerd2.CTR
need_containerd2 = pytest.mark.skipif(
    not containerd2.available(), reason=f"containerd 2.3.4 is not at {containerd2.BIN_DIR}")

V2_FILE = """\
version = 2
root = "/r"
[grpc]
address = "/s/ctrd.sock"
[plugins."io.containerd.grpc.v1.cri"]
sandbox_image = "pause:3.9"
stream_idle_timeout = "1h0m0s"
max_concurrent_downloads = 5
enable_selinux = false
max_container_log_line_size = 100
[plugins."io.containerd.grpc.v1.cri".containerd]
snapshotter = "native"
default_runtime_name = "crun"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
runtime_type = "io.containerd.runc.v2"
sandbox_mode = "podsandbox"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
BinaryName = "/usr/bin/crun"
[plugins."io.containerd.grpc.v1.cri".cni]
bin_dir = "/cni/bin"
conf_dir = "/cni/conf"
[plugins."io.containerd.grpc.v1.cri".registry]
config_path = "/etc/certs.d"
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def cri_of(result) -> CRIConfig:
    """The CRI plugin's decoded config, as the registry decodes it."""
    cfg = result.config
    warnings: list[str] = []
    try:
        return decode(CRIConfig, cfg.plugins.get(CRI, {}), f'plugins."{CRI}"', warnings)
    except ConfigError as e:
        raise ConfigError(cfg.rename(e.detail)) from None


def _ctrd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctrd.cli.daemon", *args],
                          capture_output=True, text=True, timeout=60)


def test_v2_file_splits_as_containerd_migrates_it():
    import tomllib

    v3 = to_v3(tomllib.loads(V2_FILE))
    assert v3["version"] == 3 and v3["grpc"] == {"address": "/s/ctrd.sock"}
    p = v3["plugins"]
    assert p[CRI] == {"stream_idle_timeout": "1h0m0s"}
    assert p[CRI_IMAGES] == {"pinned_images": {"sandbox": "pause:3.9"},
                             "max_concurrent_downloads": 5, "snapshotter": "native",
                             "registry": {"config_path": "/etc/certs.d"}}
    rt = p[CRI_RUNTIME]
    assert rt["cni"] == {"bin_dirs": ["/cni/bin"], "conf_dir": "/cni/conf"}
    assert rt["containerd"]["runtimes"]["crun"]["sandboxer"] == "podsandbox"
    assert "sandbox_mode" not in rt["containerd"]["runtimes"]["crun"]
    assert rt["max_container_log_line_size"] == 100 and "snapshotter" not in rt["containerd"]


def test_v2_v3_and_migrated_files_give_the_same_config(tmp_path):
    v2 = load(write(tmp_path / "v2.toml", V2_FILE))
    r = _ctrd("-c", str(tmp_path / "v2.toml"), "config", "migrate")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("version = 4\n")
    assert f'[plugins."{CRI_RUNTIME}"' in r.stdout and "bin_dirs" in r.stdout
    v3 = load(write(tmp_path / "v3.toml", r.stdout))
    assert (v3.config.root, v3.config.grpc.address) == ("/r", "/s/ctrd.sock")
    a, b = cri_of(v2), cri_of(v3)
    assert vars(a.containerd).keys() == vars(b.containerd).keys()
    assert a.containerd.snapshotter == b.containerd.snapshotter == "native"
    assert a.sandbox_image == b.sandbox_image == "pause:3.9"
    assert a.cni.bin_dir == b.cni.bin_dir == "/cni/bin"
    assert a.registry.config_path == b.registry.config_path == "/etc/certs.d"
    assert (a.max_concurrent_downloads, a.stream_idle_timeout) == (5, "1h0m0s")
    assert (b.max_concurrent_downloads, b.stream_idle_timeout) == (5, "1h0m0s")
    assert (b.containerd.runtimes["crun"].options
            == a.containerd.runtimes["crun"].options == {"BinaryName": "/usr/bin/crun"})
    # the version 2 file is reported as deprecated; the version 3 one is not
    assert v2.config.deprecations == ["io.containerd.deprecation/config-version"]
    assert v3.config.deprecations == []


def test_version_4_server_sections(tmp_path):
    cfg = load(write(tmp_path / "c.toml", textwrap.dedent("""\
        version = 4
        [plugins.'io.containerd.server.v1.grpc']
          address = '/x/g.sock'
          gid = 7
        [plugins.'io.containerd.server.v1.ttrpc']
          address = '/x/t.sock'
        [plugins.'io.containerd.cri.v1.runtime'.cni]
          bin_dir = ''
          bin_dirs = ['/a', '/b']
        """))).config
    assert (cfg.grpc.address, cfg.grpc.gid, cfg.ttrpc_address) == ("/x/g.sock", 7, "/x/t.sock")
    assert "io.containerd.server.v1.grpc" not in cfg.plugins
    assert cfg.plugins[CRI]["cni"] == {"bin_dir": "/a:/b"}


def test_cni_bin_dir_in_a_v3_file_is_deprecated(tmp_path):
    res = load(write(tmp_path / "c.toml", "version = 3\n[plugins.'io.containerd.cri.v1.runtime'"
                                          ".cni]\nbin_dir = '/old'\n"))
    assert res.config.deprecations == ["io.containerd.deprecation/cri-cni-bin-dir"]
    assert cri_of(res).cni.bin_dir == "/old"
    with pytest.raises(ConfigError, match="`bin_dir` and `bin_dirs` cannot be set"):
        load(write(tmp_path / "c.toml", "version = 3\n[plugins.'io.containerd.cri.v1.runtime'"
                                        ".cni]\nbin_dir = '/old'\nbin_dirs = ['/new']\n"))


def test_imports_are_merged(tmp_path):
    (tmp_path / "conf.d").mkdir()
    write(tmp_path / "conf.d" / "10-images.toml",
          "version = 3\n[plugins.'io.containerd.cri.v1.images']\nsnapshotter = 'native'\n")
    write(tmp_path / "conf.d" / "20-old.toml",
          "version = 2\ndisabled_plugins = ['io.containerd.grpc.v1.version']\n")
    main = write(tmp_path / "config.toml", textwrap.dedent("""\
        version = 3
        imports = ['conf.d/*.toml', '/nonexistent/*.toml']
        disabled_plugins = ['io.containerd.grpc.v1.healthcheck']
        [plugins.'io.containerd.cri.v1.images']
          snapshotter = 'overlayfs'
          max_concurrent_downloads = 2
        """))
    res = load(main)
    assert res.config.disabled_plugins == ["io.containerd.grpc.v1.healthcheck",
                                           "io.containerd.grpc.v1.version"]
    cri = cri_of(res)
    # a plugin section of a drop-in replaces the main file's whole section, as containerd's
    assert cri.containerd.snapshotter == "native" and cri.max_concurrent_downloads == 3
    write(tmp_path / "conf.d" / "30-newer.toml", "version = 4\n")
    with pytest.raises(ConfigError, match="30-newer.toml: version = 4: higher than"):
        load(main)


@pytest.mark.parametrize("text, message", [
    ("version = 4\n", None),
    ("version = 5\n", "version = 5: ctrd reads config versions 1 to 4"),
    ("version = 2\n[plugins.'io.containerd.cri.v1.runtime']\nenable_selinux = true\n",
     'plugins."io.containerd.cri.v1.runtime": a version 3 section in a version 2 config'),
    ("version = 1\n[plugins.'io.containerd.cri.v1.images']\n",
     'plugins."io.containerd.cri.v1.images": a version 3 section in a version 1 config'),
    ("version = 3\n[plugins.'io.containerd.cri.v1.images']\nsnapshotter = 1\n",
     'plugins."io.containerd.cri.v1.images".snapshotter: expected string, got integer 1'),
    ("version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n"
     "runtime_type = true\n",
     'plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.runtime_type: '
     "expected string"),
    ("version = 3\n[plugins.'io.containerd.cri.v1.images'.pinned_images]\nsandbox = []\n",
     'plugins."io.containerd.cri.v1.images".pinned_images.sandbox: expected string'),
    ("version = 3\n[plugins.'io.containerd.cri.v1.runtime'.cni]\nbin_dirs = 'x'\n",
     'plugins."io.containerd.cri.v1.runtime".cni.bin_dirs: expected an array of strings'),
    ("version = 3\n[plugins]\n'io.containerd.cri.v1.runtime' = 3\n",
     'plugins."io.containerd.cri.v1.runtime": expected a table, got integer'),
    ("version = 3\n[plugins.'io.containerd.cri.v1.runtime']\ncni = 'x'\n",
     'plugins."io.containerd.cri.v1.runtime".cni: expected a table, got string'),
    ("version = 3\n[plugins.'io.containerd.cri.v1.runtime']\nstats_collect_period = 10\n",
     'plugins."io.containerd.cri.v1.runtime".stats_collect_period: expected string'),
    ("version = 4\n[plugins.'io.containerd.server.v1.grpc']\naddress = 1\n",
     "grpc.address: expected string, got integer 1"),
    ("version = 3\nimports = 'x'\n", "imports: expected an array of strings"),
])
def test_hostile_files_name_the_key(tmp_path, text, message):
    path = write(tmp_path / "c.toml", text)
    if message is None:
        cri_of(load(path))
        return
    with pytest.raises(ConfigError) as e:
        cri_of(load(path))
    assert message in str(e.value)


def test_unknown_v3_keys_are_warnings_named_as_in_the_file(tmp_path):
    path = write(tmp_path / "c.toml", "version = 3\n[plugins.'io.containerd.cri.v1.runtime']\n"
                                      "enable_criu = true\n")
    res = load(path)
    warnings: list[str] = []
    decode(CRIConfig, res.config.plugins[CRI], f'plugins."{CRI}"', warnings)
    assert [res.config.rename(w) for w in warnings] == [
        'unknown key plugins."io.containerd.cri.v1.runtime".enable_criu ignored']


def test_config_default_is_version_4_and_round_trips(tmp_path):
    r = _ctrd("config", "default")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("version = 4\n")
    for uri in (CRI, CRI_RUNTIME, CRI_IMAGES):
        assert f'[plugins."{uri}"]' in r.stdout
    assert "systemd_cgroup" not in r.stdout and "runtime_engine" not in r.stdout
    res = load(write(tmp_path / "c.toml", r.stdout))
    assert res.warnings == [] and res.config.deprecations == []
    assert vars(cri_of(res).cni) == vars(CRIConfig().cni)
    r2 = _ctrd("-c", str(tmp_path / "c.toml"), "config", "dump")
    assert r2.returncode == 0 and r2.stderr == "", r2.stderr
    assert r2.stdout == r.stdout


def test_to_v4_moves_the_server_tables_as_containerd():
    from ctrd.config_versions import to_v3, to_v4

    v3 = {"version": 3, "grpc": {"address": "/s/c.sock", "uid": 5, "gid": 6,
                                 "tcp_address": "0.0.0.0:1"},
          "ttrpc": {"address": ""}, "debug": {"level": "debug", "address": "/s/debug.sock"},
          "metrics": {"address": "127.0.0.1:1338"},
          "plugins": {"io.containerd.server.v1.ttrpc": {"address": "/mine.ttrpc"}}}
    v4 = to_v4(v3)
    assert v4["version"] == 4 and "grpc" not in v4 and "ttrpc" not in v4
    p = v4["plugins"]
    assert p["io.containerd.server.v1.grpc"] == {"address": "/s/c.sock", "uid": 5, "gid": 6}
    assert p["io.containerd.server.v1.grpc-tcp"] == {"address": "0.0.0.0:1"}
    assert p["io.containerd.server.v1.ttrpc"] == {"address": "/mine.ttrpc"}  # the file's wins
    assert p["io.containerd.server.v1.debug"] == {"address": "/s/debug.sock"}
    assert v4["debug"] == {"level": "debug"}
    assert p["io.containerd.server.v1.metrics"] == {"address": "127.0.0.1:1338"}
    # an empty ttrpc address is derived from the gRPC one, as containerd's migration does
    derived = to_v4({"version": 3, "grpc": {"address": "/s/c.sock", "uid": 5}})
    assert derived["plugins"]["io.containerd.server.v1.ttrpc"] == {"address": "/s/c.sock.ttrpc",
                                                                  "uid": 5}
    back = to_v3(derived)
    assert back["grpc"] == {"address": "/s/c.sock", "uid": 5}
    assert back["ttrpc"]["address"] == "/s/c.sock.ttrpc"


@need_containerd2
def test_migrate_prints_what_containerd_migrate_prints_for_the_server(tmp_path):
    import tomllib

    v2 = write(tmp_path / "v2.toml", V2_FILE)
    theirs = subprocess.run([str(containerd2.CONTAINERD), "--config", str(v2), "config",
                             "migrate"], capture_output=True, text=True, timeout=60)
    assert theirs.returncode == 0, theirs.stderr
    ours = _ctrd("-c", str(v2), "config", "migrate")
    assert ours.returncode == 0, ours.stderr
    a, b = tomllib.loads(ours.stdout), tomllib.loads(theirs.stdout)
    assert a["version"] == b["version"] == 4
    for uri in ("io.containerd.server.v1.grpc", "io.containerd.server.v1.ttrpc"):
        assert a["plugins"][uri]["address"] == b["plugins"][uri]["address"], uri
    assert "grpc" not in a and "grpc" not in b


def test_config_migrate_needs_a_readable_file(tmp_path):
    r = _ctrd("config", "migrate")
    assert r.returncode == 1 and "no config file" in r.stderr
    r = _ctrd("-c", str(write(tmp_path / "c.toml", "version = 9\n")), "config", "migrate")
    assert r.returncode == 1 and "version = 9" in r.stderr


def test_split_keeps_set_removed_keys():
    out = split_cri({"systemd_cgroup": True, "registry": {"mirrors": {}},
                     "containerd": {"runtimes": {"r": {"runtime_engine": "x",
                                                       "runtime_root": ""}}}})
    assert out[CRI_RUNTIME]["systemd_cgroup"] is True
    assert out[CRI_IMAGES]["registry"] == {}
    assert out[CRI_RUNTIME]["containerd"]["runtimes"]["r"] == {"runtime_engine": "x"}


# --- the real containerd 2.3.4's files ------------------------------------------------------

def _containerd_default() -> str:
    r = subprocess.run([str(containerd2.CONTAINERD), "config", "default"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@need_containerd2
def test_containerd_default_loads(tmp_path):
    text = _containerd_default()
    assert text.startswith("version = 4")
    res = load(write(tmp_path / "c.toml", text))
    cfg = res.config
    assert (cfg.root, cfg.grpc.address) == ("/var/lib/containerd",
                                            "/run/containerd/containerd.sock")
    assert cfg.ttrpc_address == "/run/containerd/containerd.sock.ttrpc"
    cri = cri_of(res)
    assert cri.sandbox_image.startswith("registry.k8s.io/pause:")
    assert (cri.cni.bin_dir, cri.containerd.snapshotter) == ("/opt/cni/bin", "overlayfs")
    assert cri.containerd.runtimes["runc"].runtime_type == "io.containerd.runc.v2"


@need_containerd2
def test_containerd_migrate_of_a_v2_file_loads_the_same(tmp_path):
    """containerd 2.3.4's own ``config migrate`` of a version 2 file gives ctrd the config
    ctrd's in-memory migration of that file gives."""
    v2 = write(tmp_path / "v2.toml", V2_FILE)
    r = subprocess.run([str(containerd2.CONTAINERD), "--config", str(v2), "config", "migrate"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    theirs = load(write(tmp_path / "theirs.toml", r.stdout))
    ours = load(v2)
    a, b = cri_of(ours), cri_of(theirs)
    for attr in ("sandbox_image", "max_concurrent_downloads", "stream_idle_timeout",
                 "max_container_log_line_size"):
        assert getattr(a, attr) == getattr(b, attr), attr
    assert (a.cni.bin_dir, a.cni.conf_dir) == (b.cni.bin_dir, b.cni.conf_dir)
    assert a.containerd.snapshotter == b.containerd.snapshotter
    assert a.containerd.default_runtime_name == b.containerd.default_runtime_name
    assert a.containerd.runtimes["crun"].options == b.containerd.runtimes["crun"].options
    assert a.registry.config_path == b.registry.config_path
    assert theirs.config.grpc.address == ours.config.grpc.address


def _paths_under(text: str, base: Path) -> str:
    """containerd's default file with its paths (root, state, sockets) under ``base``: the
    keys and every other value as containerd wrote them."""
    return (text.replace("/var/lib/containerd", f"{base}/root")
            .replace("/run/containerd", f"{base}/run"))


@pytest.mark.integration
@need_containerd2
def test_containerd_default_starts_ctrd(tmp_root):
    base = tmp_root / "d"
    base.mkdir()
    # launch_ctrd's --root/--state/--address flags say what the file says (under base)
    p = launch_ctrd(base, _paths_under(_containerd_default(), base), wait=True)
    try:
        containerd2_env = dict(os.environ, CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS="1")
        r = subprocess.run([str(CTR2), "--address", p.address, "plugins", "ls"],
                           capture_output=True, text=True, timeout=60, env=containerd2_env)
        assert r.returncode == 0, r.stderr
        rows = {tuple(line.split()[:2]): line.split()[-1] for line in r.stdout.splitlines()[1:]}
        assert rows[("io.containerd.grpc.v1", "cri")] == "ok"
        assert rows[("io.containerd.warning.v1", "deprecations")] == "ok"
        log = p.read_log()
        assert 'plugins.\\"io.containerd.nri.v1.nri\\": no such plugin; section ignored' in log
        assert "enable_criu ignored" in log
        # the ttrpc socket is the file's own
        assert (base / "run" / "containerd.sock.ttrpc").exists()
    finally:
        p.stop()


@pytest.mark.integration
def test_hostile_v3_file_stops_the_daemon_naming_the_key(tmp_root):
    base = tmp_root / "bad"
    p = launch_ctrd(base, "version = 3\n[plugins.'io.containerd.cri.v1.images']\n"
                          "max_concurrent_downloads = 'many'\n", wait=False)
    try:
        assert p.proc.wait(timeout=60) == 1
        assert ('plugins."io.containerd.cri.v1.images".max_concurrent_downloads: expected '
                "integer") in p.read_log()
    finally:
        p.stop()
    assert not list(base.glob("state/**/*.sock"))


@pytest.mark.integration
def test_v2_file_reports_its_deprecation_over_the_api(start_ctrd):
    """ctr 2.3.4 ``deprecations list`` against ctrd started from a version 2 file."""
    if not containerd2.available():
        pytest.skip(f"containerd 2.3.4 is not at {containerd2.BIN_DIR}")
    p = start_ctrd(config_text=V2_FILE)  # root and address: the fixture's flags
    r = subprocess.run([str(CTR2), "--address", p.address, "deprecations", "list", "--format",
                        "json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ids = [w["id"] for w in json.loads(r.stdout)]
    assert "io.containerd.deprecation/config-version" in ids
