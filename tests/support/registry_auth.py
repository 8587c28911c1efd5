"""``AuthRegistry``: Debian's docker-registry with htpasswd (basic) auth for ``USER`` /
``PASSWORD`` and an access log, for the tests of credentials on the pull paths."""

from __future__ import annotations

import base64
import shutil
import subprocess
import warnings
from pathlib import Path

import images

with warnings.catch_warnings():  # deprecated in 3.11, the only bcrypt in the stdlib
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt

USER, PASSWORD = "kubelet", "s3cret-pw"


class AuthRegistry(images.Registry):
    """docker-registry with htpasswd (basic) auth and an access log; requests authenticate."""

    CONFIG = images.REGISTRY_CONFIG.replace("    disabled: true", "    disabled: false") + \
        "auth:\n  htpasswd:\n    realm: ctrd-test\n    path: {root}/htpasswd\n"

    @classmethod
    def start_auth(cls, root: Path) -> "AuthRegistry":
        exe = shutil.which("docker-registry")
        root.mkdir(parents=True)
        (root / "storage").mkdir()
        salt = crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)  # cost 4: a test, not a vault
        (root / "htpasswd").write_text(f"{USER}:{crypt.crypt(PASSWORD, salt)}\n")
        last = None
        for _ in range(3):
            addr = f"127.0.0.1:{images.free_port()}"
            (root / "config.yml").write_text(cls.CONFIG.format(root=root, addr=addr))
            with open(root / "registry.log", "w") as out:
                proc = subprocess.Popen([exe, "serve", str(root / "config.yml")], stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            reg = cls(root, proc, addr)
            try:
                reg._wait(20)
                return reg
            except Exception as e:  # noqa: BLE001 - retried on another port
                last = e
                reg.stop(remove=False)
        raise RuntimeError(f"auth registry did not come up: {last}")

    def request(self, method, url, body=None, headers=None):
        h = dict(headers or {})
        h["Authorization"] = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return super().request(method, url, body, h)

    def manifest_hits(self, repo_: str, tag: str) -> int:
        """Authenticated (200) HEAD/GET of a tag's manifest, from the access log."""
        needle = f"/v2/{repo_}/manifests/{tag} HTTP/1.1\" 200"
        return sum(1 for line in self.log().splitlines() if needle in line)
