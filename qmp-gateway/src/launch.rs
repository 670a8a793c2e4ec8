//! Starting the VM: the gateway opens the kernel and initrd (it is the only process that
//! opens paths; the console is a chardev's, chardev/console.rs), and hands the fds to
//! vmm-core in the launch request.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use ipc::host::VmArgs;
use ipc::{LaunchConfig, SerialSink, VcpuInfo, VmmReply, VmmRequest};

use crate::children::link::{LinkError, VmmLink};
use crate::devices::placement::Dimm;
use crate::devices::LaunchLists;

/// Why the VM could not be launched (the command line reads these).
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("--kernel is required")]
    NoKernel,
    #[error("--cpus: {0}")]
    Cpus(std::num::TryFromIntError),
    #[error("--max-cpus {max} is below --cpus {cpus}")]
    MaxCpus { max: u32, cpus: u32 },
    #[error("/dev/kvm: {0}")]
    Kvm(std::io::Error),
    #[error("kernel {}: {error}", path.display())]
    Kernel {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("initrd {}: {error}", path.display())]
    Initrd {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("a DIMM's memory: {0}")]
    DimmMemory(String),
    #[error("vmm-core answered the launch with {0}")]
    UnexpectedReply(String),
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// The files of a launch, opened.
pub struct OpenedVm {
    pub config: LaunchConfig,
    fds: Vec<OwnedFd>,
    /// The launch's DIMMs' memory, for the launch only (the memory backend objects keep
    /// theirs).
    dimm_fds: Vec<OwnedFd>,
    /// Each DIMM's memory backend object, in the order of `config.dimms`.
    pub dimm_memdevs: Vec<String>,
}

impl OpenedVm {
    pub fn open(o: &VmArgs) -> Result<OpenedVm, LaunchError> {
        let kernel_path = o.kernel.as_deref().ok_or(LaunchError::NoKernel)?;
        let cpus = u32::try_from(o.cpus).map_err(LaunchError::Cpus)?;
        let max_cpus = match o.max_cpus {
            Some(max) => u32::try_from(max).map_err(LaunchError::Cpus)?,
            None => cpus,
        };
        if max_cpus < cpus {
            return Err(LaunchError::MaxCpus {
                max: max_cpus,
                cpus,
            });
        }
        let mut fds: Vec<OwnedFd> = Vec::new();
        let kvm = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map_err(LaunchError::Kvm)?;
        fds.push(kvm.into());
        let kernel = File::open(kernel_path).map_err(|error| LaunchError::Kernel {
            path: kernel_path.to_path_buf(),
            error,
        })?;
        fds.push(kernel.into());
        if let Some(p) = &o.initrd {
            let initrd = File::open(p).map_err(|error| LaunchError::Initrd {
                path: p.clone(),
                error,
            })?;
            fds.push(initrd.into());
        }
        let path = |p: &Path| p.to_string_lossy().into_owned();
        Ok(OpenedVm {
            config: LaunchConfig {
                memory_mib: o.memory.mib,
                cpus,
                max_cpus,
                added_cpus: Vec::new(),
                cmdline: o.cmdline.clone(),
                kernel_path: path(kernel_path),
                initrd_path: o.initrd.as_deref().map(path),
                // Until set_console connects the UART to its chardev.
                serial: SerialSink::None,
                start_paused: o.start_paused,
                // The gateway's --no-shutdown (not a VmArgs option: vmm-core alone exits).
                no_shutdown: false,
                disks: Vec::new(),
                nics: Vec::new(),
                incoming: false,
                upgrade: None,
                balloon: None,
                memory_hotplug: o.memory.hotplug(),
                dimms: Vec::new(),
                // The gateway's --cpu (not a VmArgs option either): set before the launch.
                cpu: Default::default(),
            },
            fds,
            dimm_fds: Vec::new(),
            dimm_memdevs: Vec::new(),
        })
    }

    /// The UART's chardev: vmm-core's end of its connection (before any disk or NIC, as
    /// the launch frame carries the console's fd after the initrd's).
    pub fn set_console(&mut self, fd: OwnedFd) {
        self.config.serial = SerialSink::Chardev;
        self.fds.push(fd);
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

    /// A DIMM (--device pc-dimm), with a handle on its memory backend's memory.
    pub fn add_dimm(&mut self, dimm: &Dimm, memory: OwnedFd) {
        self.config.dimms.push(dimm.launch);
        self.dimm_memdevs.push(dimm.memdev.clone());
        self.dimm_fds.push(memory);
    }

    /// The devices there are now (after device_add and device_del), each in its slot,
    /// for the next vmm-core's launch and the migration's shape. Only after the launch,
    /// once the backend connections were dropped.
    pub fn set_devices(&mut self, lists: LaunchLists) {
        self.config.disks = lists.disks;
        self.config.nics = lists.nics;
        self.config.dimms = lists.dimms.iter().map(|d| d.launch).collect();
        self.dimm_memdevs = lists.dimms.into_iter().map(|d| d.memdev).collect();
    }

    /// After the launch: the backend connections were vmm-core's alone (a dup here
    /// would keep a backend from seeing its frontend go); the other files stay, for a
    /// live upgrade's vmm-core. The DIMMs' memory stays with their backend objects.
    pub fn drop_backend_connections(&mut self) {
        let backends = self.config.disks.len() + self.config.nics.len();
        let keep = self.fds.len().saturating_sub(backends);
        self.fds.truncate(keep);
        self.dimm_fds.clear();
    }

    /// The launch of a vmm-core that takes over this VM (a live upgrade): the same
    /// files, guest RAM's memfd, the devices' shapes, fresh backend connections and the
    /// DIMMs' memory (`dimms`, in the order of `config.dimms`).
    pub fn upgrade(
        &self,
        vmm: &VmmLink,
        memfd: &OwnedFd,
        links: Vec<ipc::LinkShape>,
        backends: &[OwnedFd],
        dimms: &[OwnedFd],
    ) -> Result<Vec<VcpuInfo>, LaunchError> {
        let mut config = self.config.clone();
        config.incoming = true;
        config.upgrade = Some(links);
        let mut fds: Vec<BorrowedFd> = self.fds.iter().map(|f| f.as_fd()).collect();
        fds.push(memfd.as_fd());
        fds.extend(backends.iter().map(|f| f.as_fd()));
        fds.extend(dimms.iter().map(|f| f.as_fd()));
        match vmm.request(VmmRequest::Launch(config), &fds)? {
            VmmReply::Launched { vcpus } => Ok(vcpus),
            other => Err(LaunchError::UnexpectedReply(format!("{other:?}"))),
        }
    }

    /// What a migration's source and destination must agree on.
    pub fn shape(&self) -> ipc::MachineShape {
        ipc::MachineShape {
            memory: self.config.memory_mib << 20,
            // The vCPUs there are: a destination must have the added ones too.
            vcpus: self.config.cpus + self.config.added_cpus.len() as u32,
            disks: self.config.disks.iter().map(|d| d.max_queues).collect(),
            nics: self.config.nics.iter().map(|n| n.queue_pairs).collect(),
            dimms: self.config.dimms.clone(),
        }
    }

    /// Asks vmm-core to build and start the VM; returns its vCPU threads.
    pub fn launch(&self, vmm: &VmmLink) -> Result<Vec<VcpuInfo>, LaunchError> {
        let fds: Vec<BorrowedFd> = (self.fds.iter().chain(&self.dimm_fds))
            .map(|f| f.as_fd())
            .collect();
        match vmm.request(VmmRequest::Launch(self.config.clone()), &fds)? {
            VmmReply::Launched { vcpus } => Ok(vcpus),
            other => Err(LaunchError::UnexpectedReply(format!("{other:?}"))),
        }
    }
}
