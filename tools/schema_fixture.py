"""Write a small database with the store of an older release: the fixture an upgrade test opens.

Each released schema version keeps one (tests/fixtures/schemas/schema_vN.sqlite), written by that
release's own code, so the test proves that a database as that release left it opens and migrates.
When SCHEMA_VERSION goes up, write the fixture of the version being left, from its last commit:

    git worktree add --detach /tmp/wt/v6 <last commit with SCHEMA_VERSION = 6>
    (cd /tmp/wt/v6 && PYTHONPATH=. /path/to/.venv/bin/python /path/to/tools/schema_fixture.py \
        /path/to/tests/fixtures/schemas/schema_v6.sqlite)
    git worktree remove /tmp/wt/v6

It uses only what every release has had: Store.put_task/put_result/put_event/flush/close and the
``task``/``result`` helpers of that release's tests/unit/test_store.py.
"""

import sys
from pathlib import Path

from dtf_gui.coordinator import store as st
from tests.unit.test_store import result, task

out = Path(sys.argv[1])
out.unlink(missing_ok=True)
s = st.Store(out)
try:
    for i in range(3):
        t = task(f"task-{i}", status="completed" if i else "pending")
        s.put_task(t)
        s.put_result(result(f"res-{i}", task_id=f"task-{i}", metrics={"throughput": 100.0 + i}))
    s.put_event("anomaly", "res-1", {"kind": "anomaly", "metric": "throughput", "value": 101.0})
    s.put_event("change_point", "res-2", {"kind": "change_point", "metric": "throughput"})
    s.flush()
finally:
    s.close()
print(out, st.SCHEMA_VERSION)
