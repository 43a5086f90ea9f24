"""`python -I -m discoverd.agent.cgexec PROCS... -- ARGV...`: join cgroups, then exec ARGV.

Every run script placed by `cgroups.CgroupFs` starts here: this process
writes its own pid into each `cgroup.procs` file named, then replaces itself
with ARGV (nsenter, then the script), keeping its pid and start time. So the
script's first instruction already runs in its instance's cgroups, and so does
everything it forks. Standard library only: it runs once per start, `-I` keeps
the service's environment (PYTHONPATH...) from changing what it imports.

Exit codes when it cannot go on (the reason is on stderr, the run log):
125 a cgroup could not be joined, 126 ARGV could not be executed, 127 ARGV's
command was not found (as a shell would say).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn

__all__ = ["main"]


def main(args: list[str]) -> NoReturn:
    if "--" not in args or args.index("--") == len(args) - 1:
        sys.stderr.write("usage: python -m discoverd.agent.cgexec CGROUP.PROCS... -- ARGV...\n")
        sys.exit(2)
    sep = args.index("--")
    procs, argv = args[:sep], args[sep + 1 :]
    me = str(os.getpid()).encode()
    for path in procs:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, me)
            finally:
                os.close(fd)
        except OSError as error:
            sys.stderr.write(f"discoverd: could not join the cgroup {path}: {error.strerror or error}\n")
            sys.exit(125)
    # Python ignores these at start-up, and an ignored signal stays ignored across exec.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as error:
        sys.stderr.write(f"discoverd: could not start {argv[0]!r}: {error.strerror or error}\n")
        sys.exit(127 if isinstance(error, FileNotFoundError) else 126)


if __name__ == "__main__":
    main(sys.argv[1:])
