"""CRI name reservation (containerd's registrar): one id per name until it is released.

kubelet retries a RunPodSandbox or CreateContainer whose reply it lost with the same name;
the second call must fail while the first one's id holds the name, naming the holder, so
kubelet can find (and remove) it.
"""

from __future__ import annotations

from moorage.errdefs import AlreadyExists


class NameIndex:
    def __init__(self) -> None:
        self._by_name: dict[str, str] = {}

    def reserve(self, name: str, id: str) -> None:
        """Reserve ``name`` for ``id``; AlreadyExists when another id holds it."""
        holder = self._by_name.get(name)
        if holder is not None and holder != id:
            raise AlreadyExists(f'name "{name}" is reserved for "{holder}"')
        self._by_name[name] = id

    def release(self, name: str) -> None:
        self._by_name.pop(name, None)

    def holder(self, name: str) -> str | None:
        return self._by_name.get(name)
