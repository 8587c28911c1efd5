"""A pod's files under its state dir, bound into its containers: hostname, hosts, resolv.conf
(containerd's setupSandboxFiles) and the /dev/shm tmpfs."""

from __future__ import annotations

import os

SHM_SIZE = 64 << 20  # containerd's defaultShmSize


def copy_or(path: str, fallback: str) -> str:
    try:
        with open(path) as f:
            return f.read(1 << 20)
    except OSError:
        return fallback


def write_sandbox_files(d: str, config, hostname: str, host_net: bool) -> None:
    """hostname, hosts and resolv.conf for the pod's containers (bind-mounted by the spec)."""
    with open(os.path.join(d, "hostname"), "w") as f:
        f.write(hostname + "\n")
    with open(os.path.join(d, "hosts"), "w") as f:
        f.write(copy_or("/etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost "
                                       "ip6-localhost ip6-loopback\n"))
    dns = config.dns_config
    if dns.servers or dns.searches or dns.options:
        lines = []
        if dns.searches:
            lines.append("search " + " ".join(dns.searches))
        lines += [f"nameserver {s}" for s in dns.servers]
        if dns.options:
            lines.append("options " + " ".join(dns.options))
        text = "\n".join(lines) + "\n"
    else:
        text = copy_or("/etc/resolv.conf", "")
    with open(os.path.join(d, "resolv.conf"), "w") as f:
        f.write(text)
    for name in ("hostname", "hosts", "resolv.conf"):
        os.chmod(os.path.join(d, name), 0o644)


def mount_shm(d: str) -> None:
    from ctrd.snapshots.mount import mount
    from ctrd.snapshots.snapshotter import Mount

    target = os.path.join(d, "shm")
    os.makedirs(target, exist_ok=True)
    mount(Mount(type="tmpfs", source="shm",
                options=["nosuid", "noexec", "nodev", "mode=1777", f"size={SHM_SIZE}"]),
          target)


def unmount_shm(d: str) -> None:
    from ctrd.snapshots.mount import unmount_all

    target = os.path.join(d, "shm")
    if os.path.isdir(target):
        unmount_all(target)
