//! Enumeration: bus 0 and the buses behind its bridges, each function's identity (vendor,
//! device, class, header type, subsystem).

use super::config::{
    read32, read8, Address, REG_CLASS, REG_HEADER_TYPE, REG_SECONDARY_BUS, REG_SUBSYSTEM,
};
use crate::console;

pub const MAX_FUNCTIONS: usize = 64;
const HEADER_MULTI_FUNCTION: u8 = 0x80;
const HEADER_BRIDGE: u8 = 0x01;

/// One function found by the scan.
#[derive(Clone, Copy, Default)]
pub struct Function {
    pub addr: Address,
    pub vendor: u16,
    pub device: u16,
    /// Class code, subclass, programming interface (bits 23:0 of register 0x08 >> 8).
    pub class: u32,
    pub header_type: u8,
    /// Subsystem ID (type-0 headers; 0 for bridges).
    pub subsystem: u16,
}

/// The functions found by [`scan`].
pub struct Functions {
    list: [Function; MAX_FUNCTIONS],
    count: usize,
}

impl Functions {
    pub fn iter(&self) -> impl Iterator<Item = &Function> {
        self.list[..self.count].iter()
    }
}

/// The function at `at`, if one answers there.
pub fn probe(at: Address) -> Option<Function> {
    let id = read32(at, 0);
    let vendor = id as u16;
    if vendor == 0xffff || vendor == 0 {
        return None;
    }
    let class = read32(at, REG_CLASS);
    let header = read32(at, REG_HEADER_TYPE & !3);
    let header_type = (header >> 16) as u8;
    let subsystem = if header_type & 0x7f == 0 {
        read32(at, REG_SUBSYSTEM)
    } else {
        0
    };
    Some(Function {
        addr: at,
        vendor,
        device: (id >> 16) as u16,
        class: class >> 8,
        header_type,
        subsystem: (subsystem >> 16) as u16,
    })
}

/// Enumerates bus 0 and the buses behind its bridges (breadth first, each bus once).
pub fn scan() -> Functions {
    let mut found = Functions {
        list: [Function::default(); MAX_FUNCTIONS],
        count: 0,
    };
    let mut buses = [0u8; 32];
    let mut bus_count = 1;
    let mut next_bus = 0;
    let mut seen = [false; 256];
    seen[0] = true;
    while next_bus < bus_count {
        let bus = buses[next_bus];
        next_bus += 1;
        for dev in 0..32 {
            for func in 0..8 {
                let at = Address { bus, dev, func };
                let Some(function) = probe(at) else {
                    if func == 0 {
                        break;
                    }
                    continue;
                };
                if found.count == MAX_FUNCTIONS {
                    console::error("pci: more than ")
                        .dec(MAX_FUNCTIONS as u64)
                        .s(" functions, ignoring the rest")
                        .end();
                    return found;
                }
                found.list[found.count] = function;
                found.count += 1;
                if function.header_type & 0x7f == HEADER_BRIDGE {
                    let secondary = read8(at, REG_SECONDARY_BUS);
                    if secondary != 0 && !seen[usize::from(secondary)] && bus_count < buses.len() {
                        seen[usize::from(secondary)] = true;
                        buses[bus_count] = secondary;
                        bus_count += 1;
                    }
                }
                if func == 0 && function.header_type & HEADER_MULTI_FUNCTION == 0 {
                    break;
                }
            }
        }
    }
    found
}
