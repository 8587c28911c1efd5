"""Config files: containerd's TOML v2, defaults, hostile files, ``ctrd config default``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ctrd.config import ConfigError, ServerConfig, load


def write(tmp_path, text, name="config.toml"):
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def test_no_file_means_defaults():
    cfg = load(None).config
    assert cfg == ServerConfig()
    assert cfg.grpc.address == "/run/ctrd/ctrd.sock"
    assert cfg.ttrpc_address == "/run/ctrd/ctrd.sock.ttrpc"


def test_containerd_style_file(tmp_path):
    result = load(write(tmp_path, '''
version = 2
root = "/r"
state = "/s"
disabled_plugins = ["io.containerd.grpc.v1.version"]
required_plugins = ["io.containerd.grpc.v1.namespaces"]
oom_score = -999
[grpc]
address = "/s/x.sock"
gid = 10
[ttrpc]
address = "/s/t.sock"
[debug]
level = "debug"
[plugins."io.containerd.grpc.v1.cri"]
sandbox_image = "pause:3.6"
'''))
    cfg = result.config
    assert (cfg.root, cfg.state, cfg.grpc.address, cfg.grpc.gid) == ("/r", "/s", "/s/x.sock", 10)
    assert cfg.ttrpc_address == "/s/t.sock"
    assert cfg.debug.level == "debug"
    assert cfg.disabled_plugins == ["io.containerd.grpc.v1.version"]
    assert cfg.plugins["io.containerd.grpc.v1.cri"] == {"sandbox_image": "pause:3.6"}
    assert result.warnings == [f"config {tmp_path}/config.toml: unknown key oom_score ignored"]


@pytest.mark.parametrize("text, message", [
    ("version = 2\n[grpc]\naddress = 5\n", "grpc.address: expected string, got integer 5"),
    ("version = 2\n[grpc]\nuid = -1\n", "grpc.uid = -1: must not be negative"),
    ("version = 2\n[grpc]\nuid = true\n", "grpc.uid: expected integer, got boolean True"),
    ('version = 2\ngrpc = "x"\n', "grpc: expected a table, got string"),
    ('version = 2\n[debug]\nlevel = "loud"\n', "debug.level = 'loud': must be one of"),
    ('version = 2\ndisabled_plugins = "a"\n', "disabled_plugins: expected an array"),
    ('version = 2\ndisabled_plugins = [1]\n', r"disabled_plugins\[0\]: expected string"),
    ('version = 2\nplugins = 3\n', "plugins: expected a table"),
    ('version = 2\n[plugins]\nx = 3\n', 'plugins.x: expected a table, got integer'),
    ('version = 5\n', "version = 5: ctrd reads config versions 1 to 4"),
    ('version = 0\n', "version = 0: ctrd reads config versions 1 to 4"),
    ('version = "3"\n', "version = '3': expected an integer"),
    ('version = true\n', "version = True: expected an integer"),
    ("version = 2\n[grpc\n", "invalid TOML"),
    ('version = 2\nroot = "\\ud800"\n', "invalid TOML"),
    (b"version = 2\nroot = \"\xff\xfe\"\n", "not UTF-8 text at byte 20"),
    ("\0" * 100, "invalid TOML"),
    ("a = " + "[" * 5000 + "]" * 5000, "invalid TOML|version"),
])
def test_hostile_files_name_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as e:
        load(write(tmp_path, text))
    assert "config.toml" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        load(tmp_path / "nope.toml")


def _ctrd(*args, **kw):
    return subprocess.run([sys.executable, "-m", "ctrd.cli.daemon", *args],
                          capture_output=True, text=True, timeout=60, **kw)


def test_config_default_round_trips(tmp_path):
    r = _ctrd("config", "default")
    assert r.returncode == 0, r.stderr
    assert '[plugins."io.containerd.metadata.v1.lmdb"]' in r.stdout
    result = load(write(tmp_path, r.stdout))
    assert result.warnings == []
    assert result.config.root == "/var/lib/ctrd"
    # And ctrd itself accepts it as-is.
    r2 = _ctrd("-c", str(tmp_path / "config.toml"), "config", "dump")
    assert r2.returncode == 0 and r2.stderr == "", r2.stderr
    assert r2.stdout == r.stdout


def test_config_dump_applies_flags_and_validates_plugin_sections(tmp_path):
    cfg = write(tmp_path, 'version = 2\n[plugins."io.containerd.metadata.v1.lmdb"]\n'
                          'map_size = 0\n')
    r = _ctrd("-c", str(cfg), "config", "dump")
    assert r.returncode == 1
    assert 'plugins."io.containerd.metadata.v1.lmdb".map_size = 0: must be positive' in r.stderr
    cfg = write(tmp_path, "version = 2\nbogus = 1\n")
    r = _ctrd("-c", str(cfg), "--root", "/elsewhere", "config", "dump")
    assert r.returncode == 0
    assert 'root = "/elsewhere"' in r.stdout
    assert "unknown key bogus ignored" in r.stderr


def test_daemon_refuses_a_bad_file_before_doing_anything(tmp_path):
    cfg = write(tmp_path, "version = 2\n[grpc]\naddress = []\n")
    r = _ctrd("-c", str(cfg), "--root", str(tmp_path / "root"))
    assert r.returncode == 1
    assert r.stderr.startswith("ctrd: config ") and "grpc.address: expected string" in r.stderr
    assert not (tmp_path / "root").exists()
