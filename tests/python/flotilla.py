"""Shared by the qemu.qmp tests: where the binaries and the test guest are, and
qmp-gateway running the test guest with a QMP socket in a scratch directory."""

import os
import shutil
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("FLOTILLA_BIN_DIR", os.path.join(ROOT, "target", "debug"))
TIMEOUT = 20


def test_guest():
    path = os.environ.get("FLOTILLA_TEST_GUEST")
    if not path:
        out = subprocess.run([os.path.join(ROOT, "scripts", "build-guest")], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        path = out.strip().splitlines()[-1]
    if not os.path.isfile(path):
        raise AssertionError(f"test guest {path} missing: run scripts/build-guest")
    return path


class Gateway:
    """qmp-gateway with the idle test guest and a QMP socket in a scratch directory."""

    def __init__(self, *extra):
        gateway = os.path.join(BIN, "qmp-gateway")
        if not os.path.isfile(gateway):
            raise AssertionError(f"{gateway} missing: run cargo build --workspace --bins")
        self.dir = tempfile.mkdtemp(prefix="flotilla-py-")
        self.sock = os.path.join(self.dir, "qmp.sock")
        self.console = os.path.join(self.dir, "console.log")
        self.proc = subprocess.Popen(
            [gateway, "--kernel", test_guest(), "--memory", "128", "--cpus", "2",
             "--serial", f"file:{self.console}", "--qmp", self.sock, *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gateway did not start: {self.proc.stderr.read()}")
            time.sleep(0.01)

    def wait_console(self, text):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            with open(self.console, encoding="utf-8", errors="replace") as f:
                if text in f.read():
                    return
            time.sleep(0.01)
        raise AssertionError(f"no {text!r} on the console")

    def close(self):
        # SIGTERM: the gateway stops vmm-core and the block daemons and removes its
        # sockets; SIGKILL only if it does not end.
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait()
        self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
