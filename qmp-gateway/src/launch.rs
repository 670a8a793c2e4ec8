//! Starting the VM: the gateway opens the kernel, initrd and console (it is the only
//! process that opens paths), and hands the fds to vmm-core in the launch request.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ipc::host::{SerialConfig, VmArgs};
use ipc::{LaunchConfig, SerialSink, VcpuInfo, VmmReply, VmmRequest};

use crate::children::link::VmmLink;
use crate::sockets::bind_private;

/// The files of a launch, opened; `socket` is the console socket's path, to remove later.
pub struct OpenedVm {
    pub config: LaunchConfig,
    fds: Vec<OwnedFd>,
    pub console_socket: Option<PathBuf>,
}

impl OpenedVm {
    pub fn open(o: &VmArgs) -> anyhow::Result<OpenedVm> {
        let kernel_path = o.kernel.as_deref().context("--kernel is required")?;
        let cpus = u32::try_from(o.cpus).context("--cpus")?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        let kvm = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .context("/dev/kvm")?;
        fds.push(kvm.into());
        let kernel =
            File::open(kernel_path).with_context(|| format!("kernel {}", kernel_path.display()))?;
        fds.push(kernel.into());
        if let Some(p) = &o.initrd {
            fds.push(
                File::open(p)
                    .with_context(|| format!("initrd {}", p.display()))?
                    .into(),
            );
        }
        let mut console_socket = None;
        let serial = match &o.serial {
            SerialConfig::Stdout => SerialSink::Stdout,
            SerialConfig::None => SerialSink::None,
            SerialConfig::File(p) => {
                fds.push(
                    File::create(p)
                        .with_context(|| format!("serial {}", p.display()))?
                        .into(),
                );
                SerialSink::File
            }
            SerialConfig::Unix(p) => {
                fds.push(bind_private(p).context("serial socket")?.into());
                console_socket = Some(p.clone());
                SerialSink::UnixListener
            }
        };
        let path = |p: &Path| p.to_string_lossy().into_owned();
        Ok(OpenedVm {
            config: LaunchConfig {
                memory_mib: o.memory,
                cpus,
                cmdline: o.cmdline.clone(),
                kernel_path: path(kernel_path),
                initrd_path: o.initrd.as_deref().map(path),
                serial,
                start_paused: o.start_paused,
                disks: Vec::new(),
                nics: Vec::new(),
            },
            fds,
            console_socket,
        })
    }

    /// A disk, with vmm-core's end of its vhost-user socket. (Disks are added before
    /// NICs: the launch frame carries the disks' fds, then the NICs'.)
    pub fn add_disk(&mut self, disk: ipc::DiskLaunch, stream: OwnedFd) {
        self.config.disks.push(disk);
        self.fds.push(stream);
    }

    /// A NIC, with vmm-core's end of its vhost-user socket.
    pub fn add_nic(&mut self, nic: ipc::NicLaunch, stream: OwnedFd) {
        self.config.nics.push(nic);
        self.fds.push(stream);
    }

    /// Asks vmm-core to build and start the VM; returns its vCPU threads.
    pub fn launch(&self, vmm: &VmmLink) -> anyhow::Result<Vec<VcpuInfo>> {
        let fds: Vec<BorrowedFd> = self.fds.iter().map(|f| f.as_fd()).collect();
        match vmm.request(VmmRequest::Launch(self.config.clone()), &fds) {
            Ok(VmmReply::Launched { vcpus }) => Ok(vcpus),
            Ok(other) => bail!("vmm-core answered the launch with {other:?}"),
            Err(e) => bail!("{e}"),
        }
    }
}
