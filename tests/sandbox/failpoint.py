"""A failpoint CNI plugin wrapped around a real one (tests only).

Plugin config: ``{"type": "failpoint", "delegate": "bridge", "control": PATH, ...}``; every
other key goes to the delegate. ``control`` is a JSON file read at each call:
``{"ADD": "ok" | "fail" | "hang" | "fail-after" | "hang-after", "DEL": "ok" | "fail"}``.
``fail-after``/``hang-after`` run the delegate first (so an address is allocated) and then
fail or hang. The control file is read first, then each call is appended to
``<control>.log`` as ``COMMAND CONTAINERID NETNS PID`` (NETNS ``-`` when empty).

The delegate is atomic: it runs in its own session holding ``<control>.lock`` (the lock's
file descriptor is inherited), so killing the failpoint's process group mid-call lets the
delegate finish, and the next delegate call waits for it. A real plugin killed half-way
(bridge between its address and its masquerade chain) can leave a DEL that never succeeds;
that is the plugin's fault, not the one these tests inject.
"""

import fcntl
import json
import os
import subprocess
import sys
import time


def main() -> int:
    conf = json.loads(sys.stdin.read())
    command = os.environ.get("CNI_COMMAND", "")
    control_path = conf["control"]
    try:  # read before logging: a test that saw the call logged may change the faults
        with open(control_path) as f:
            control = json.load(f)
    except FileNotFoundError:
        control = {}
    with open(control_path + ".log", "a") as log:
        log.write(f"{command} {os.environ.get('CNI_CONTAINERID', '')} {os.environ.get('CNI_NETNS', '') or '-'} {os.getpid()}\n")
    mode = control.get(command, "ok")
    if command == "VERSION":
        print(json.dumps({"cniVersion": "1.0.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0"]}))
        return 0
    if mode == "hang":
        time.sleep(3600)
    if mode == "fail":
        print(json.dumps({"cniVersion": "1.0.0", "code": 11, "msg": f"failpoint: {command} fails"}))
        return 1
    delegate = dict(conf)
    delegate["type"] = conf["delegate"]
    for key in ("delegate", "control"):
        delegate.pop(key)
    path = next(os.path.join(d, delegate["type"]) for d in os.environ["CNI_PATH"].split(":") if os.path.exists(os.path.join(d, delegate["type"])))
    with open(control_path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = subprocess.run(
            [path],
            input=json.dumps(delegate).encode(),
            capture_output=True,
            start_new_session=True,
            pass_fds=(lock.fileno(),),
        )
    if mode == "hang-after":
        time.sleep(3600)
    if mode == "fail-after" and out.returncode == 0:
        print(json.dumps({"cniVersion": "1.0.0", "code": 11, "msg": f"failpoint: {command} fails after the delegate"}))
        return 1
    sys.stdout.buffer.write(out.stdout)
    return out.returncode


if __name__ == "__main__":
    sys.exit(main())
