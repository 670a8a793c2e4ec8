//! A vhost-user backend in the test process, for the link's and postcopy's tests: it
//! writes what it is told into a journal the test reads.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex as StdMutex};

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Backend, BackendReqHandler, Error as BackendError, GpuBackend, VhostUserBackendReqHandlerMut,
};

use crate::events::PostcopyEvents;

pub type Journal = Arc<StdMutex<Vec<String>>>;
type Answer<T> = vhost::vhost_user::Result<T>;

/// Where the mock backend says it maps guest RAM, above the guest address.
pub const MOCK_BASE: u64 = 0x7e00_0000_0000;
/// The memory regions the mock takes with memory slots.
pub const MOCK_MEM_SLOTS: u64 = 3;

/// A vhost-user backend in this process that writes what it is told into a journal
/// the test reads (with the events the link raises, in the order they happen).
pub struct MockBackend {
    journal: Journal,
    protocol: VhostUserProtocolFeatures,
    /// POSTCOPY_LISTEN fails (a daemon that cannot register its mapping).
    refuse_listen: bool,
    /// GET_CONFIG fails.
    refuse_config: bool,
    /// Its end of the channel to the frontend, kept open while it serves.
    channel: Option<Backend>,
}

impl MockBackend {
    fn note(&self, what: impl Into<String>) {
        self.journal.lock().unwrap().push(what.into());
    }
}

fn refused<T>() -> Answer<T> {
    Err(BackendError::InvalidOperation("not in this mock"))
}

impl VhostUserBackendReqHandlerMut for MockBackend {
    fn set_owner(&mut self) -> Answer<()> {
        Ok(())
    }
    fn reset_owner(&mut self) -> Answer<()> {
        Ok(())
    }
    fn reset_device(&mut self) -> Answer<()> {
        Ok(())
    }
    fn get_features(&mut self) -> Answer<u64> {
        Ok(VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() | 1 << 32)
    }
    fn set_features(&mut self, _features: u64) -> Answer<()> {
        Ok(())
    }
    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        _files: Vec<File>,
        postcopy_listening: Option<bool>,
    ) -> Answer<Option<Vec<u64>>> {
        if postcopy_listening == Some(true) {
            self.note("SET_MEM_TABLE listening");
            Ok(Some(
                ctx.iter().map(|r| MOCK_BASE + r.guest_phys_addr).collect(),
            ))
        } else {
            self.note("SET_MEM_TABLE");
            if ctx.len() > 1 {
                self.note(format!("SET_MEM_TABLE regions={}", ctx.len()));
            }
            Ok(None)
        }
    }
    fn set_vring_num(&mut self, index: u32, _num: u32) -> Answer<()> {
        self.note(format!("SET_VRING_NUM {index}"));
        Ok(())
    }
    fn set_vring_addr(
        &mut self,
        _index: u32,
        _flags: VhostUserVringAddrFlags,
        _descriptor: u64,
        _used: u64,
        _available: u64,
        _log: u64,
    ) -> Answer<()> {
        Ok(())
    }
    fn set_vring_base(&mut self, _index: u32, _base: u32) -> Answer<()> {
        Ok(())
    }
    fn get_vring_base(&mut self, index: u32) -> Answer<VhostUserVringState> {
        Ok(VhostUserVringState::new(index, 0))
    }
    fn set_vring_kick(&mut self, index: u8, _fd: Option<File>) -> Answer<()> {
        self.note(format!("SET_VRING_KICK {index}"));
        Ok(())
    }
    fn set_vring_call(&mut self, _index: u8, _fd: Option<File>) -> Answer<()> {
        Ok(())
    }
    fn set_vring_err(&mut self, _index: u8, _fd: Option<File>) -> Answer<()> {
        Ok(())
    }
    fn get_protocol_features(&mut self) -> Answer<VhostUserProtocolFeatures> {
        Ok(self.protocol)
    }
    fn set_protocol_features(&mut self, _features: u64) -> Answer<()> {
        Ok(())
    }
    fn get_queue_num(&mut self) -> Answer<u64> {
        Ok(1)
    }
    fn set_vring_enable(&mut self, _index: u32, _enable: bool) -> Answer<()> {
        Ok(())
    }
    fn get_config(
        &mut self,
        _offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> Answer<Vec<u8>> {
        if self.refuse_config {
            return refused();
        }
        Ok(vec![0; size as usize])
    }
    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> Answer<()> {
        refused()
    }
    fn set_backend_req_fd(&mut self, backend: Backend) {
        self.channel = Some(backend);
    }
    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> Answer<()> {
        refused()
    }
    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> Answer<File> {
        refused()
    }
    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> Answer<(VhostUserInflight, File)> {
        refused()
    }
    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> Answer<()> {
        refused()
    }
    fn get_max_mem_slots(&mut self) -> Answer<u64> {
        Ok(MOCK_MEM_SLOTS)
    }
    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> Answer<Option<u64>> {
        let (addr, size) = (region.guest_phys_addr, region.memory_size);
        self.note(format!("ADD_MEM_REG {addr:#x}+{size:#x}"));
        Ok(None)
    }
    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> Answer<()> {
        let (addr, size) = (region.guest_phys_addr, region.memory_size);
        self.note(format!("REM_MEM_REG {addr:#x}+{size:#x}"));
        Ok(())
    }
    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> Answer<Option<File>> {
        refused()
    }
    fn check_device_state(&mut self) -> Answer<()> {
        refused()
    }
    fn get_shmem_config(&mut self) -> Answer<VhostUserShMemConfig> {
        refused()
    }
    fn postcopy_advice(&mut self) -> Answer<File> {
        self.note("POSTCOPY_ADVISE");
        // Stands in for the backend's userfaultfd: the link only hands it on.
        File::open("/dev/null").map_err(BackendError::ReqHandlerError)
    }
    fn postcopy_listen(&mut self) -> Answer<()> {
        self.note("POSTCOPY_LISTEN");
        if self.refuse_listen {
            return refused();
        }
        Ok(())
    }
    fn postcopy_end(&mut self) -> Answer<()> {
        self.note("POSTCOPY_END");
        Ok(())
    }
    fn postcopy_ack_mem_regions(&mut self) -> Answer<()> {
        self.note("ack");
        Ok(())
    }
    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> Answer<()> {
        refused()
    }
}

/// A connection to a new mock backend, served by a thread of its own. It offers
/// CONFIG besides `protocol`, for `Link::sync_backend`, and REPLY_ACK (the vhost crate
/// always does).
pub fn mock(journal: &Journal, protocol: VhostUserProtocolFeatures) -> UnixStream {
    mock_watched(journal, protocol).0
}

/// `mock`, and what says when the backend's connection ended (the frontend hung up).
pub fn mock_watched(
    journal: &Journal,
    protocol: VhostUserProtocolFeatures,
) -> (UnixStream, Receiver<()>) {
    serve(MockBackend {
        journal: journal.clone(),
        protocol: protocol | VhostUserProtocolFeatures::CONFIG,
        refuse_listen: false,
        refuse_config: false,
        channel: None,
    })
}

/// A mock backend offering postcopy whose POSTCOPY_LISTEN fails.
pub fn mock_refusing_listen(journal: &Journal) -> UnixStream {
    serve(MockBackend {
        journal: journal.clone(),
        protocol: VhostUserProtocolFeatures::PAGEFAULT | VhostUserProtocolFeatures::CONFIG,
        refuse_listen: true,
        refuse_config: false,
        channel: None,
    })
    .0
}

/// A mock backend whose GET_CONFIG fails, and what says when its connection ended.
pub fn mock_refusing_config(journal: &Journal) -> (UnixStream, Receiver<()>) {
    serve(MockBackend {
        journal: journal.clone(),
        protocol: VhostUserProtocolFeatures::CONFIG,
        refuse_listen: false,
        refuse_config: true,
        channel: None,
    })
}

fn serve(backend: MockBackend) -> (UnixStream, Receiver<()>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut handler = BackendReqHandler::from_stream(theirs, Arc::new(StdMutex::new(backend)));
    let (ended, watch) = mpsc::channel();
    std::thread::spawn(move || {
        while handler.handle_request().is_ok() {}
        let _ = ended.send(());
    });
    (ours, watch)
}

/// The link raises its events into the same journal.
pub fn events(journal: &Journal) -> PostcopyEvents {
    let journal = journal.clone();
    Arc::new(move |event| journal.lock().unwrap().push(format!("{event:?}")))
}
