"""The embedded CRI plugin (``io.containerd.grpc.v1.cri``): Kubernetes' runtime.v1
RuntimeService and ImageService on ctrd's main socket.

Layout (containerd 2.x's internal/cri/server as the model: finding the code of an RPC is a
file name away). Each RPC module holds that call's core (a mixin of
:class:`core.CRIRuntime`, usable without gRPC) and its gRPC adapter (a mixin of
:class:`service.RuntimeService`, which only converts messages):

- :mod:`core`                 -- ``CRIRuntime``: the state, the shared helpers, the mixins put together;
- :mod:`service`              -- ``RuntimeService``: the adapters put together;
- :mod:`runtime_status_core`  -- Version, Status, RuntimeConfig, UpdateRuntimeConfig;
- :mod:`runtime_status`       -- the rules of Status and RuntimeConfig (handlers, features,
  cgroup driver, deprecation condition) as plain functions;
- :mod:`sandbox_run`, :mod:`sandbox_stop`, :mod:`sandbox_remove`, :mod:`sandbox_status`,
  :mod:`sandbox_list`         -- RunPodSandbox, StopPodSandbox, RemovePodSandbox,
  PodSandboxStatus, ListPodSandbox (and StreamPodSandboxes);
- :mod:`container_create`, :mod:`container_start`, :mod:`container_stop`,
  :mod:`container_remove`, :mod:`container_status`, :mod:`container_list`,
  :mod:`container_update`, :mod:`container_log_reopen`, :mod:`container_exec`,
  :mod:`container_checkpoint` -- CreateContainer, StartContainer, StopContainer,
  RemoveContainer, ContainerStatus, ListContainers (and StreamContainers),
  UpdateContainerResources, ReopenContainerLog, ExecSync, CheckpointContainer (refused);
- :mod:`sandbox_update_resources` -- UpdatePodSandboxResources (recorded, as containerd);
- :mod:`container_stats`, :mod:`sandbox_stats` -- ContainerStats, ListContainerStats,
  PodSandboxStats, ListPodSandboxStats (and their Stream* forms; figures from :mod:`stats`,
  read through :mod:`stats_sources`);
- :mod:`sandbox_metrics`      -- ListMetricDescriptors, ListPodSandboxMetrics (and
  StreamPodSandboxMetrics): containerd's metric names from the cgroups;
- :mod:`podsandbox`           -- the pod's own process: pause container or pod init;
- :mod:`sandbox_record`       -- the pod's record in the sandbox store (containerd 2.x's);
- :mod:`restart`              -- recovery at start from the records and the live tasks;
- :mod:`store`                -- the records (dataclasses; the kubelet's configs in JSON form,
  parsed once) and their status files;
- :mod:`helpers`, :mod:`sandbox_files` -- what the modules share; a pod's hostname, hosts,
  resolv.conf and /dev/shm;
- :mod:`runtime_features` -- what a handler's OCI runtime can do (``<runtime> features``,
  probed once per binary): recursive read-only mounts;
- :mod:`identity` -- supplemental groups policy (Merge, Strict), ContainerStatus.user;
- :mod:`stop_signal` -- the stop signal StopContainer sends and ContainerStatus reports;
- :mod:`status_info` -- status pieces containerd derives from its records: ContainerStatus
  resources (from the spec), verbose info in Go's JSON shape (config, cniResult,
  sandboxMetadata), Status's cniconfig;
- :mod:`config`  -- containerd's CRI config schema and defaults;
- :mod:`netns`   -- pod namespaces pinned by bind mounts (network; IPC/UTS without a pause);
- :mod:`userns`  -- pod user namespaces (``userns_options``): validation, the pinned user
  namespace that owns the pod's others, idmapped volumes, :func:`userns.supported`;
- :mod:`cni`     -- running CNI plugins (ADD/DEL/CHECK) from a conflist, results parsed;
- :mod:`spec`, :mod:`seccomp` -- the OCI specs of a pod's containers and of its pause / pod init;
- :mod:`image_service` -- ``ImageService``: the image RPC modules put together:
  :mod:`image_pull`, :mod:`image_list`, :mod:`image_status`, :mod:`image_remove`,
  :mod:`imagefs_info` (PullImage, ListImages/StreamImages, ImageStatus, RemoveImage,
  ImageFsInfo); :mod:`images` (image references as the kubelet sees them, the image index)
  and :mod:`registry` (pulls with the CRI registry config);
- :mod:`image_mount` -- image volumes (``Mount.image``, ``image_sub_path``): a pod's read-only
  views of its images, held by the pod's lease, bound into its containers;
- :mod:`execio`  -- ExecSync's output capture;
- :mod:`streaming` -- the streaming server (exec/attach/port-forward over SPDY and WebSocket)
  and the Exec/Attach/PortForward/GetContainerEvents calls.

CRI objects are ctrd containers in namespace ``k8s.io``; their CRI records ride in a
container extension, so a restarted daemon rebuilds its view from the store.

Sandbox modes
-------------

**No pause container (the default, ``sandbox_image = ""``).** ctrd pins a pod's network, IPC
and UTS namespaces with bind mounts (:mod:`netns`) and the pod's containers join them by
path. Why it is the default: nothing has to be pulled before the first pod can start (a
node needs no registry access for a pause image), each pod has one process and one shim
fewer until its first container runs, and RunPodSandbox does no task start where
containerd 1.6 creates, starts and watches a pause container (figures: bench/README.md, "CRI",
measured by bench/cri_exec.py).
A pod that asks for a pod-level PID namespace (its NamespaceOption present with ``pid =
POD``: the kubelet's ``shareProcessNamespace``) gets ctrd's minimal pod init as PID 1 of a
new PID namespace: the host's statically linked busybox (Debian's ``busybox-static``),
bound read-only into an empty read-only rootfs, running a ``wait`` loop that reaps the
pod's orphans (no capabilities, uid 65535; its memory: bench/README.md, "Figures the code cites").
It runs in the pod's shim (the one its containers use), and its exit makes the pod
NOTREADY. Without a static busybox such a pod fails to start with an error naming the
missing binary and the ``sandbox_image`` alternative. Pods that do not share PIDs (the
kubelet's default, PID ``CONTAINER``) have no process of their own.

**Pause container (``sandbox_image`` set), as containerd 1.6.** RunPodSandbox makes sure
the image is there (pulled through the CRI image pull path with the registry config when
missing), pins only the network namespace and runs CNI on it, then runs the image as the
pod's pause container (containerd's sandbox spec: read-only rootfs, new IPC/UTS/PID
namespaces unless the host's are asked for, hostname, the pod's sysctls, oom_score_adj
-998 clamped when ctrd may not lower it) in the handler's shim, which the pod's containers
then share. Containers join the pause's IPC/UTS (and, in POD mode, PID) namespaces through
``/proc/<pause pid>/ns``. The pause's exit makes the pod NOTREADY; StopPodSandbox kills
the containers, then the pause, then runs CNI DEL and unpins the netns; RemovePodSandbox
removes its task, record and snapshot. What it is for: existing containerd configs that
name a pause image, runtimes or tools that expect a sandbox container, and pod-level PID
sharing on a host without a static busybox. RunPodSandbox costs a task start
(bench/README.md, "CRI").
"""
