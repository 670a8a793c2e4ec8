"""The block commands through qemu.qmp: each one's success and error paths as QEMU
answers them, blockdev-add through an fd set, and the nodes and disks the answers
describe."""

import os
import shutil
import tempfile
import unittest

from qemu.qmp import ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

from flotilla import Gateway

MIB = 1 << 20
QDEV = "/machine/peripheral-anon/device[0]/virtio-backend"


def image(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


class BlockCommandsTest(unittest.TestCase):
    def setUp(self):
        self.images = tempfile.mkdtemp(prefix="flotilla-py-blk-")
        self.d0 = image(os.path.join(self.images, "d0.img"), 64 * MIB)
        self.n1 = image(os.path.join(self.images, "n1.img"), 16 * MIB)
        self.gw = Gateway("--drive", f"file={self.d0},format=raw,id=d0,stats-intervals.0=10")
        self.qmp = QEMUMonitorProtocol(self.gw.sock)
        self.qmp.connect(negotiate=True)

    def tearDown(self):
        self.qmp.close()
        self.gw.close()
        shutil.rmtree(self.images, ignore_errors=True)

    def error(self, command, **args):
        with self.assertRaises(ExecuteError) as ctx:
            self.qmp.cmd(command, **args)
        return ctx.exception.error_class, str(ctx.exception)

    def generic(self, message, command, **args):
        self.assertEqual(self.error(command, **args), ("GenericError", message))

    def node(self, name):
        nodes = self.qmp.cmd("query-named-block-nodes")
        found = [n for n in nodes if n["node-name"] == name]
        self.assertEqual(len(found), 1, nodes)
        return found[0]

    def test_query_block_describes_the_drive(self):
        [disk] = self.qmp.cmd("query-block")
        self.assertEqual(disk["device"], "d0")
        self.assertEqual(disk["qdev"], QDEV)
        self.assertFalse(disk["removable"])
        self.assertFalse(disk["locked"])
        # werror=enospc by default: an error may stop the VM, so there is a status.
        self.assertEqual(disk["io-status"], "ok")
        inserted = disk["inserted"]
        self.assertEqual(inserted["file"], self.d0)
        self.assertEqual(inserted["drv"], "raw")
        self.assertFalse(inserted["ro"])
        self.assertEqual(inserted["image"]["virtual-size"], 64 * MIB)
        self.assertEqual(inserted["cache"], {"writeback": True, "direct": False, "no-flush": False})
        self.assertEqual(inserted["detect_zeroes"], "off")
        # The raw node sits on an automatically named file node.
        raw = self.node(inserted["node-name"])
        self.assertEqual(raw["drv"], "raw")
        files = [n for n in self.qmp.cmd("query-named-block-nodes") if n["drv"] == "file"]
        self.assertEqual([f["file"] for f in files], [self.d0])
        self.assertTrue(files[0]["node-name"].startswith("#block"))

    def test_query_blockstats(self):
        [entry] = self.qmp.cmd("query-blockstats")
        self.assertEqual(entry["device"], "d0")
        self.assertEqual(entry["qdev"], QDEV)
        stats = entry["stats"]
        for key in ("rd_bytes", "wr_bytes", "rd_operations", "wr_operations", "flush_operations",
                    "rd_total_time_ns", "wr_total_time_ns", "flush_total_time_ns",
                    "wr_highest_offset", "rd_merged", "wr_merged", "failed_rd_operations",
                    "failed_wr_operations", "failed_flush_operations", "invalid_rd_operations",
                    "invalid_wr_operations", "invalid_flush_operations", "account_invalid",
                    "account_failed"):
            self.assertIn(key, stats)
        self.assertEqual(stats["timed_stats"][0]["interval_length"], 10)
        self.assertEqual(entry["parent"]["driver-specific"]["driver"], "file")
        by_node = self.qmp.cmd("query-blockstats", **{"query-nodes": True})
        self.assertEqual(len(by_node), 2)
        self.assertTrue(all("device" not in e for e in by_node))

    def test_blockdev_add_and_del(self):
        self.assertEqual(self.qmp.cmd("blockdev-add", driver="file", **{"node-name": "f1"},
                                      filename=self.n1), {})
        self.assertEqual(self.qmp.cmd("blockdev-add", driver="raw", file="f1",
                                      **{"node-name": "r1"}), {})
        # QEMU 2.x's form: the options wrapped in "options"; an inline child inherits.
        self.qmp.cmd("blockdev-add", options={
            "driver": "raw", "node-name": "r2", "read-only": True, "discard": "unmap",
            "detect-zeroes": "unmap", "cache": {"direct": True, "no-flush": False},
            "file": {"driver": "file", "filename": self.n1}})
        r2 = self.node("r2")
        self.assertTrue(r2["ro"])
        self.assertEqual(r2["detect_zeroes"], "unmap")
        self.assertTrue(r2["cache"]["direct"])
        self.assertEqual(r2["image"]["virtual-size"], 16 * MIB)
        names = [n["node-name"] for n in self.qmp.cmd("query-named-block-nodes")]
        self.assertEqual(names[0], "r2", "newest first")
        self.assertTrue(names[1].startswith("#block"), "r2's inline child")
        self.assertTrue(self.node(names[1])["ro"], "inherited read-only")

        self.generic("Duplicate nodes with node-name='r1'", "blockdev-add",
                     driver="raw", file="f1", **{"node-name": "r1"})
        self.generic("'node-name' must be specified for the root node", "blockdev-add",
                     driver="raw", file="f1")
        self.generic("Cannot find device='nofile' nor node-name='nofile'", "blockdev-add",
                     driver="raw", file="nofile", **{"node-name": "r3"})
        self.generic("Could not open '/nonexistent': No such file or directory", "blockdev-add",
                     driver="file", filename="/nonexistent", **{"node-name": "f9"})
        self.generic("Parameter 'driver' does not accept value 'bogus'", "blockdev-add",
                     driver="bogus", **{"node-name": "q1"})
        self.generic("setting detect-zeroes to unmap is not allowed without setting discard "
                     "operation to unmap", "blockdev-add", driver="file", filename=self.n1,
                     **{"node-name": "f8", "detect-zeroes": "unmap"})
        self.generic(f"'host_device' driver requires '{self.n1}' to be either a character or "
                     "block device", "blockdev-add", driver="host_device", filename=self.n1,
                     **{"node-name": "h1"})
        self.generic("Invalid node-name: '1bad'", "blockdev-add", driver="file",
                     filename=self.n1, **{"node-name": "1bad"})
        self.generic("node-name=d0 is conflicting with a device id", "blockdev-add",
                     driver="file", filename=self.n1, **{"node-name": "d0"})
        self.generic("Parameter 'file.bogus' is unexpected", "blockdev-add", driver="raw",
                     **{"node-name": "r4"}, file={"driver": "file", "filename": self.n1,
                                                  "bogus": 1})

        self.generic("Block device f1 is in use", "blockdev-del", **{"node-name": "f1"})
        self.generic("Failed to find node with node-name='nope'", "blockdev-del",
                     **{"node-name": "nope"})
        self.generic(f"Node {names[1]} is not owned by the monitor", "blockdev-del",
                     **{"node-name": names[1]})
        drive_node = self.qmp.cmd("query-block")[0]["inserted"]["node-name"]
        # A node a device is attached to is "in use" before QEMU 7.2 asks who owns it
        # (tests/tests/qmp_oracle.rs checks this against QEMU live).
        self.generic(f"Node {drive_node} is in use", "blockdev-del",
                     **{"node-name": drive_node})
        self.assertEqual(self.qmp.cmd("blockdev-del", **{"node-name": "r1"}), {})
        # Today's name and the spec's both work.
        self.assertEqual(self.qmp.cmd("x-blockdev-del", **{"node-name": "f1"}), {})
        self.assertEqual(self.qmp.cmd("blockdev-del", **{"node-name": "r2"}), {})
        names = [n["node-name"] for n in self.qmp.cmd("query-named-block-nodes")]
        self.assertEqual(len(names), 2, "only the drive's nodes are left")

    def test_blockdev_add_through_an_fd_set(self):
        fd = os.open(self.n1, os.O_RDWR)
        try:
            self.qmp.send_fd_scm(fd)
            added = self.qmp.cmd("add-fd", **{"fdset-id": 3})
        finally:
            os.close(fd)
        self.assertEqual(added["fdset-id"], 3)
        self.qmp.cmd("blockdev-add", driver="file", filename="/dev/fdset/3",
                     **{"node-name": "viafd"})
        node = self.node("viafd")
        self.assertEqual(node["file"], "/dev/fdset/3")
        self.assertEqual(node["image"]["virtual-size"], 16 * MIB)
        self.generic("Could not dup FD for /dev/fdset/9 flags 2: No such file or directory",
                     "blockdev-add", driver="file", filename="/dev/fdset/9",
                     **{"node-name": "nofd"})
        # The set holds a read-write fd; a read-only open wants a read-only one.
        self.generic("Could not dup FD for /dev/fdset/3 flags 0: Permission denied",
                     "blockdev-add", driver="file", filename="/dev/fdset/3",
                     **{"node-name": "rofd", "read-only": True})

    def test_block_resize(self):
        self.qmp.cmd("blockdev-add", driver="raw", **{"node-name": "r1"},
                     file={"driver": "file", "filename": self.n1})
        self.assertEqual(self.qmp.cmd("block_resize", **{"node-name": "r1"}, size=32 * MIB), {})
        self.assertEqual(os.path.getsize(self.n1), 32 * MIB)
        self.assertEqual(self.qmp.cmd("block_resize", device="d0", size=128 * MIB), {})
        self.assertEqual(os.path.getsize(self.d0), 128 * MIB)
        self.assertEqual(self.qmp.cmd("query-block")[0]["inserted"]["image"]["virtual-size"],
                         128 * MIB)
        self.generic("Cannot find device='' nor node-name=''", "block_resize", size=1000)
        self.generic("Cannot find device='nope' nor node-name=''", "block_resize",
                     device="nope", size=1000)
        self.generic("Cannot find device='' nor node-name='nope'", "block_resize",
                     **{"node-name": "nope"}, size=1000)
        self.generic("Parameter 'size' expects a >0 size", "block_resize", device="d0", size=-1)
        self.generic("Invalid parameter type for 'size', expected: integer", "block_resize",
                     device="d0", size=1 << 63)
        self.qmp.cmd("blockdev-add", driver="raw", **{"node-name": "ro", "read-only": True},
                     file={"driver": "file", "filename": self.n1})
        self.generic("Image is read-only", "block_resize", **{"node-name": "ro"}, size=MIB)

    def test_block_set_io_throttle(self):
        zero = {"bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0}
        self.assertEqual(self.qmp.cmd("block_set_io_throttle", id=QDEV,
                                      **dict(zero, bps=MIB, bps_max=2 * MIB, bps_max_length=3,
                                             group="g1")), {})
        inserted = self.qmp.cmd("query-block")[0]["inserted"]
        self.assertEqual((inserted["bps"], inserted["bps_max"], inserted["bps_max_length"],
                          inserted["group"]), (MIB, 2 * MIB, 3, "g1"))
        self.assertEqual(self.qmp.cmd("block_set_io_throttle", device="d0", **zero), {})
        self.assertNotIn("group", self.qmp.cmd("query-block")[0]["inserted"])
        self.generic("bps/iops/max total values and read/write values cannot be used at the "
                     "same time", "block_set_io_throttle", device="d0",
                     **dict(zero, bps=MIB, bps_rd=10))
        self.generic("bps/iops/max values must be within [0, 1000000000000000]",
                     "block_set_io_throttle", device="d0", **dict(zero, iops=-1))
        self.generic("bps_max/iops_max cannot be lower than bps/iops", "block_set_io_throttle",
                     device="d0", **dict(zero, bps=100, bps_max=50))
        self.generic("burst length set without burst rate", "block_set_io_throttle",
                     device="d0", **dict(zero, bps=100, bps_max_length=5))
        self.generic("the burst length cannot be 0", "block_set_io_throttle", device="d0",
                     **dict(zero, bps=100, bps_max=1000, bps_max_length=0))
        self.generic("iops size requires an iops value to be set", "block_set_io_throttle",
                     device="d0", **dict(zero, bps=100, iops_size=4096))
        self.generic("Need exactly one of 'device' and 'id'", "block_set_io_throttle", **zero)
        self.assertEqual(self.error("block_set_io_throttle", device="nope", **zero),
                         ("DeviceNotFound", "Device 'nope' not found"))
        self.generic("Parameter 'bps' is missing", "block_set_io_throttle", device="d0")

    def test_block_set_write_threshold(self):
        node = self.qmp.cmd("query-block")[0]["inserted"]["node-name"]
        self.assertEqual(self.qmp.cmd("block-set-write-threshold", **{
            "node-name": node, "write-threshold": 4096}), {})
        self.assertEqual(self.node(node)["write_threshold"], 4096)
        self.assertEqual(self.qmp.cmd("block-set-write-threshold", **{
            "node-name": node, "write-threshold": 0}), {})
        self.assertEqual(self.node(node)["write_threshold"], 0)
        # A uint64: the largest is taken, and shown (an int) as QEMU 7.2 shows it.
        self.assertEqual(self.qmp.cmd("block-set-write-threshold", **{
            "node-name": node, "write-threshold": (1 << 64) - 1}), {})
        self.assertEqual(self.node(node)["write_threshold"], -1)
        self.generic("Device 'nope' not found", "block-set-write-threshold",
                     **{"node-name": "nope", "write-threshold": 1})
        self.generic("Device 'd0' not found", "block-set-write-threshold",
                     **{"node-name": "d0", "write-threshold": 1})

    def test_an_error_policy_that_cannot_stop_shows_no_io_status(self):
        other = image(os.path.join(self.images, "e1.img"), MIB)
        gw = Gateway("--drive", f"file={other},format=raw,id=e1,werror=report,rerror=ignore")
        qmp = QEMUMonitorProtocol(gw.sock)
        try:
            qmp.connect(negotiate=True)
            [disk] = qmp.cmd("query-block")
            self.assertNotIn("io-status", disk)
            self.assertIn("BLOCK_IO_ERROR", [e["name"] for e in qmp.cmd("query-events")])
        finally:
            qmp.close()
            gw.close()

    def test_fixed_disks_are_not_removable(self):
        for command in ("eject", "blockdev-open-tray", "blockdev-close-tray",
                        "blockdev-remove-medium", "x-blockdev-remove-medium"):
            self.generic("Device 'd0' is not removable", command, device="d0")
            self.generic(f"Device '{QDEV}' is not removable", command, id=QDEV)
            self.generic("Need exactly one of 'device' and 'id'", command)
            self.assertEqual(self.error(command, device="nope"),
                             ("DeviceNotFound", "Device 'nope' not found"))
        self.generic("Device 'd0' is not removable", "blockdev-change-medium", device="d0",
                     filename=self.n1)
        self.generic("Device 'd0' is not removable", "change", device="d0", target=self.n1)
        self.assertEqual(self.error("change", device="nope", target=self.n1),
                         ("DeviceNotFound", "Device 'nope' not found"))
        self.generic("Could not set password", "change", device="vnc", target="password",
                     arg="secret")
        for command in ("blockdev-insert-medium", "x-blockdev-insert-medium"):
            self.generic("Node 'x' not found", command, id=QDEV, **{"node-name": "x"})
        self.qmp.cmd("blockdev-add", driver="file", filename=self.n1, **{"node-name": "f1"})
        # QEMU 7.2's insert names no device.
        self.generic("Device is not removable", "blockdev-insert-medium", device="d0",
                     **{"node-name": "f1"})

    def test_block_passwd_and_x_blockdev_change(self):
        self.generic("Device 'd0' is not encrypted", "block_passwd", device="d0", password="x")
        self.generic("Cannot find device='nope' nor node-name=''", "block_passwd",
                     device="nope", password="x")
        self.qmp.cmd("blockdev-add", driver="file", filename=self.n1, **{"node-name": "f1"})
        self.generic("The node f1 does not support adding a child", "x-blockdev-change",
                     parent="f1", node="f1")
        self.generic("The node f1 does not support removing a child", "x-blockdev-change",
                     parent="f1", child="file")
        self.generic("Either child or node must be specified", "x-blockdev-change", parent="f1")
        self.generic("Cannot find device='p' nor node-name='p'", "x-blockdev-change",
                     parent="p", node="f1")


if __name__ == "__main__":
    unittest.main()
