"""What a transfer operation is given: who asks (namespace, lease), the stores, the streams,
the local transferrer's configuration, and where progress goes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ctrd.streaming.manager import StreamManager
from ctrd.transfer.progress import ProgressSender


@dataclass
class TransferConfig:
    """``[plugins."io.containerd.transfer.v1.local"]`` as ctrd uses it (containerd 2.3.4's
    keys; see ctrd/plugins/builtin.py for the TOML declaration)."""

    config_path: str = ""           # registry hosts directory (certs.d layout)
    progress_timeout: float = 30.0  # seconds a registry transfer may make no progress
    max_concurrent_downloads: int = 3
    max_concurrent_uploaded_layers: int = 3
    unpack_config: list[dict] = field(default_factory=list)  # [{platform, snapshotter, ...}]
    check_platform_supported: bool = False  # False: an unpack platform matches by OS only


@dataclass
class TransferContext:
    ns: str
    lease: str | None
    md: Any                 # ctrd.metadata.db.Metadata (content, images, snapshotters)
    streams: StreamManager  # for credentials (auth_stream) and archive byte streams
    config: TransferConfig
    progress: ProgressSender
    events: Any = None      # the event exchange (image create/update events), if any
