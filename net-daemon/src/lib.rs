//! net-daemon: the vhost-user-net backend for one NIC. It owns the virtio-net device
//! (served over vhost-user by the vhost-backend framework), the NIC's host side (tap
//! queues or a datagram socket, opened by the gateway and handed in as fds), the receive
//! filter the guest programs through the control queue, and the NIC's counters; guest
//! memory reaches it as the VM's memfd over vhost-user, kicks and completions as
//! eventfds, never through vmm-core.

pub mod control;
pub mod device;
pub mod filter;
pub mod frames;
pub mod port;
pub mod seccomp;
