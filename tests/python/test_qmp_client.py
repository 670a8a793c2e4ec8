"""The gateway through QEMU's own Python QMP library (qemu.qmp, from PyPI).

Run by scripts/test with the venv it creates. Needs the built workspace (qmp-gateway and
vmm-core in target/debug) and the test guest (FLOTILLA_TEST_GUEST, or scripts/build-guest).
"""

import asyncio
import os
import unittest

from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol

from flotilla import TIMEOUT, Gateway



async def disconnect_after_shutdown(client):
    """Disconnects from a server that shut down: after its SHUTDOWN event it closes the
    connection, and if that end came first, qemu.qmp's disconnect() raises the reader's
    EOFError. QEMU's own python/qemu/machine takes EOF after a quit as expected, not as an
    error (QEMUMachine._close_qmp_connection); any other error still fails the test."""
    try:
        await client.disconnect()
    except EOFError:
        pass

class SyncClientTest(unittest.TestCase):
    """The legacy synchronous client (QEMUMonitorProtocol), as scripts and iotests use it."""

    def setUp(self):
        self.gw = Gateway("--name", "py-vm")
        self.qmp = QEMUMonitorProtocol(self.gw.sock)
        self.greeting = self.qmp.connect(negotiate=True)

    def tearDown(self):
        self.qmp.close()
        self.gw.close()

    def test_greeting_and_queries(self):
        self.assertEqual(self.greeting["QMP"]["capabilities"], ["oob"])
        self.assertEqual(self.qmp.cmd("query-status"),
                         {"running": True, "singlestep": False, "status": "running"})
        self.assertEqual(self.qmp.cmd("query-name"), {"name": "py-vm"})
        self.assertEqual(self.qmp.cmd("query-kvm"), {"enabled": True, "present": True})
        self.assertEqual(len(self.qmp.cmd("query-cpus-fast")), 2)
        self.assertIn({"name": "human-monitor-command"}, self.qmp.cmd("query-commands"))
        self.assertEqual(self.qmp.cmd("human-monitor-command", **{"command-line": "info status"}),
                         "VM status: running\r\n")

    def test_errors_raise_with_qemus_classes(self):
        with self.assertRaises(ExecuteError) as ctx:
            self.qmp.cmd("no-such-command")
        self.assertEqual(ctx.exception.error_class, "CommandNotFound")
        with self.assertRaises(ExecuteError) as ctx:
            self.qmp.cmd("getfd", fdname=1)
        self.assertEqual(ctx.exception.error_class, "GenericError")
        self.assertEqual(str(ctx.exception), "Invalid parameter type for 'fdname', expected: string")

    def test_getfd_add_fd_with_send_fd_scm(self):
        r, w = os.pipe()
        try:
            self.qmp.send_fd_scm(r)
            self.assertEqual(self.qmp.cmd("getfd", fdname="pipe"), {})
            self.assertEqual(self.qmp.cmd("closefd", fdname="pipe"), {})
            self.qmp.send_fd_scm(w)
            added = self.qmp.cmd("add-fd", **{"fdset-id": 2, "opaque": "w"})
            self.assertEqual(added["fdset-id"], 2)
            self.assertEqual(self.qmp.cmd("query-fdsets"),
                             [{"fdset-id": 2, "fds": [{"fd": added["fd"], "opaque": "w"}]}])
            self.assertEqual(self.qmp.cmd("remove-fd", **{"fdset-id": 2}), {})
            self.assertEqual(self.qmp.cmd("query-fdsets"), [])
        finally:
            os.close(r)
            os.close(w)

    def test_events_around_stop_cont_reset(self):
        self.qmp.cmd("stop")
        self.assertEqual(self.qmp.pull_event(wait=TIMEOUT)["event"], "STOP")
        self.assertEqual(self.qmp.cmd("query-status")["status"], "paused")
        self.qmp.cmd("cont")
        self.assertEqual(self.qmp.pull_event(wait=TIMEOUT)["event"], "RESUME")
        self.qmp.cmd("system_reset")
        event = self.qmp.pull_event(wait=TIMEOUT)
        self.assertEqual(event["event"], "RESET")
        self.assertEqual(event["data"], {"guest": False, "reason": "host-qmp-system-reset"})


class AsyncClientTest(unittest.IsolatedAsyncioTestCase):
    """The asynchronous client (QMPClient), with events and several clients at once."""

    async def asyncSetUp(self):
        self.gw = Gateway()

    async def asyncTearDown(self):
        self.gw.close()

    async def client(self, name="py"):
        c = QMPClient(name)
        await asyncio.wait_for(c.connect(self.gw.sock), TIMEOUT)
        return c

    async def test_powerdown_then_shutdown_events(self):
        self.gw.wait_console("GUEST IDLE")
        c = await self.client()
        with c.listener() as events:
            await c.execute("system_powerdown")
            seen = []
            while "SHUTDOWN" not in seen:
                seen.append((await asyncio.wait_for(events.get(), TIMEOUT))["event"])
        self.assertEqual(seen, ["POWERDOWN", "SHUTDOWN"])
        await disconnect_after_shutdown(c)
        self.assertEqual(self.gw.proc.wait(timeout=TIMEOUT), 0)
        self.assertFalse(os.path.exists(self.gw.sock))

    async def test_eight_clients_at_once(self):
        clients = [await self.client(f"c{i}") for i in range(8)]
        results = await asyncio.gather(*(c.execute("query-status") for c in clients))
        self.assertTrue(all(r["status"] == "running" for r in results))
        contexts = [c.listener() for c in clients]
        listeners = [ctx.__enter__() for ctx in contexts]
        try:
            await clients[3].execute("stop")
            await clients[5].execute("cont")
            for listener in listeners:
                names = [(await asyncio.wait_for(listener.get(), TIMEOUT))["event"] for _ in range(2)]
                self.assertEqual(names, ["STOP", "RESUME"])
        finally:
            for ctx in contexts:
                ctx.__exit__(None, None, None)
        for c in clients:
            await c.disconnect()

    async def test_quit(self):
        c = await self.client()
        with c.listener() as events:
            await c.execute("quit")
            event = await asyncio.wait_for(events.get(), TIMEOUT)
        self.assertEqual(event["data"], {"guest": False, "reason": "host-qmp-quit"})
        await disconnect_after_shutdown(c)
        self.assertEqual(self.gw.proc.wait(timeout=TIMEOUT), 0)


if __name__ == "__main__":
    unittest.main()
