"""Run as an unprivileged user by tests/test_sandbox.py::test_a_non_root_trainer_keeps_its_files:
a trainer without root (no throw-away uid) whose home holds a private key and a repository;
hostile programs at every level go for them. Prints one JSON object: level -> what happened."""

import json
import os
import sys
from pathlib import Path

from ticgrpo.rewards.sandbox import ISOLATION_LEVELS, Sandbox, SandboxLimits, SandboxUnavailable

home = os.environ["HOME"]
key, source = os.path.join(home, ".ssh", "id_rsa"), os.path.join(home, "repo", "model.py")
ATTACKS = {
    "read_key": f"print(open({key!r}).read())",
    "edit_source": f"open({source!r}, 'a').write('# pwned')",
    "delete_source": f"import os\nos.remove({source!r})",
    "chmod_source": f"import os\nos.chmod({source!r}, 0o777)",
}
results: dict[str, dict[str, object]] = {}
for level in ISOLATION_LEVELS:
    try:
        box = Sandbox(SandboxLimits(timeout_s=2.0, cpu_s=2), isolation=level)
    except SandboxUnavailable as exc:
        results[level] = {"unavailable": str(exc)}
        continue
    before = (Path(key).read_text(), Path(source).read_text(), os.stat(source).st_mode)
    outputs = {name: box.execute(code).stdout for name, code in ATTACKS.items()}
    exists = os.path.exists(source)
    after = (Path(key).read_text(), Path(source).read_text() if exists else None,
             os.stat(source).st_mode if exists else None)
    results[level] = {"drop_uid": box.drop_uid, "key_leaked": before[0].strip() in outputs["read_key"],
                      "source_changed": after != before}
    if after != before:  # put the repository back for the next level
        Path(source).write_text(before[1])
        os.chmod(source, before[2])
print(json.dumps(results))
sys.stdout.flush()
