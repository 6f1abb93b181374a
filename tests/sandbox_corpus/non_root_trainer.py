"""Run as an unprivileged user by tests/test_sandbox.py::test_a_non_root_trainer_keeps_its_files:
a trainer without root (no throw-away uid) whose home holds a private key and a repository;
hostile programs at every level go for them. Prints one JSON object: level -> what happened."""

import json
import os
import sys

from ticgrpo.sandbox import ISOLATION_LEVELS, Sandbox, SandboxLimits, SandboxUnavailable

home = os.environ["HOME"]
key, source = os.path.join(home, ".ssh", "id_rsa"), os.path.join(home, "repo", "model.py")
ATTACKS = {
    "read_key": f"print(open({key!r}).read())",
    "edit_source": f"open({source!r}, 'a').write('# pwned')",
    "delete_source": f"import os\nos.remove({source!r})",
    "chmod_source": f"import os\nos.chmod({source!r}, 0o777)",
}
results = {}
for level in ISOLATION_LEVELS:
    try:
        box = Sandbox(SandboxLimits(timeout_s=2.0, cpu_s=2), isolation=level)
    except SandboxUnavailable as exc:
        results[level] = {"unavailable": str(exc)}
        continue
    before = (open(key).read(), open(source).read(), os.stat(source).st_mode)
    outputs = {name: box.execute(code).stdout for name, code in ATTACKS.items()}
    exists = os.path.exists(source)
    after = (open(key).read(), open(source).read() if exists else None, os.stat(source).st_mode if exists else None)
    results[level] = {"drop_uid": box.drop_uid, "key_leaked": before[0].strip() in outputs["read_key"],
                      "source_changed": after != before}
    if after != before and exists:
        os.chmod(source, before[2])
        open(source, "w").write(before[1])
    elif not exists:
        open(source, "w").write(before[1])
        os.chmod(source, before[2])
print(json.dumps(results))
sys.stdout.flush()
