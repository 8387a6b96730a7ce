"""ExecSync's reply fits one ttrpc message: stdout and stderr share the budget, each keeping
its first bytes (services/cri/execsync.fit_reply)."""

from __future__ import annotations

import pytest

from moorage.services.cri.execsync import REPLY_BUDGET, fit_reply
from ttrpc.frame import MAX_MESSAGE_SIZE


@pytest.mark.parametrize(("out", "err", "want"), [
    (10, 10, (10, 10)),          # fits: whole
    (100, 0, (64, 0)),           # one stream: all the budget
    (100, 5, (59, 5)),           # stderr under half: whole, stdout the rest
    (5, 100, (5, 59)),
    (100, 100, (32, 32)),        # both over half: half each
    (40, 30, (34, 30)),
])
def test_streams_share_the_budget_keeping_their_first_bytes(out: int, err: int, want: tuple[int, int]) -> None:
    o, e = b"o" * out, b"e" * err
    got = fit_reply(o, e, budget=64)
    assert (len(got[0]), len(got[1])) == want
    assert got[0] == o[: want[0]] and got[1] == e[: want[1]]


def test_the_budget_leaves_room_in_one_ttrpc_message() -> None:
    from moorage.api.k8s.cri.v1 import api_pb2 as api
    from ttrpc.messages import encode_response

    out, err = fit_reply(b"o" * (20 << 20), b"e" * (20 << 20))
    reply = api.ExecSyncResponse(stdout=out, stderr=err, exit_code=-1).SerializeToString()
    assert len(out) + len(err) == REPLY_BUDGET
    assert len(encode_response(reply)) <= MAX_MESSAGE_SIZE
