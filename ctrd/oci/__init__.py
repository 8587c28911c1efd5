"""OCI runtime specs for containers, as containerd 1.6's ``oci`` package builds them.

- :mod:`ctrd.oci.spec`: the default Linux spec and the options applied to it (image config,
  args, env, user, tty, host network, mounts, OOM score), as plain JSON-ready dicts.
- :mod:`ctrd.oci.user`: resolving a ``USER`` string against an image's ``/etc/passwd`` and
  ``/etc/group``, safely (the rootfs is untrusted).
- :mod:`ctrd.oci.oom`: the OOM score adjustment a process may actually ask for.

Pure logic: no sockets, no daemon. The only I/O is reading a rootfs directory and
``/proc/self``.
"""
