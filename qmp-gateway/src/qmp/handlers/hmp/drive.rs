//! HMP `drive_add` and `drive_del` as QEMU 7.2's monitor runs them: a drive (if=none)
//! read by --drive's reader and made by the block layer (block/drives.rs), or with -n a
//! node, as blockdev-add makes one; drive_del of a drive or a node. Their errors are
//! printed as QEMU's error_report prints them: the text alone.

use crate::block::drive::DriveText;
use crate::qmp::context::Ctx;

use super::reply::read_args;

/// QEMU's BlockInterfaceType names, by their number (its "Can't hot-add" names it).
const INTERFACES: [&str; 9] = [
    "none", "ide", "scsi", "floppy", "pflash", "mtd", "sd", "virtio", "xen",
];

/// The interface a drive without if= gets: the pc machine's block_default_type, IDE.
const DEFAULT_INTERFACE: usize = 1;

/// `drive_add [-n] ADDR OPTIONS`: ADDR (a PCI address QEMU reads and no longer uses)
/// is skipped.
pub fn drive_add(c: &mut Ctx, arguments: &str, _: &mut u32) -> String {
    const NAME: &str = "drive_add";
    let members = match read_args(NAME, "node:-n,pci_addr:s,opts:s", arguments) {
        Ok(m) => m,
        Err(usage) => return usage,
    };
    let options = members["opts"].as_str().unwrap_or_default();
    if members.contains_key("node") {
        return node_add(c, options);
    }
    let text = match DriveText::read(options) {
        Ok(text) => text,
        Err(why) => return format!("{why}\n"),
    };
    let interface = match text.interface.as_deref() {
        None => DEFAULT_INTERFACE,
        Some(name) => match INTERFACES.iter().position(|i| *i == name) {
            Some(n) => n,
            None => return format!("unsupported bus type '{name}'\n"),
        },
    };
    let account = c.fd_account;
    let added =
        c.gw.block
            .drive_add(&text, &c.gw.fdsets, &mut || Ok(Some(account.charge(1)?)));
    match added {
        Err(e) => format!("{e}\n"),
        Ok(_) if interface == 0 => "OK\n".into(),
        Ok(id) => {
            // QEMU makes the drive, then finds it cannot plug it anywhere.
            if let Err(e) = c.gw.block.drive_del(&id) {
                log::warn!("drive_add: removing drive {id} again: {e}");
            }
            format!("Can't hot-add drive to type {interface}\n")
        }
    }
}

/// `drive_add -n ADDR OPTIONS`: a node from -drive style options, its `file` an existing
/// node's name (QEMU's hmp_drive_add_node). Unlike QEMU, the format is never probed:
/// driver= must be given.
fn node_add(c: &mut Ctx, options: &str) -> String {
    let value = |key: &str| {
        (options.split(','))
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    };
    if value("node-name").is_none() {
        return "'node-name' needs to be specified\n".into();
    }
    if value("driver").is_none() {
        return match value("file") {
            None => "Must specify either driver or file\n".into(),
            Some(file) => match c.gw.block.missing_node(file) {
                Some(e) => format!("{e}\n"),
                None => {
                    "driver=raw or driver=qcow2 is required (image formats are never guessed)\n"
                        .into()
                }
            },
        };
    }
    let opts = match crate::qmp::blockdev::parse_cli(options) {
        Ok(opts) => opts,
        Err(why) => return format!("{why}\n"),
    };
    let account = c.fd_account;
    match (c.gw.block).blockdev_add(&opts, &c.gw.fdsets, &mut || Ok(Some(account.charge(1)?))) {
        Ok(()) => String::new(),
        Err(e) => format!("{e}\n"),
    }
}

/// `drive_del ID`: nothing printed when it works.
pub fn drive_del(c: &mut Ctx, arguments: &str, _: &mut u32) -> String {
    let members = match read_args("drive_del", "id:B", arguments) {
        Ok(m) => m,
        Err(usage) => return usage,
    };
    let id = members["id"].as_str().unwrap_or_default();
    match c.gw.block.drive_del(id) {
        Ok(()) => String::new(),
        Err(e) => format!("{e}\n"),
    }
}
