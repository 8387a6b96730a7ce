"""``[transfer]``: the transfer process's own settings (containerd's transfer plugin options)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TransferConfig:
    max_concurrent_downloads: int = 3
    """Layers downloaded at once per pull (containerd's max_concurrent_downloads)."""
    max_concurrent_uploaded_layers: int = 3
    hosts_dir: str = "/etc/moorage/certs.d"
    """hosts.toml roots (`:`-separated); a transfer's own host_dir wins."""
    credentials_file: str = ""
    """A docker config.json-style file of registry credentials, read at each transfer."""
    default_snapshotter: str = "overlayfs"
    upload_chunk_size: int = 0
    """0: monolithic uploads; >0: chunked PATCH uploads of this many bytes."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_concurrent_downloads <= 64:
            raise ValueError("max_concurrent_downloads must be between 1 and 64")
        if not 1 <= self.max_concurrent_uploaded_layers <= 64:
            raise ValueError("max_concurrent_uploaded_layers must be between 1 and 64")
        if self.upload_chunk_size < 0:
            raise ValueError("upload_chunk_size must be >= 0")
