//! FADT ("FACP") parsing: the fixed hardware registers (PM1 event/control blocks, the GPE0
//! block, reset register, hardware-reduced sleep registers), the SCI, SMI_CMD/ACPI_ENABLE and
//! the DSDT.
//! 64-bit X_ fields win over the legacy 32-bit ones when non-zero; fields beyond the table's
//! length (older revisions) read as zero.

use super::gas::Gas;
use crate::arch::phys::{le_u16, le_u32, le_u64, le_u8};

pub const FLAG_PWR_BUTTON: u32 = 1 << 4;
pub const FLAG_RESET_REG_SUP: u32 = 1 << 10;
pub const FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;

#[derive(Clone, Copy)]
pub struct Fadt {
    pub flags: u32,
    pub sci_int: u16,
    pub smi_cmd: u32,
    pub acpi_enable: u8,
    pub pm1a_evt: Option<Gas>,
    pub pm1b_evt: Option<Gas>,
    pub pm1a_cnt: Option<Gas>,
    pub pm1b_cnt: Option<Gas>,
    /// Length in bytes of each PM1 event block (status half, then enable half).
    pub pm1_evt_len: u8,
    /// General-purpose event block 0 (status half, then enable half).
    pub gpe0: Option<Gas>,
    /// Length in bytes of the GPE0 block (GPE0_BLK_LEN).
    pub gpe0_len: u8,
    pub reset_reg: Option<Gas>,
    pub reset_value: u8,
    /// Hardware-reduced ACPI's sleep control register (S5 is written here).
    pub sleep_control: Option<Gas>,
    /// Physical address of the DSDT (X_DSDT if set, else DSDT); 0 if none.
    pub dsdt: u64,
}

/// The X_ form at `x_offset` if it has an address, else the legacy port at `legacy_offset`.
fn block(table: &[u8], x_offset: usize, legacy_offset: usize, legacy_len: u8) -> Option<Gas> {
    let x = Gas::parse(table, x_offset);
    if x.is_present() {
        return Some(x);
    }
    let port = le_u32(table, legacy_offset);
    (port != 0).then(|| Gas::io(port, legacy_len))
}

fn register(table: &[u8], offset: usize) -> Option<Gas> {
    let gas = Gas::parse(table, offset);
    gas.is_present().then_some(gas)
}

impl Fadt {
    pub fn parse(table: &[u8]) -> Self {
        let pm1_evt_len_field = le_u8(table, 88);
        let pm1_cnt_len = le_u8(table, 89);
        let pm1a_evt = block(table, 148, 56, pm1_evt_len_field);
        // Prefer the FADT's byte length; an X_ block's bit width stands in when it is zero.
        let pm1_evt_len = match (pm1_evt_len_field, pm1a_evt) {
            (0, Some(gas)) => gas.bit_width / 8,
            (len, _) => len,
        };
        let gpe0_len_field = le_u8(table, 92);
        let gpe0 = block(table, 220, 80, gpe0_len_field);
        // As for PM1: an X_ block's bit width stands in for a zero GPE0_BLK_LEN.
        let gpe0_len = match (gpe0_len_field, gpe0) {
            (0, Some(gas)) => gas.bit_width / 8,
            (len, _) => len,
        };
        let x_dsdt = le_u64(table, 140);
        Self {
            flags: le_u32(table, 112),
            sci_int: le_u16(table, 46),
            smi_cmd: le_u32(table, 48),
            acpi_enable: le_u8(table, 52),
            pm1a_evt,
            pm1b_evt: block(table, 160, 60, pm1_evt_len_field),
            pm1a_cnt: block(table, 172, 64, pm1_cnt_len),
            pm1b_cnt: block(table, 184, 68, pm1_cnt_len),
            pm1_evt_len,
            gpe0,
            gpe0_len,
            reset_reg: register(table, 116),
            reset_value: le_u8(table, 128),
            sleep_control: register(table, 244),
            dsdt: if x_dsdt != 0 {
                x_dsdt
            } else {
                u64::from(le_u32(table, 40))
            },
        }
    }

    pub fn hw_reduced(&self) -> bool {
        self.flags & FLAG_HW_REDUCED_ACPI != 0
    }

    pub fn reset_supported(&self) -> bool {
        self.flags & FLAG_RESET_REG_SUP != 0
    }

    /// A fixed-feature power button exists unless the platform is hardware-reduced or the
    /// FADT says the button is a control-method device (PWR_BUTTON flag).
    pub fn fixed_power_button(&self) -> bool {
        !self.hw_reduced() && self.flags & FLAG_PWR_BUTTON == 0 && self.pm1a_evt.is_some()
    }

    /// PM1x status register (first half of the event block) of the given block.
    pub fn pm1_status(&self, block: Gas) -> Gas {
        block.sub_register(0, self.pm1_half_width())
    }

    /// PM1x enable register (second half of the event block).
    pub fn pm1_enable(&self, block: Gas) -> Gas {
        block.sub_register(u64::from(self.pm1_evt_len / 2), self.pm1_half_width())
    }

    fn pm1_half_width(&self) -> u8 {
        match self.pm1_evt_len / 2 {
            1 => 8,
            4 => 32,
            _ => 16,
        }
    }

    /// PM1x control register at its architectural 16-bit width.
    pub fn pm1_control(block: Gas) -> Gas {
        block.sub_register(0, 16)
    }
}
