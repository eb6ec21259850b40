"""What the Python benchmarks share: network namespaces named with a
unique prefix, the child processes they start and a work directory, all
removed on exit, on Ctrl-C, on SIGTERM and on error.

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import netnslab
    LAB = netnslab.Lab("cplbs")     # namespaces cplbs-<pid>-<name>
    ...
    LAB.install_cleanup()           # in main(), before building anything
"""
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path


def sh(*args, check=True, **kw):
    """Runs a command, capturing its output as text."""
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


class Lab:
    def __init__(self, tag):
        self.prefix = f"{tag}-{os.getpid()}-"
        self.namespaces = []
        self.processes = []
        self.workdir = Path(tempfile.mkdtemp(prefix=self.prefix))

    def ns(self, name):
        return self.prefix + name

    def netns_exec(self, name, *args):
        return ["ip", "netns", "exec", self.ns(name), *args]

    def cleanup(self):
        for p in self.processes:
            if p.poll() is None:
                try:
                    p.kill()
                    p.wait(timeout=5)
                except Exception:
                    pass
        for n in reversed(self.namespaces):
            sh("ip", "netns", "del", n, check=False)
        if not os.environ.get("KEEP_WORKDIR"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def install_cleanup(self):
        atexit.register(self.cleanup)
        signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
