"""A service running as another user cannot make the agent (root) write outside its log directory.

The run script drops to `nobody`, in an instance directory it owns (as a
service whose files belong to its own user), and at every start replaces what
is in that directory with symbolic links to a root-owned file standing for
/etc/passwd, under every name the agent ever wrote logs to there. The agent
keeps the logs under `<state>/logs/`, out of the script's reach, and opens
them without following a link: across starts, crash restarts, rotations, an
upgrade (download and install logs), health checks and an agent restart, the
file is never written, truncated or chmod-ed. (Agents that kept logs in
`instances/<service>/<id>/.discoverd/logs/` appended their headers to it,
copied it away and truncated it, and made it 0600.)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from support.wait import wait_until

NOBODY = 65534

DROP = """
import os, sys
os.chown('.', 65534, 65534)  # the service's directory belongs to the service's user
os.execvp('setpriv', ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups',
                      '/usr/bin/python3', '-I', '-c', sys.argv[1], sys.argv[2]])
"""

PLANT = """
import os, sys, time, uuid
victim = sys.argv[1]
assert os.geteuid() == 65534
for name in os.listdir('.'):
    if not os.path.islink(name) and not name.startswith('.gone-'):
        os.rename(name, '.gone-' + uuid.uuid4().hex)  # anything of the agent's in here goes aside
os.makedirs('.discoverd/logs', exist_ok=True)
for where in ('.', '.discoverd/logs'):
    for step in ('download', 'install', 'run', 'health'):
        for name in (f'{step}.log', f'{step}.log.1', f'{step}.log.2', f'.{step}.log.1.tmp', f'.{step}.log.2.tmp'):
            if not os.path.lexists(f'{where}/{name}'):
                os.symlink(victim, f'{where}/{name}')
state = os.path.dirname(os.path.dirname(os.path.dirname(os.environ['DISCOVERD_INSTANCE_DIR'])))
logs = os.path.join(state, 'logs')
try:
    os.symlink(victim, os.path.join(logs, 'evil', 'i1', 'run.log.9'))
    print('planted in the log directory', flush=True)
except OSError as error:
    print('could not plant in the log directory:', type(error).__name__, flush=True)
sys.stdout.write('x' * 20000 + '\\n')  # over the cap: rotated while it runs
sys.stdout.flush()
time.sleep(1.5)
sys.exit(1)
"""


def _fingerprint(path: Path) -> tuple[bytes, int, int, int]:
    st = path.stat()
    return path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a service as nobody")
def test_a_service_running_as_nobody_cannot_redirect_the_agents_logs(node: Any, tmp_path: Path) -> None:
    victim = tmp_path / "passwd"
    victim.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 100)  # 3.3 kB, over the 1 kB cap
    victim.chmod(0o644)
    before = _fingerprint(victim)

    def version(v: str) -> None:
        node.version(
            "evil",
            v,
            download_script=node.py("print('downloaded')"),
            install_script=node.py("print('installed')"),
            run_script=node.py(DROP, PLANT, str(victim)),
            health_check=node.py("print('healthy')", interval=0.3),
            min_healthy_seconds=0.5,
        )

    version("1.0")
    version("2.0")
    node.instance("evil", "i1", "1.0")
    node.server(("evil", "i1"))
    cap = ["--script-log-max-bytes", "1024", "--script-log-check-interval", "0.2"]
    agent = node.agent(*cap)
    idir, logs = node.instance_dir("evil", "i1"), node.log_dir("evil", "i1")

    def restarted(n: int) -> bool:
        s = node.status("evil", "i1")
        return s is not None and s.get("restarts", 0) >= n

    wait_until(lambda: restarted(2), 30, what="two crash restarts")
    assert os.stat(idir).st_uid == NOBODY and os.path.islink(idir / ".discoverd" / "logs" / "run.log")
    assert _fingerprint(victim) == before

    node.instance("evil", "i1", "2.0")  # download and install logs, written after the links were planted
    wait_until(lambda: (node.status("evil", "i1") or {}).get("version") == "2.0", 30, what="upgraded to 2.0")
    wait_until(lambda: "installed" in (logs / "install.log").read_text(), 10, what="the install log")
    agent.kill()
    node.agent(*cap)
    start = (node.status("evil", "i1") or {}).get("restarts", 0)
    wait_until(lambda: restarted(start + 2), 30, what="two more crash restarts after the agent restart")

    assert _fingerprint(victim) == before
    run_logs = "".join(p.read_text(errors="replace") for p in logs.glob("run.log*"))
    assert "\ncould not plant in the log directory: PermissionError\n" in run_logs
    assert "\nplanted in the log directory\n" not in run_logs
    assert (logs / "run.log.1").exists()  # the real logs were rotated meanwhile
    for path in logs.iterdir():
        assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700 and logs.stat().st_uid == 0
