//! qmp-gateway: Flotilla's front door and supervisor. It opens every path the VM needs,
//! launches vmm-core and the block and net daemons and passes them the fds, speaks QMP
//! to any number of clients on Unix and TCP sockets, routes each command to the process
//! that serves it, fans events out, holds the fds clients pass in, and stops everything
//! in order when the VM ends.
//!
//! `qmp` speaks QMP (and maps the layers' typed errors to QMP's); `block` and `net` are
//! the layers whose devices each have a daemon; `migration` holds the migration's
//! settings; `children` starts, links to and supervises the child processes; `events`
//! is the one event table and its fan-out; `gateway` the shared state; `launch` opens
//! the VM's files; `fdstore` keeps the fds clients pass in; `sockets` binds the private
//! sockets; `poll_fd` waits on one descriptor; `ids` is QEMU's rule for the names
//! clients give; `upgrade` replaces vmm-core under a running VM; `devices` places the
//! guest's PCI devices (device_add, device_del);
//! `balloon` is the balloon's options and QEMU's rules for its target; `cpus` adds
//! vCPUs (cpu-add, device_add of a CPU); `objects` holds object-add's iothreads and
//! memory backends; `trace` is `--trace` and the trace event states' rules;
//! `cli_options` is the table of the command line's keys (query-command-line-options);
//! `machine_none` is `--machine` and QEMU's none machine (no VM); `daemonize` and
//! `pidfile` are QEMU's -daemonize and -pidfile; `qemu_cli` reads QEMU's whole command
//! line as these options (the flotilla-qemu binary). No file
//! imports one that imports it back (scripts/check-imports).

pub mod balloon;
pub mod block;
pub mod chardev;
pub mod children;
pub mod cli_options;
pub mod cpu_model;
pub mod cpuid_features;
pub mod cpuid_probes;
pub mod cpus;
pub mod daemonize;
pub mod devices;
pub mod dump;
pub mod events;
pub mod fdstore;
pub mod gateway;
pub mod ids;
pub mod keyval;
pub mod launch;
pub mod machine_none;
pub mod migration;
pub mod monitor;
pub mod net;
pub mod objects;
pub mod pidfile;
pub mod poll_fd;
pub mod qemu_cli;
pub mod qmp;
pub mod qom_types;
pub mod sockets;
pub mod startup;
pub mod trace;
pub mod upgrade;
