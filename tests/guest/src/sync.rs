//! The two synchronisation primitives this kernel needs: a write-once-then-shared cell for
//! boot-time data and a spin lock for the console. No allocator, no scheduler.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// A static whose contents are written by the BSP during single-threaded boot (or only ever
/// by one CPU) and read afterwards. Callers uphold that through the `unsafe` accessors.
#[repr(transparent)]
pub struct Global<T>(UnsafeCell<T>);

// SAFETY: every access goes through `unsafe` accessors whose callers guarantee there is no
// concurrent writer (see the type's documentation).
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    pub const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    pub fn as_ptr(&self) -> *mut T {
        self.0.get()
    }

    /// # Safety
    /// No other reference to the contents may be live.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get_mut(&self) -> &mut T {
        // SAFETY: the caller guarantees no other reference is live (this function's contract),
        // so this one is unique.
        unsafe { &mut *self.0.get() }
    }

    /// # Safety
    /// No mutable reference to the contents may be live.
    pub unsafe fn get(&self) -> &T {
        // SAFETY: the caller guarantees no mutable reference is live (this function's
        // contract).
        unsafe { &*self.0.get() }
    }
}

/// Test-and-set lock (`xchg`; `pause` while waiting, which KVM's emulator handles).
pub struct SpinLock(AtomicBool);

impl SpinLock {
    pub const fn new() -> Self {
        Self(AtomicBool::new(false))
    }

    pub fn lock(&self) {
        while self.0.swap(true, Ordering::Acquire) {
            while self.0.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }

    /// Tries for a bounded number of spins; panic and exception paths use this so that a CPU
    /// that faulted while holding the lock still gets its last line out.
    pub fn lock_bounded(&self, spins: u32) -> bool {
        for _ in 0..spins {
            if !self.0.swap(true, Ordering::Acquire) {
                return true;
            }
        }
        false
    }

    pub fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}
