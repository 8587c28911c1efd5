"""The embedded CRI plugin (``io.containerd.grpc.v1.cri``): Kubernetes' runtime.v1
RuntimeService and ImageService on ctrd's main socket.

Pieces, each usable without gRPC:

- :mod:`config`  -- containerd 1.6's CRI config schema and defaults;
- :mod:`netns`   -- pod namespaces pinned by bind mounts (network, and in pinned mode IPC/UTS);
- :mod:`cni`     -- running CNI plugins (ADD/DEL/CHECK) from a conflist, results parsed;
- :mod:`spec`    -- the OCI spec of a pod's container from the CRI request and the image;
- :mod:`images`  -- image references as the kubelet sees them, pulls through ctrd's pull;
- :mod:`sandbox`, :mod:`container` -- lifecycles over ctrd's containers store and the task
  manager (CRI objects are ctrd containers in namespace ``k8s.io``; their CRI metadata rides
  in a container extension, so a restarted daemon rebuilds its view from the store);
- :mod:`service` -- the gRPC adapters.

Sandbox modes: with ``sandbox_image`` empty (ctrd's default) a pod has no pause container:
ctrd pins its network, IPC and UTS namespaces with bind mounts and containers join them by
path; with ``sandbox_image`` set, a pause container holds them as in containerd.
"""
