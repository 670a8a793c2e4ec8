"""Shared by the qemu.qmp tests: where the binaries and the test guest are, and
qmp-gateway running the test guest with a QMP socket in a scratch directory.

The gateway's stderr is read all the time by a thread of its own (a chatty gateway must
never block on a full pipe), and is printed when the test that started it fails."""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

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


def _calling_test():
    """The unittest.TestCase whose method (setUp, a test) created the gateway, if any."""
    frame = sys._getframe(2)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, unittest.TestCase):
            return candidate
        frame = frame.f_back
    return None


class Gateway:
    """qmp-gateway with the idle test guest and a QMP socket in a scratch directory.

    `test`: the TestCase to report to (by default the one whose method creates the
    gateway): when it fails, the gateway's stderr is printed with the failure."""

    def __init__(self, *extra, test=None):
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
        self._lines = []
        self._lines_lock = threading.Lock()
        self._drain = threading.Thread(target=self._read_stderr, daemon=True,
                                       name="gateway-stderr")
        self._drain.start()
        test = test if test is not None else _calling_test()
        if test is not None:
            test.addCleanup(self._report_if_failed, test)
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gateway did not start:\n{self.log()}")
            time.sleep(0.01)

    def _read_stderr(self):
        for raw in self.proc.stderr:
            with self._lines_lock:
                self._lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))

    def log(self):
        """What the gateway wrote on stderr so far (all of it once it has exited)."""
        if self.proc.poll() is not None:
            # It has exited: the reader reaches the end of the pipe soon.
            self._drain.join(timeout=5)
        with self._lines_lock:
            return "\n".join(self._lines)

    def _report_if_failed(self, test):
        # unittest (3.11) reports a failed setUp, test or tearDown to the run's result
        # at once; cleanups run after all three. Without that record, print anyway.
        result = getattr(getattr(test, "_outcome", None), "result", None)
        failed = (result is None or not hasattr(result, "failures")
                  or any(t is test for t, _ in result.failures + result.errors))
        if failed:
            print(f"\n--- qmp-gateway stderr ({test.id()}) ---\n{self.log()}\n---",
                  file=sys.stderr)

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
        self._drain.join(timeout=5)
        self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
