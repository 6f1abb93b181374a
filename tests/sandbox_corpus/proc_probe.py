"""Run inside the sandbox by test_proc_shows_nothing_of_the_trainer: for every other process in
/proc, what of its environ, cmdline, memory, fds and maps this program can read (JSON)."""

import json
import os

me = os.getpid()
seen: dict[str, dict[str, object]] = {}
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == me:
        continue
    got: dict[str, object] = {}
    for item in ("environ", "cmdline", "mem", "fd", "maps"):
        path = f"/proc/{pid}/{item}"
        try:
            if item == "fd":
                got[item] = os.listdir(path)[:5]
            elif item == "mem":
                with open(f"/proc/{pid}/maps") as maps:
                    start = int(maps.readline().split("-")[0], 16)
                with open(path, "rb") as f:
                    f.seek(start)
                    got[item] = len(f.read(16))
            else:
                with open(path, "rb") as f:
                    got[item] = f.read(300).decode("utf-8", "replace")
        except Exception as exc:
            got[item] = "ERR " + type(exc).__name__
    seen[pid] = got
print(json.dumps(seen))
