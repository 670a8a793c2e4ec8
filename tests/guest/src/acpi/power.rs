//! ACPI fixed-hardware power management: switching the platform into ACPI mode (SMI_CMD),
//! soft-off through S5, reset, routing the SCI, and the fixed power-button event it delivers
//! (general-purpose events share the SCI: gpe.rs).
//! Everything is driven by the FADT/DSDT values that acpi/mod.rs found; no VMM's values are assumed.

use crate::acpi::fadt::Fadt;
use crate::acpi::gas::Gas;
use crate::acpi::gpe;
use crate::acpi::Acpi;
use crate::arch::ioapic::{self, Mode};
use crate::arch::vectors::SCI_VECTOR;
use crate::arch::{apic, cpu, pit};
use crate::console;
use crate::sync::Global;
use core::sync::atomic::{AtomicBool, Ordering};

const SCI_EN: u64 = 1 << 0;
const SLP_TYP_SHIFT: u32 = 10;
const SLP_TYP_MASK: u64 = 7 << SLP_TYP_SHIFT;
const SLP_EN: u64 = 1 << 13;
/// Hardware-reduced ACPI: SLEEP_CONTROL_REG layout.
const HWR_SLP_TYP_SHIFT: u32 = 2;
const HWR_SLP_EN: u64 = 1 << 5;
/// PWRBTN_STS / PWRBTN_EN in the PM1 status / enable registers.
const PWRBTN: u64 = 1 << 8;
const ACPI_ENABLE_TIMEOUT_US: u64 = 1_000_000;
const POWEROFF_WAIT_US: u64 = 1_000_000;
const RESET_WAIT_US: u64 = 500_000;

/// Set by the SCI handler when the fixed power button was pressed.
pub static POWER_BUTTON: AtomicBool = AtomicBool::new(false);

/// PM1a/PM1b status registers for the SCI handler; written before the SCI is routed.
static SCI_STATUS: Global<[Option<Gas>; 2]> = Global::new([None, None]);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum AcpiMode {
    NoFadt,
    HardwareReduced,
    /// SCI_EN was already set (or there is no SMI_CMD: ACPI-only platform).
    AlreadyEnabled,
    /// We wrote ACPI_ENABLE to SMI_CMD and SCI_EN came up.
    EnabledBySmi,
    Failed,
}

impl AcpiMode {
    pub fn name(self) -> &'static str {
        match self {
            AcpiMode::NoFadt => "no-fadt",
            AcpiMode::HardwareReduced => "hw-reduced",
            AcpiMode::AlreadyEnabled => "already-enabled",
            AcpiMode::EnabledBySmi => "enabled-by-smi",
            AcpiMode::Failed => "failed",
        }
    }
}

fn sci_enabled(fadt: &Fadt) -> bool {
    fadt.pm1a_cnt
        .map(Fadt::pm1_control)
        .and_then(|reg| reg.read().ok())
        .is_some_and(|value| value & SCI_EN != 0)
}

/// Hands the fixed hardware from SMM to us if the FADT says that is needed.
pub fn enable_acpi_mode(acpi: &Acpi) -> AcpiMode {
    let Some(fadt) = acpi.fadt else {
        return AcpiMode::NoFadt;
    };
    if fadt.hw_reduced() {
        return AcpiMode::HardwareReduced;
    }
    if fadt.smi_cmd == 0 || fadt.acpi_enable == 0 || sci_enabled(&fadt) {
        return AcpiMode::AlreadyEnabled;
    }
    let Ok(port) = u16::try_from(fadt.smi_cmd) else {
        console::error("acpi: SMI_CMD=")
            .hex(u64::from(fadt.smi_cmd))
            .s(" is not an I/O port")
            .end();
        return AcpiMode::Failed;
    };
    // SAFETY: SMI_CMD is the port the FADT designates for this handshake.
    unsafe { cpu::outb(port, fadt.acpi_enable) };
    if pit::wait_until(ACPI_ENABLE_TIMEOUT_US, || sci_enabled(&fadt)) {
        AcpiMode::EnabledBySmi
    } else {
        console::error("acpi: SCI_EN did not come up after ACPI_ENABLE").end();
        AcpiMode::Failed
    }
}

fn write_reg(what: &str, reg: Gas, value: u64) -> bool {
    match reg.write(value) {
        Ok(()) => true,
        Err(err) => {
            console::error(what).s(": ").s(err.describe()).end();
            false
        }
    }
}

/// Soft-off (S5). Prints `GUEST POWEROFF` first; if the machine is still running after a
/// bounded wait, prints `GUEST ERROR poweroff failed` and halts.
pub fn poweroff(acpi: &Acpi) -> ! {
    console::line("GUEST POWEROFF").end();
    cpu::disable_interrupts();
    if request_s5(acpi) {
        pit::delay_us(POWEROFF_WAIT_US);
    }
    console::error("poweroff failed").end();
    cpu::halt_forever()
}

fn request_s5(acpi: &Acpi) -> bool {
    let Some(fadt) = acpi.fadt else {
        console::error("poweroff: no FADT").end();
        return false;
    };
    let Some(s5) = acpi.s5 else {
        console::error("poweroff: no \\_S5 sleep type").end();
        return false;
    };
    if fadt.hw_reduced() {
        let Some(reg) = fadt.sleep_control else {
            console::error("poweroff: hardware-reduced FADT without SLEEP_CONTROL_REG").end();
            return false;
        };
        let value = ((u64::from(s5.a) << HWR_SLP_TYP_SHIFT) & 0x1c) | HWR_SLP_EN;
        return write_reg("poweroff: SLEEP_CONTROL_REG", reg, value);
    }
    let Some(pm1a) = fadt.pm1a_cnt.map(Fadt::pm1_control) else {
        console::error("poweroff: no PM1a control block").end();
        return false;
    };
    let pm1b = fadt.pm1b_cnt.map(Fadt::pm1_control);
    // As Linux does: SLP_TYP first, then SLP_TYP | SLP_EN, each to PM1a and PM1b.
    let blocks = [(Some(pm1a), s5.a), (pm1b, s5.b)];
    let mut values = [0u64; 2];
    for (i, (reg, typ)) in blocks.iter().enumerate() {
        if let Some(reg) = reg {
            let current = reg.read().unwrap_or(0);
            values[i] = (current & !(SLP_TYP_MASK | SLP_EN)) | (u64::from(*typ) << SLP_TYP_SHIFT);
            if !write_reg("poweroff: PM1 control", *reg, values[i]) {
                return false;
            }
        }
    }
    for (i, (reg, _)) in blocks.iter().enumerate() {
        if let Some(reg) = reg {
            if !write_reg("poweroff: PM1 control", *reg, values[i] | SLP_EN) {
                return false;
            }
        }
    }
    true
}

/// Prints `GUEST REBOOT` and resets: FADT reset register (if RESET_REG_SUP), then port 0xcf9,
/// then the i8042; `GUEST ERROR reboot failed` if the machine survives all three.
pub fn reboot(acpi: &Acpi) -> ! {
    console::line("GUEST REBOOT").end();
    cpu::disable_interrupts();
    if let Some(fadt) = acpi.fadt.filter(Fadt::reset_supported) {
        match fadt.reset_reg {
            Some(reg) => {
                if write_reg("reboot: RESET_REG", reg, u64::from(fadt.reset_value)) {
                    pit::delay_us(RESET_WAIT_US);
                }
            }
            None => console::error("reboot: RESET_REG_SUP without a RESET_REG").end(),
        }
    }
    // SAFETY: 0xcf9 (PCI reset control) and 0x64 (i8042) are the architectural reset ports;
    // writing them where nothing decodes them has no effect.
    unsafe {
        cpu::outb(0xcf9, 0x02);
        pit::delay_us(50);
        cpu::outb(0xcf9, 0x06);
        pit::delay_us(RESET_WAIT_US);
        // i8042: wait (bounded) for an empty input buffer, then pulse the reset line.
        pit::wait_until(10_000, || cpu::inb(0x64) & 0x02 == 0);
        cpu::outb(0x64, 0xfe);
    }
    pit::delay_us(RESET_WAIT_US);
    console::error("reboot failed").end();
    cpu::halt_forever()
}

/// Trigger mode and polarity from MPS INTI flags, with the SCI's defaults (level, active low)
/// where the flags say "conforms to the bus".
fn sci_mode(flags: u16) -> Mode {
    let active_low = !matches!(flags & 0b11, 0b01);
    let level = !matches!((flags >> 2) & 0b11, 0b01);
    Mode { level, active_low }
}

/// Enables the fixed power-button event and routes the SCI to the BSP. Returns false (after an
/// error line where something is wrong) when there is no usable fixed power button.
pub fn setup_power_button(acpi: &Acpi) -> bool {
    let Some(fadt) = acpi.fadt else {
        return false;
    };
    if !fadt.fixed_power_button() {
        return false;
    }
    if fadt.pm1_evt_len < 2 {
        // Without a length the enable register cannot be located (it sits at len / 2).
        console::error("acpi: PM1_EVT_LEN=")
            .dec(u64::from(fadt.pm1_evt_len))
            .s(" leaves no room for PM1 enable")
            .end();
        return false;
    }
    let blocks = [fadt.pm1a_evt, fadt.pm1b_evt];
    let status = blocks.map(|b| b.map(|b| fadt.pm1_status(b)));
    // SAFETY: the SCI is not routed yet, so its handler cannot be reading this.
    unsafe { *SCI_STATUS.get_mut() = status };
    for block in blocks.into_iter().flatten() {
        // Clear a stale press (write 1 to clear), then enable only the power-button event.
        if !write_reg("pm1 status", fadt.pm1_status(block), PWRBTN)
            || !write_reg("pm1 enable", fadt.pm1_enable(block), PWRBTN)
        {
            return false;
        }
    }
    route_sci(acpi)
}

/// Routes the SCI (FADT SCI_INT, through the MADT's interrupt source override if there is one)
/// to the BSP. False after an error line if it cannot be.
pub fn route_sci(acpi: &Acpi) -> bool {
    let Some(fadt) = acpi.fadt else {
        console::error("acpi: no FADT, so no SCI").end();
        return false;
    };
    let Ok(irq) = u8::try_from(fadt.sci_int) else {
        console::error("acpi: SCI_INT=")
            .dec(u64::from(fadt.sci_int))
            .s(" is not an ISA IRQ")
            .end();
        return false;
    };
    let (gsi, mode) = match acpi.madt.override_for_irq(irq) {
        Some(o) => (o.gsi, sci_mode(o.flags)),
        None => (u32::from(irq), sci_mode(0)),
    };
    ioapic::route(&acpi.madt, gsi, SCI_VECTOR, mode, apic::id())
}

/// SCI handler: acknowledges every PM1 status bit it sees (write 1 to clear) before the EOI,
/// since the SCI is level-triggered, and flags a power-button press for the BSP's idle loop;
/// then does the same for the enabled general-purpose events (gpe.rs).
pub fn sci_interrupt() {
    // SAFETY: written once before the SCI was routed; read-only since.
    let status = unsafe { SCI_STATUS.get() };
    for reg in status.iter().flatten() {
        if let Ok(value) = reg.read() {
            if value != 0 {
                let _ = reg.write(value);
            }
            if value & PWRBTN != 0 {
                POWER_BUTTON.store(true, Ordering::Release);
            }
        }
    }
    gpe::sci_event();
    apic::eoi();
}
