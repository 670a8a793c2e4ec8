//! ipc: the typed messages Flotilla's processes exchange (bincode frames on Unix
//! sockets, file descriptors passed with SCM_RIGHTS). Every message type is defined here,
//! once. The protocol arrives with the QMP gateway (issue 3); nothing uses it yet.
