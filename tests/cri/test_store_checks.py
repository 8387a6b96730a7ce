"""RunPodSandbox's checks come before anything is made: a refused pod reserves no name,
writes no record and calls no peer (store.py ``run_pod``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from moorage.errdefs import InvalidArgument
from moorage.services.cri.config import CriConfig
from moorage.services.cri.contract import PodConfig, PodMetadata
from moorage.services.cri.store import CriRuntime


class NoPeers:
    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"peer called: {name}")


@pytest.mark.parametrize("sysctls", [{"kernel.shm_rmid_forced": "1+kernel.core_pattern=|/tmp/x"},
                                     {"kernel.core_pattern": "|/tmp/x"}])
async def test_bad_sysctls_are_refused_before_anything_is_reserved(tmp_path: Path, sysctls: dict[str, str]) -> None:
    rt = CriRuntime(CriConfig(restrict_oom_score_adj="off"), NoPeers(), None,  # type: ignore[arg-type]
                    tmp_path / "root", tmp_path / "state", logging.getLogger("test"))
    pod = PodConfig(PodMetadata("web", "uid1", "default"), sysctls=sysctls)
    with pytest.raises(InvalidArgument, match="sysctl 'kernel."):
        await rt.run_pod(pod)
    assert list(rt.pods) == []
    rt.names.reserve(pod.metadata.reserved_name(), "other")  # the name was never taken
