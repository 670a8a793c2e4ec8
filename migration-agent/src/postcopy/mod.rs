//! Postcopy: the VM moves before all of its memory did. At the switch the source names
//! the pages the destination must not keep (DISCARD) and sends the device state; the
//! destination runs the VM with those pages missing, every process that maps guest RAM
//! there having registered it with a userfaultfd (`ipc::userfault`), so a touch of a
//! missing page waits while the destination asks the source for it.
//!
//! - `pages`: a set of page numbers;
//! - `source`: the source's sending of the remaining pages and reading of requests;
//! - `destination`: the placing of pages and the reading of faults.

pub mod destination;
pub mod pages;
pub mod source;
