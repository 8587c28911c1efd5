"""containerd 2.x's Transfer: move an image between a source and a destination (a registry,
the image store, an archive stream), with progress over a named stream.

Modules: :mod:`objects` (the transfer types, decoded from their ``Any``), :mod:`dispatch`
(which pair of types goes to which operation), :mod:`context` (what an operation gets),
:mod:`progress` (progress events to the client's stream); the operations, one module each
(``pull``, ``push``, ``tag``, ``imports``, ``exports``), reuse ctrd's own pull, push and
archive pipelines. The gRPC edge is :mod:`ctrd.services.transfer2`.
"""
