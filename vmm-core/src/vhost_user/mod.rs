//! vhost-user frontends: vmm-core's side of the devices that device daemons serve. The
//! daemon gets guest memory (the memfd), the queue layout and the kick/call eventfds;
//! from then on the data path is guest <-> daemon only.

pub mod blk;
