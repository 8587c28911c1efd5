"""What test modules share: pytest fixtures and helpers that more than one test module uses.

Test modules import shared things from here (or get them from ``conftest.py``), never from
another test module: a test module holds tests, and importing one runs its module-level code
and couples two files' tests. The helper modules beside the tests (``cri_client``,
``taskutil``, ``shimutil``, ``images``, ...) stay where they are: bench/ scripts import some
of them with tests/ on ``sys.path``.

- :mod:`support.cmd`: ``ok()`` (a command's exit status is 0) and ``ctl()`` (run ctrctl).
- :mod:`support.poll`: ``wait_until()``, the one polling loop.
- :mod:`support.cni_net`: ``workdir`` and ``testnet`` (a CNI bridge network of the test's own).
- :mod:`support.cri`: the CRI client of a test's ctrd (``CRI``, ``cri_factory``, ``cri``).
- :mod:`support.cri_pause`, :mod:`support.cri_compare`, :mod:`support.cri_streaming`,
  :mod:`support.cri_stats`: the pause images, containerd 2.3.4 side by side, streaming pods,
  stats pods.
- :mod:`support.metadata` (a metadata store), :mod:`support.transfer` (containerd 2.3.4 for
  the Transfer tests), :mod:`support.registry_auth` (a basic-auth registry),
  :mod:`support.archives` (image archives built by hand), :mod:`support.ctr_compat` (one ctr
  script against two daemons), :mod:`support.plugins` (``pip install`` of a test package),
  :mod:`support.hostile` (decompression bombs, OCI archives whose manifests lie, a static
  registry serving them).

Fixtures are imported by name into the test modules that use them (``from support.cri import
cri, cri_factory  # noqa: F401 - fixtures``), as they were from the test modules before: each
importing module gets its own copy of a module-scoped fixture, as before.
"""
