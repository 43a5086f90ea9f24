"""agent.cgroups without touching the machine's cgroups: which hierarchies, which argv."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from discoverd.agent import cgroups, model
from discoverd.errors import InvalidDocument
from discoverd.schema import documents

MOUNTINFO = """\
24 30 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
25 24 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
26 24 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
27 24 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
28 24 0:26 / /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
29 24 0:27 /kubepods/pod1 /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
30 24 0:28 / /mnt/with\\040space rw,relatime - cgroup cgroup rw,freezer
31 24 0:29 /../.. /host/cgroup/pids rw,relatime - cgroup cgroup rw,pids
"""


def test_hierarchies_are_read_from_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    found = {h.name: h for h in cgroups.hierarchies(info)}
    # tmpfs is no hierarchy; a bind mount of a sub-tree (pids at /kubepods/pod1) is not where instances go
    # the host's whole pids hierarchy as seen from a cgroup namespace (`/../..`) is one
    assert set(found) == {"unified", "name=systemd", "cpu,cpuacct", "memory", "freezer", "pids"}
    assert found["pids"].mount == Path("/host/cgroup/pids")
    assert found["unified"].version == 2 and found["cpu,cpuacct"].version == 1
    assert found["freezer"].mount == Path("/mnt/with space")
    assert not found["memory"].writable  # mounted read-only


def test_cgroupfs_joins_every_writable_hierarchy_before_nsenter() -> None:
    hs = [
        cgroups.Hierarchy(Path("/cg/memory"), 1, "memory", True),
        cgroups.Hierarchy(Path("/cg/unified"), 2, "unified", True),
        cgroups.Hierarchy(Path("/cg/pids"), 1, "pids", False),
    ]
    fs = cgroups.CgroupFs("/test/", hs)
    ref = model.Ref("web", "i1")
    cg = fs.cgroup(ref)
    assert cg.rel == "/test/discoverd/web/i1"
    assert cg.dirs == (Path("/cg/memory/test/discoverd/web/i1"), Path("/cg/unified/test/discoverd/web/i1"))
    argv = fs.wrap_outer(ref, ["nsenter", "--", "./web"])
    assert argv == [
        *cgroups.JOIN_ARGV,
        "/cg/memory/test/discoverd/web/i1/cgroup.procs",
        "/cg/unified/test/discoverd/web/i1/cgroup.procs",
        "--",
        "nsenter",
        "--",
        "./web",
    ]
    assert fs.wrap_inner(ref, None, ["./web"]) == ["./web"]


def test_systemd_scope_argv_carries_the_limits_and_an_escaped_slice() -> None:
    sd = cgroups.Systemd([cgroups.Hierarchy(Path("/sys/fs/cgroup"), 2, "unified", True)])
    ref = model.Ref("my-web", "i/1".replace("/", "-"))
    resources = documents.Resources(memory_mb=64, cpu_millis=250, pids_max=10)
    argv = sd.wrap_inner(ref, resources, ["./web", "--port", "80"])
    assert argv[:4] == ["systemd-run", "--scope", "--quiet", "--collect"]
    assert argv[4].startswith("--unit=run-") and argv[4].endswith(".scope")
    assert argv[5:] == [
        "--slice=discoverd-my\\x2dweb-i\\x2d1.slice",
        f"--property=MemoryMax={64 * 2**20}",
        "--property=CPUQuota=25%",
        "--property=TasksMax=10",
        "--",
        "./web",
        "--port",
        "80",
    ]
    cg = sd.cgroup(ref)
    assert cg.rel == "/discoverd.slice/discoverd-my\\x2dweb.slice/discoverd-my\\x2dweb-i\\x2d1.slice"
    assert not cg.owned  # systemd removes its own slices
    assert sd.wrap_outer(ref, ["x"]) == ["x"]


def test_no_placement_changes_nothing() -> None:
    ref = model.Ref("web", "i1")
    assert cgroups.NONE.cgroup(ref) is None
    assert cgroups.NONE.wrap_outer(ref, cgroups.NONE.wrap_inner(ref, None, ["./web"])) == ["./web"]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"name":"web","resources":{"cpu_millis":5}}', "resources.cpu_millis"),
        (b'{"name":"web","resources":{"memoryMb":0}}', "resources.memoryMb"),
        (b'{"name":"web","resources":{"pids_max":"many"}}', "resources.pids_max"),
    ],
)
def test_resources_out_of_range_name_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(InvalidDocument) as caught:
        documents.parse(documents.Version, "/the/key", raw)
    assert caught.value.field == field


def test_resources_read_both_spellings() -> None:
    doc = documents.parse(documents.Version, "/k", b'{"name":"web","resources":{"memoryMb":64,"pids_max":5}}')
    assert doc.resources == documents.Resources(memory_mb=64, pids_max=5)


def test_the_join_helper_writes_its_pid_then_execs_keeping_it(tmp_path: Path) -> None:
    procs = [tmp_path / "a", tmp_path / "b with space"]
    for p in procs:
        p.write_text("")
    hostile = "$(touch pwned); `touch pwned2` -- ; echo"
    proc = subprocess.run(
        [*cgroups.JOIN_ARGV, *map(str, procs), "--", "/bin/sh", "-c", 'echo $$; printf "%s" "$1"', "sh", hostile],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    pid, arg = proc.stdout.split("\n", 1)
    assert [p.read_text().strip() for p in procs] == [pid, pid]  # joined, then exec'd: the same process
    assert arg == hostile  # arguments pass through untouched, never run as shell text
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_the_join_helper_exits_125_naming_a_cgroup_it_cannot_join(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "cgroup.procs"
    proc = subprocess.run([*cgroups.JOIN_ARGV, str(missing), "--", "true"], capture_output=True, text=True)
    assert proc.returncode == 125
    assert f"could not join the cgroup {missing}" in proc.stderr


def test_the_cgroupfs_probe_reports_a_cgroup_that_cannot_be_joined(tmp_path: Path) -> None:
    # A plain directory stands for a hierarchy (the real ones: every agent test starts with a probe).
    ok = cgroups.CgroupFs("/root", [cgroups.Hierarchy(tmp_path / "ok", 1, "plain", True)])
    (tmp_path / "ok").mkdir()
    assert ok.probe() is None
    assert (tmp_path / "ok/root/discoverd/.probe" / str(os.getpid()) / "cgroup.procs").read_text().strip().isdigit()
    # `cgroup.procs` that cannot be written (here a directory; EIO from a pod): the reason, from the helper.
    bad = cgroups.CgroupFs("/root", [cgroups.Hierarchy(tmp_path / "bad", 1, "plain", True)])
    (tmp_path / "bad/root/discoverd/.probe" / str(os.getpid()) / "cgroup.procs").mkdir(parents=True)
    reason = bad.probe()
    assert reason is not None and "could not join the cgroup" in reason
