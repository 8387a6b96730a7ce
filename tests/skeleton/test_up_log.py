"""``moorage up > FILE`` (and ``make run > FILE``): every line of the suite's output reaches the
file whole. supervisord opens /dev/stdout anew for its programs' output (appending), so the
shell's own file description, which ``up`` and supervisord print through, must append too, or
its writes land at its own offset, over the processes' log lines. Nor does supervisord greet
the operator with a CRIT line."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

from moorage.registry import builtin_names
from suite import Notify, Suite


def test_up_output_redirected_to_a_file_keeps_every_line(tmp_path: Path) -> None:
    disabled = {n: {"enabled": False} for n in builtin_names() if n != "proxy"}
    s = Suite(tmp_path, config=disabled, plugins=["skeleton.echo:PROCESS"], suite={"log_format": "json"})
    log = tmp_path / "run.log"
    notify = Notify(tmp_path / "notify.sock")
    env = s.env()
    env["NOTIFY_SOCKET"] = str(notify.path)
    try:
        with open(log, "wb") as out:  # what a shell's `>` opens: no O_APPEND
            up = subprocess.Popen(s.command("up", "--config", str(s.config_path)), env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            notify.wait_for("READY=1", up)
        finally:
            up.send_signal(signal.SIGINT)
            assert up.wait(60) == 0
    finally:
        notify.close()
        s.close()

    lines = log.read_text(errors="replace").splitlines()
    ours = [line for line in lines if line.startswith("moorage: ")]
    assert "moorage: stopped" in ours and any(line.startswith("moorage: suite ready") for line in ours)
    supervisord = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S")  # its own lines
    logged = [line for line in lines if line not in ours and not supervisord.match(line)]
    processes = set()
    for line in logged:
        processes.add(json.loads(line)["process"])  # a line cut or overwritten is no JSON
    assert {"proxy", "echo"} <= processes
    # supervisord's control socket has credentials (0600 in a 0700 folder anyway): no CRIT line
    # "Server 'unix_http_server' running without any HTTP authentication checking" on start
    assert [line for line in lines if supervisord.match(line) and " CRIT " in line] == []
