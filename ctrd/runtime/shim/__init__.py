"""ctrd's shim v2 (``containerd-shim-ctrd-v2``): serves ``containerd.task.v2.Task`` over ttrpc
for the tasks of one container (or a group), driving an OCI runtime CLI (runc, crun, ...).

Deliberately lean: no asyncio (its import costs memory and start time; bench/README.md,
"Figures the code cites"), no grpc, no logging,
no dataclasses. One thread, one epoll loop (:mod:`.loop`); runtime commands run synchronously
and are waited for by pid, so the SIGCHLD reaper never steals their exit codes.

Modules: :mod:`.cli` (argv, ``start``/``delete``), :mod:`.template` (the fork server),
:mod:`.serving` (a shim's main), :mod:`.service` (the Task service), :mod:`.process` (init
and exec processes), :mod:`.runtime` (OCI runtime CLI),
:mod:`.stdio` (FIFOs, file URIs, pty copy), :mod:`.reaper`, :mod:`.events` (publisher),
:mod:`.server` (ttrpc server on the loop), :mod:`.mount` (rootfs), :mod:`.log`,
:mod:`.paths` (socket dir and names, the address file), :mod:`.handshake` (what ``start``
reads and prints, the template's request format).
"""
