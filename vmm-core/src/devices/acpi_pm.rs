//! The ACPI fixed-hardware PM block: PM1a status/enable (power button), PM1a control
//! (sleep states: S5 is power-off) and the PM timer, on I/O ports as on ICH9.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::bus::BusDevice;
use super::sci::EventRegisters;
use super::state;
use super::IrqLine;
use crate::boot::acpi::SLP_TYP_S5;
use crate::events::{EventSender, VmEvent};

// Register offsets inside the block (PM1 enable, at 2, is `EventRegisters`' too).
const STS: u64 = 0;
const CNT: u64 = 4;
const TMR: u64 = 8;

pub const PWRBTN: u16 = 1 << 8;
const TMR_STS: u16 = 1 << 0;
const GBL_STS: u16 = 1 << 5;
const SLPBTN: u16 = 1 << 9;
const RTC_STS: u16 = 1 << 10;
const WAK_STS: u16 = 1 << 15;
/// Status bits that raise the SCI when their enable bit is set.
const SCI_EVENTS: u16 = TMR_STS | GBL_STS | PWRBTN | SLPBTN | RTC_STS;
const SCI_EN: u16 = 1 << 0;
const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0x7;
/// Bits of PM1_CNT that hold state (SLP_EN is write-only, SCI_EN fixed at 1).
const CNT_STORED: u16 = 0x1c06;

const PM_TIMER_HZ: u128 = 3_579_545;

pub struct AcpiPm {
    /// PM1a status and enable, and the SCI they hold.
    regs: EventRegisters,
    cnt: u16,
    events: EventSender,
    timer_start: Instant,
}

impl AcpiPm {
    pub fn new(sci: Box<dyn IrqLine>, events: EventSender) -> Self {
        AcpiPm {
            regs: EventRegisters::new(sci),
            cnt: SCI_EN,
            events,
            timer_start: Instant::now(),
        }
    }

    /// A press of the fixed-feature power button (what QMP system_powerdown does).
    pub fn press_power_button(&mut self) {
        self.regs.sts |= PWRBTN;
        self.update_sci();
    }

    fn level(&self) -> bool {
        self.cnt & SCI_EN != 0 && self.regs.sts & self.regs.en & SCI_EVENTS != 0
    }

    fn update_sci(&mut self) {
        self.regs.drive(self.level());
    }

    fn timer(&self) -> u32 {
        let ns = self.timer_start.elapsed().as_nanos();
        (ns * PM_TIMER_HZ / 1_000_000_000) as u32
    }

    fn read_byte(&self, offset: u64) -> u8 {
        match offset {
            0..=3 => self.regs.read_byte(offset - STS),
            4..=5 => (self.cnt >> ((offset - CNT) * 8)) as u8,
            8..=11 => (self.timer() >> ((offset - TMR) * 8)) as u8,
            _ => 0,
        }
    }

    fn write_byte(&mut self, offset: u64, value: u8) {
        let shift = (offset & 1) * 8;
        let bits = u16::from(value) << shift;
        let byte_mask = 0xffu16 << shift;
        match offset {
            0..=3 => self.regs.write_byte(offset - STS, value),
            4..=5 => {
                self.cnt = (self.cnt & !byte_mask) | (bits & CNT_STORED) | SCI_EN;
                if bits & SLP_EN != 0 {
                    self.sleep((self.cnt >> SLP_TYP_SHIFT) & SLP_TYP_MASK);
                }
            }
            _ => {}
        }
    }

    fn sleep(&mut self, slp_typ: u16) {
        if slp_typ == u16::from(SLP_TYP_S5) {
            self.events.send(VmEvent::PowerOff);
        } else {
            // Only \_S5 is in the DSDT; an OS has no business asking for another state.
            log::warn!("guest requested unsupported sleep type {slp_typ}; ignored");
            self.regs.sts |= WAK_STS;
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.read_byte(offset + i as u64);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            self.write_byte(offset + i as u64, *b);
        }
        self.update_sci();
    }

    fn reset(&mut self) {
        self.regs.sts = 0;
        self.regs.en = 0;
        self.cnt = SCI_EN;
        self.update_sci();
    }

    fn save_state(&self) -> Option<Vec<u8>> {
        Some(state::encode(&PmState {
            sts: self.regs.sts,
            en: self.regs.en,
            cnt: self.cnt,
            timer_ns: self.timer_start.elapsed().as_nanos() as u64,
        }))
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s: PmState = state::decode("ACPI PM", bytes)?;
        self.regs.sts = s.sts;
        self.regs.en = s.en;
        self.cnt = (s.cnt & CNT_STORED) | SCI_EN;
        // The PM timer goes on from where it was, as if no time passed in between.
        self.timer_start = Instant::now()
            .checked_sub(std::time::Duration::from_nanos(s.timer_ns))
            .unwrap_or_else(Instant::now);
        // The SCI line's level lives in the in-kernel IOAPIC state, restored with it.
        let level = self.level();
        self.regs.restored(level);
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct PmState {
    sts: u16,
    en: u16,
    cnt: u16,
    timer_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    type Line = crate::devices::sci::RecordedLine;

    const EN: u64 = 2;

    fn pm() -> (AcpiPm, Line, std::sync::mpsc::Receiver<VmEvent>) {
        let line = Line::default();
        let (tx, rx) = EventSender::channel();
        (AcpiPm::new(Box::new(line.clone()), tx), line, rx)
    }

    #[test]
    fn power_button_raises_sci_only_when_enabled_and_clears_on_write_one() {
        let (mut pm, line, _rx) = pm();
        pm.press_power_button();
        assert!(line.0.lock().is_empty());
        pm.write(EN, &PWRBTN.to_le_bytes());
        assert_eq!(*line.0.lock(), vec![true]);
        let mut sts = [0u8; 2];
        pm.read(STS, &mut sts);
        assert_eq!(u16::from_le_bytes(sts) & PWRBTN, PWRBTN);
        pm.write(STS, &PWRBTN.to_le_bytes());
        assert_eq!(*line.0.lock(), vec![true, false]);
        pm.read(STS, &mut sts);
        assert_eq!(u16::from_le_bytes(sts), 0);
    }

    #[test]
    fn s5_powers_off_and_other_states_do_not() {
        let (mut pm, _line, rx) = pm();
        let s3 = (3u16 << SLP_TYP_SHIFT) | SLP_EN;
        pm.write(CNT, &s3.to_le_bytes());
        assert!(rx.try_recv().is_err());
        let s5 = (u16::from(SLP_TYP_S5) << SLP_TYP_SHIFT) | SLP_EN;
        pm.write(CNT, &s5.to_le_bytes());
        assert!(matches!(rx.try_recv(), Ok(VmEvent::PowerOff)));
        let mut cnt = [0u8; 2];
        pm.read(CNT, &mut cnt);
        let cnt = u16::from_le_bytes(cnt);
        assert_eq!(cnt & SLP_EN, 0, "SLP_EN is write-only");
        assert_eq!(cnt & SCI_EN, SCI_EN, "ACPI mode is always on");
    }

    #[test]
    fn byte_wide_s5_write_works() {
        let (mut pm, _line, rx) = pm();
        let s5 = (u16::from(SLP_TYP_S5) << SLP_TYP_SHIFT) | SLP_EN;
        pm.write(CNT + 1, &[(s5 >> 8) as u8]);
        assert!(matches!(rx.try_recv(), Ok(VmEvent::PowerOff)));
    }

    #[test]
    fn a_restored_sci_level_is_known_to_the_shared_line_but_not_driven() {
        use crate::devices::sci::SharedLine;
        let (tx, _rx) = EventSender::channel();
        let (mut source, _line, _) = pm();
        source.write(EN, &PWRBTN.to_le_bytes());
        source.press_power_button();
        let saved = source.save_state().unwrap();
        let line = Line::default();
        let shared = SharedLine::new(Box::new(line.clone()));
        let mut pm = AcpiPm::new(shared.source(), tx);
        let gpe = shared.source();
        pm.restore_state(&saved).unwrap();
        // The other source comes and goes while the PM block holds the line.
        gpe.set_level(true);
        gpe.set_level(false);
        assert!(line.0.lock().is_empty());
        pm.write(STS, &PWRBTN.to_le_bytes());
        assert_eq!(*line.0.lock(), vec![false]);
    }

    #[test]
    fn timer_advances() {
        let (mut pm, _line, _rx) = pm();
        let mut a = [0u8; 4];
        let mut b = [0u8; 4];
        pm.read(TMR, &mut a);
        std::thread::sleep(std::time::Duration::from_millis(2));
        pm.read(TMR, &mut b);
        let d = u32::from_le_bytes(b).wrapping_sub(u32::from_le_bytes(a));
        assert!(d >= 7000, "2 ms is about 7159 ticks, got {d}");
    }
}
