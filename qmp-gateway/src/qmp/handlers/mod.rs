//! The commands' handlers, by area; each takes its command's typed arguments.

pub mod absent;
pub mod balloon;
pub mod bitmaps;
pub mod block;
pub mod chardev;
pub mod command_line;
pub mod cpu_models;
pub mod cpus;
pub mod devices;
pub mod dump;
pub mod fds;
pub mod hmp;
pub mod input;
pub mod jobs;
pub mod machine;
pub mod machine_types;
pub mod memory;
pub mod migrate;
pub mod migration;
pub mod net;
pub mod objects;
pub mod pci;
pub mod qom;
pub mod qom_tree;
pub mod snapshot;
pub mod trace;
