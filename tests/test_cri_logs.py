"""Container logs through the CRI: the kubelet's format written by ctrd's shim at
log_directory/log_path, long lines split at max_container_log_line_size, ReopenContainerLog
after the kubelet rotated the file; and UpdateRuntimeConfig writing the CNI config from a
template."""

from __future__ import annotations

import os
import re

import pytest

from support.poll import wait_until

from support.cni_net import testnet, workdir  # noqa: F401 - fixtures
from support.cri import cri, cri_factory  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

LINE = re.compile(rb"^(\S+) (stdout|stderr) ([PF]) (.*)$")


def _entries(path: str) -> list[tuple[str, str, bytes]]:
    with open(path, "rb") as f:
        data = f.read()
    out = []
    for raw in data.splitlines():
        m = LINE.match(raw)
        assert m, f"not a CRI log line: {raw!r}"
        ts = m[1].decode()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)", ts)
        out.append((m[2].decode(), m[3].decode(), m[4]))
    return out


def test_log_format_split_and_reopen(cri_factory, tmp_root):  # noqa: F811
    c = cri_factory()
    pb = c.pb
    logdir = str(tmp_root / "pods" / "default_logs_u1")
    sid, pconf = c.run_pod("logs", "u1", log_directory=logdir)
    script = ("echo out-1; echo err-1 >&2; printf 'no-newline'; echo; "
              "head -c 40000 /dev/zero | tr '\\0' x; echo; "
              "while [ ! -e /tmp/go ]; do sleep 0.05; done; echo after-reopen; sleep 1000")
    cid = c.create(sid, pconf, "talker", ["sh", "-c", script], log_path="talker/0.log")
    path = os.path.join(logdir, "talker/0.log")
    assert c.status(cid).log_path == path

    def ready():
        try:
            e = _entries(path)
        except FileNotFoundError:
            return None
        return e if sum(1 for s, t, _ in e if t == "F") >= 4 else None

    entries = wait_until(ready, timeout=20)
    assert entries, open(path, "rb").read()[:500] if os.path.exists(path) else "no log file"
    full = [(s, line) for s, t, line in entries if t == "F"]
    assert ("stdout", b"out-1") in full and ("stderr", b"err-1") in full
    assert ("stdout", b"no-newline") in full
    # 40000 x's: split at the default 16 KiB into partial lines, then a full one
    xs = [(t, line) for s, t, line in entries if line and set(line) == {ord("x")}]
    assert [t for t, _ in xs] == ["P", "P", "F"], [(t, len(x)) for t, x in xs]
    assert sum(len(x) for _, x in xs) == 40000
    assert all(len(x) <= 16 * 1024 for _, x in xs)

    # the kubelet rotates: rename, then ReopenContainerLog; new lines go to a new file
    os.rename(path, path + ".1")
    c.rt.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    assert os.path.exists(path)
    c.sh(cid, "touch /tmp/go")
    after = wait_until(lambda: [x for x in _entries(path) if x[2] == b"after-reopen"],
                       timeout=20)
    assert after == [("stdout", "F", b"after-reopen")]
    assert not [x for x in _entries(path + ".1") if x[2] == b"after-reopen"]

    c.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    with pytest.raises(Exception) as e:
        c.rt.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    assert "not running" in str(e.value)
    c.remove_pod(sid)


def test_update_runtime_config_writes_cni_template(cri_factory, tmp_root, testnet):  # noqa: F811
    template = tmp_root / "cni-template.json"
    template.write_text('{"cniVersion": "1.0.0", "name": "tmpl", "plugins": [{"type": '
                        '"host-local-probe", "subnet": "{{.PodCIDR}}", "ranges": '
                        '[{{.PodCIDRRanges}}], "routes": [{{.Routes}}]}]}')
    # the config's last table is the cri plugin's [cni]: the key goes there
    c = cri_factory(extra_config=f'    conf_template = "{template}"\n')
    pb = c.pb
    c.rt.UpdateRuntimeConfig(pb.UpdateRuntimeConfigRequest(runtime_config=pb.RuntimeConfig(
        network_config=pb.NetworkConfig(pod_cidr="10.244.7.0/24"))))
    out = os.path.join(testnet.conf_dir, "10-containerd-net.conflist")
    text = open(out).read()
    assert '"subnet": "10.244.7.0/24"' in text
    assert '"ranges": ["10.244.7.0/24"]' in text and '"routes": ["0.0.0.0/0"]' in text
