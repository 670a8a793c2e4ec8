//! Objects clients create with object-add (QEMU's user-creatable QOM objects, the
//! `/objects` container): memory backends, which memory hotplug maps into the guest,
//! iothreads, which devices are placed on, and secrets (held: nothing takes one yet). The gateway holds them (a memory backend's
//! memory is an fd the gateway opened); what uses one takes a reference, and object-del
//! refuses while any is held, as QEMU's "in use". An iothread has a host thread behind
//! it, started with it and stopped with it by its `IoThreadHost` (the block layer's
//! daemons, block/iothreads.rs).

pub mod iothread;
pub mod memory_backend;
pub mod secret;

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use iothread::IoThread;
use memory_backend::{MemoryBackend, MemoryBackendSpec};
use secret::Secret;

/// An object to create (object-add's arguments, read by qmp/object_add.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectSpec {
    IoThread(IoThread),
    MemoryBackend(MemoryBackendSpec),
    /// Loaded already (its file read).
    Secret(Secret),
}

impl ObjectSpec {
    pub fn id(&self) -> &str {
        match self {
            ObjectSpec::IoThread(t) => &t.id,
            ObjectSpec::MemoryBackend(m) => &m.id,
            ObjectSpec::Secret(s) => &s.id,
        }
    }
}

/// QEMU 7.2's ObjectType values, in its order: a type outside them is "not accepted";
/// one of them that Flotilla does not create is refused by name.
pub const QEMU_OBJECT_TYPES: &[&str] = &[
    "authz-list",
    "authz-listfile",
    "authz-pam",
    "authz-simple",
    "can-bus",
    "can-host-socketcan",
    "colo-compare",
    "cryptodev-backend",
    "cryptodev-backend-builtin",
    "cryptodev-backend-lkcf",
    "cryptodev-vhost-user",
    "dbus-vmstate",
    "filter-buffer",
    "filter-dump",
    "filter-mirror",
    "filter-redirector",
    "filter-replay",
    "filter-rewriter",
    "input-barrier",
    "input-linux",
    "iothread",
    "main-loop",
    "memory-backend-epc",
    "memory-backend-file",
    "memory-backend-memfd",
    "memory-backend-ram",
    "pef-guest",
    "pr-manager-helper",
    "qtest",
    "rng-builtin",
    "rng-egd",
    "rng-random",
    "secret",
    "secret_keyring",
    "sev-guest",
    "thread-context",
    "s390-pv-guest",
    "throttle-group",
    "tls-creds-anon",
    "tls-creds-psk",
    "tls-creds-x509",
    "tls-cipher-suites",
    "x-remote-object",
    "x-vfio-user-server",
];

/// Most objects alive at once: each memory backend holds an fd and every object a place
/// in the registry, and clients must not be able to make the gateway hold without end.
pub const MAX_OBJECTS: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObjectError {
    /// QEMU's words: the id is a property of the container.
    #[error("attempt to add duplicate property '{0}' to object (type 'container')")]
    Duplicate(String),
    #[error("object '{0}' not found")]
    NotFound(String),
    #[error("object '{0}' is in use, can not be deleted")]
    InUse(String),
    #[error("too many objects ({MAX_OBJECTS}): delete some with object-del first")]
    TooMany,
    /// A creation refused with QEMU's message (the spec's checks, or the backing store).
    #[error("{0}")]
    Refused(String),
}

/// One object and how many users hold it.
pub enum Object {
    IoThread(IoThread),
    MemoryBackend(MemoryBackend),
    Secret(Secret),
}

struct Entry {
    object: Object,
    users: u32,
    /// Creation order: queries list the newest first, as QEMU's do.
    serial: u64,
}

/// What starts and stops the host thread behind each iothread object.
pub trait IoThreadHost: Send + Sync {
    /// A thread for new iothread `id`; the error says why there is none.
    fn start(&self, id: &str) -> Result<(), String>;
    /// Iothread `id` is deleted: its thread goes.
    fn stop(&self, id: &str);
}

/// The `/objects` container.
#[derive(Default)]
pub struct Objects {
    inner: Mutex<Registry>,
    /// None only where no iothread is ever served (the startup checks, unit tests).
    threads: Option<Arc<dyn IoThreadHost>>,
}

#[derive(Default)]
struct Registry {
    entries: BTreeMap<String, Entry>,
    next_serial: u64,
}

impl Objects {
    /// The container whose iothreads' threads `threads` starts and stops.
    pub fn new(threads: Arc<dyn IoThreadHost>) -> Objects {
        Objects {
            inner: Mutex::default(),
            threads: Some(threads),
        }
    }

    /// object-add: creates the object `spec` describes (a memory backend's store is
    /// opened here, an iothread's thread started) under its id.
    pub fn add(&self, spec: ObjectSpec) -> Result<(), ObjectError> {
        let mut r = self.inner.lock();
        let id = spec.id().to_string();
        if r.entries.contains_key(&id) {
            return Err(ObjectError::Duplicate(id));
        }
        if r.entries.len() >= MAX_OBJECTS {
            return Err(ObjectError::TooMany);
        }
        let object = match spec {
            ObjectSpec::IoThread(t) => {
                if let Some(threads) = &self.threads {
                    threads.start(&t.id).map_err(ObjectError::Refused)?;
                }
                Object::IoThread(t)
            }
            ObjectSpec::MemoryBackend(m) => {
                Object::MemoryBackend(MemoryBackend::create(m).map_err(ObjectError::Refused)?)
            }
            ObjectSpec::Secret(s) => Object::Secret(s),
        };
        let serial = r.next_serial;
        r.next_serial += 1;
        r.entries.insert(
            id,
            Entry {
                object,
                users: 0,
                serial,
            },
        );
        Ok(())
    }

    /// object-del: removes object `id` unless something uses it.
    pub fn del(&self, id: &str) -> Result<(), ObjectError> {
        let mut r = self.inner.lock();
        match r.entries.get(id) {
            None => Err(ObjectError::NotFound(id.to_string())),
            Some(e) if e.users > 0 => Err(ObjectError::InUse(id.to_string())),
            Some(_) => {
                let gone = r.entries.remove(id);
                // Under the lock: the id may be taken again as soon as it is free.
                if let (
                    Some(Entry {
                        object: Object::IoThread(_),
                        ..
                    }),
                    Some(threads),
                ) = (gone, &self.threads)
                {
                    threads.stop(id);
                }
                Ok(())
            }
        }
    }

    /// Takes a reference to object `id` for a user (a device placed on an iothread, a
    /// DIMM on a memory backend); `what` answers whether it is the kind the user needs.
    pub fn hold(&self, id: &str, what: impl Fn(&Object) -> bool) -> Result<(), ObjectError> {
        let mut r = self.inner.lock();
        match r.entries.get_mut(id) {
            Some(e) if what(&e.object) => {
                e.users += 1;
                Ok(())
            }
            _ => Err(ObjectError::NotFound(id.to_string())),
        }
    }

    /// Gives back a reference `hold` took.
    pub fn release(&self, id: &str) {
        if let Some(e) = self.inner.lock().entries.get_mut(id) {
            e.users = e.users.saturating_sub(1);
        }
    }

    /// Whether object `id` exists.
    pub fn exists(&self, id: &str) -> bool {
        self.inner.lock().entries.contains_key(id)
    }

    /// Whether object `id` exists and is used by something.
    pub fn in_use(&self, id: &str) -> bool {
        self.inner
            .lock()
            .entries
            .get(id)
            .is_some_and(|e| e.users > 0)
    }

    /// `f` over each object, newest first (QEMU's queries list them so).
    pub fn each<T>(&self, mut f: impl FnMut(&str, &Object) -> Option<T>) -> Vec<T> {
        let r = self.inner.lock();
        let mut all: Vec<(&String, &Entry)> = r.entries.iter().collect();
        all.sort_by_key(|(_, e)| std::cmp::Reverse(e.serial));
        all.into_iter()
            .filter_map(|(id, e)| f(id, &e.object))
            .collect()
    }

    /// `f` on memory backend `id`, if there is one by that id.
    pub fn with_memory_backend<T>(
        &self,
        id: &str,
        f: impl FnOnce(&MemoryBackend) -> T,
    ) -> Option<T> {
        match self.inner.lock().entries.get(id).map(|e| &e.object) {
            Some(Object::MemoryBackend(m)) => Some(f(m)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memory_backend::BackendKind;

    fn thread(id: &str) -> ObjectSpec {
        ObjectSpec::IoThread(IoThread::new(id))
    }

    fn memfd(id: &str, size: u64) -> ObjectSpec {
        ObjectSpec::MemoryBackend(MemoryBackendSpec::new(id, BackendKind::Memfd, size))
    }

    #[test]
    fn ids_are_unique_and_deleting_frees_them() {
        let o = Objects::default();
        o.add(thread("io0")).unwrap();
        assert_eq!(
            o.add(memfd("io0", 4096)),
            Err(ObjectError::Duplicate("io0".into()))
        );
        o.del("io0").unwrap();
        assert_eq!(o.del("io0"), Err(ObjectError::NotFound("io0".into())));
        o.add(memfd("io0", 4096)).unwrap();
    }

    #[test]
    fn a_held_object_cannot_be_deleted_until_released() {
        let o = Objects::default();
        o.add(memfd("m0", 1 << 20)).unwrap();
        assert_eq!(
            o.hold("m0", |o| matches!(o, Object::IoThread(_))),
            Err(ObjectError::NotFound("m0".into()))
        );
        o.hold("m0", |o| matches!(o, Object::MemoryBackend(_)))
            .unwrap();
        assert!(o.in_use("m0"));
        assert_eq!(o.del("m0"), Err(ObjectError::InUse("m0".into())));
        o.release("m0");
        o.del("m0").unwrap();
    }

    #[test]
    fn the_registry_is_bounded() {
        let o = Objects::default();
        for i in 0..MAX_OBJECTS {
            o.add(thread(&format!("t{i}"))).unwrap();
        }
        assert_eq!(o.add(thread("one-more")), Err(ObjectError::TooMany));
        o.del("t0").unwrap();
        o.add(thread("one-more")).unwrap();
    }

    /// Notes what it was asked; refuses ids starting with "x".
    #[derive(Default)]
    struct Host(Mutex<Vec<String>>);

    impl IoThreadHost for Host {
        fn start(&self, id: &str) -> Result<(), String> {
            if id.starts_with('x') {
                return Err(format!("no thread for {id}"));
            }
            self.0.lock().push(format!("start {id}"));
            Ok(())
        }

        fn stop(&self, id: &str) {
            self.0.lock().push(format!("stop {id}"));
        }
    }

    #[test]
    fn an_iothreads_thread_comes_and_goes_with_it() {
        let host = Arc::new(Host::default());
        let o = Objects::new(host.clone());
        o.add(thread("io0")).unwrap();
        o.add(memfd("m0", 4096)).unwrap();
        assert_eq!(
            o.add(thread("xio")),
            Err(ObjectError::Refused("no thread for xio".into()))
        );
        assert!(!o.exists("xio"), "a refused iothread is not made");
        assert_eq!(
            o.add(thread("io0")),
            Err(ObjectError::Duplicate("io0".into()))
        );
        o.hold("io0", |o| matches!(o, Object::IoThread(_))).unwrap();
        assert_eq!(o.del("io0"), Err(ObjectError::InUse("io0".into())));
        o.release("io0");
        o.del("io0").unwrap();
        o.del("m0").unwrap();
        assert_eq!(*host.0.lock(), ["start io0", "stop io0"]);
    }

    #[test]
    fn queries_list_the_newest_first() {
        let o = Objects::default();
        for id in ["b", "a", "c"] {
            o.add(thread(id)).unwrap();
        }
        let ids = o.each(|id, _| Some(id.to_string()));
        assert_eq!(ids, ["c", "a", "b"]);
    }
}
