//! The `input` scenario: a small i8042 driver. It sets the keyboard controller up as
//! Linux's i8042, atkbd and psmouse do (flush, controller self test, both ports off and
//! their interrupts off while it works, interface tests, the aux loopback, then keyboard
//! reset, identify, LEDs, scancode set, typematic rate and scanning on; mouse reset, the
//! IntelliMouse sample-rate knock, identify, resolution, status request and data
//! reporting on), printing each answer as `GUEST I8042 INIT <step> <bytes in hex>`.
//! Then it routes IRQ 1 and IRQ 12 through the I/O APIC, turns the controller's
//! interrupts and translation to set 1 on, prints `GUEST I8042 READY`, and prints every
//! byte it reads as `GUEST I8042 kbd|aux <hex> irq=1|12`, the interrupt that announced it
//! (irq=0: none did within a second). A translated Escape press (0x01) turns translation off (raw
//! set 2 from then on), announced by `GUEST I8042 XLATE off`. Runs until powered off.

use crate::acpi::Acpi;
use crate::arch::cpu::{self, inb, outb};
use crate::arch::halt::halt_until;
use crate::arch::ioapic::{self, Mode};
use crate::arch::{apic, interrupts, pit};
use crate::console;

const DATA: u16 = 0x60;
const STATUS: u16 = 0x64;
const COMMAND: u16 = 0x64;

const STATUS_OBF: u8 = 0x01;
const STATUS_IBF: u8 = 0x02;
const STATUS_AUX: u8 = 0x20;

const CTR_KBD_INT: u8 = 0x01;
const CTR_AUX_INT: u8 = 0x02;
const CTR_SYSTEM: u8 = 0x04;
const CTR_KBD_DISABLE: u8 = 0x10;
const CTR_AUX_DISABLE: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;

/// How long a device gets to answer a byte (Linux's i8042 waits up to about 500 ms).
const ANSWER_US: u64 = 500_000;
/// Bytes the flush reads at most (the controller's buffer and then some).
const FLUSH_MAX: usize = 32;
/// The most bytes one step reads.
const ANSWER_MAX: usize = 8;

fn status() -> u8 {
    // SAFETY: the i8042's ports belong to this scenario; reading the status has no side
    // effect.
    unsafe { inb(STATUS) }
}

/// Waits until the controller takes a byte (its input buffer empty).
fn wait_writable() {
    if !pit::wait_until(ANSWER_US, || status() & STATUS_IBF == 0) {
        console::error("i8042: the input buffer stays full").end();
    }
}

fn command(byte: u8) {
    wait_writable();
    // SAFETY: as in `status`; a controller command.
    unsafe { outb(COMMAND, byte) }
}

fn write_data(byte: u8) {
    wait_writable();
    // SAFETY: as in `status`; a byte for the keyboard or a command's parameter.
    unsafe { outb(DATA, byte) }
}

/// The next byte from the output buffer and whether it came from the aux port, within
/// the answer time.
fn read_byte() -> Option<(u8, bool)> {
    if !pit::wait_until(ANSWER_US, || status() & STATUS_OBF != 0) {
        return None;
    }
    let aux = status() & STATUS_AUX != 0;
    // SAFETY: as in `status`; reading the data port takes the byte.
    Some((unsafe { inb(DATA) }, aux))
}

/// Up to `n` answer bytes (fewer if they stop coming).
fn answer(n: usize) -> ([u8; ANSWER_MAX], usize) {
    let mut bytes = [0u8; ANSWER_MAX];
    let mut len = 0;
    while len < n.min(ANSWER_MAX) {
        let Some((b, _)) = read_byte() else { break };
        bytes[len] = b;
        len += 1;
    }
    (bytes, len)
}

/// Prints `GUEST I8042 INIT <step>` and the bytes.
fn print(step: &str, bytes: &[u8]) {
    let mut line = console::line("GUEST I8042 INIT ").s(step);
    for &b in bytes {
        line = line.s(" ").hex_digits(u64::from(b), 2);
    }
    line.end();
}

/// Sends `bytes` to the keyboard (`aux`: to the mouse, each after 0xD4), reading
/// `answers[i]` bytes after byte i, and prints them all as one step.
fn device_step(step: &str, aux: bool, bytes: &[u8], answers: &[usize]) {
    let mut all = [0u8; 32];
    let mut len = 0;
    for (&byte, &n) in bytes.iter().zip(answers) {
        if aux {
            command(0xd4);
        }
        write_data(byte);
        let (got, got_len) = answer(n);
        for &b in &got[..got_len] {
            if len < all.len() {
                all[len] = b;
                len += 1;
            }
        }
    }
    print(step, &all[..len]);
}

fn controller_step(step: &str, cmd: u8, n: usize) {
    command(cmd);
    let (got, len) = answer(n);
    print(step, &got[..len]);
}

fn write_ctr(ctr: u8) {
    command(0x60);
    write_data(ctr);
}

/// Routes ISA `irq` (its MADT override, or identity, edge and active high as ISA's
/// default) to a fresh counted vector on this CPU.
fn route_irq(acpi: &Acpi, irq: u8) -> Option<u8> {
    let vector = interrupts::alloc_vector()?;
    let (gsi, mode) = match acpi.madt.override_for_irq(irq) {
        Some(o) => (
            o.gsi,
            Mode {
                level: (o.flags >> 2) & 0b11 == 0b11,
                active_low: o.flags & 0b11 == 0b11,
            },
        ),
        None => (
            u32::from(irq),
            Mode {
                level: false,
                active_low: false,
            },
        ),
    };
    ioapic::route(&acpi.madt, gsi, vector, mode, apic::id()).then_some(vector)
}

pub fn run(acpi: &Acpi, _cmdline: &[u8]) -> ! {
    // Flush what the firmware left.
    for _ in 0..FLUSH_MAX {
        if status() & STATUS_OBF == 0 {
            break;
        }
        // SAFETY: as in `status`.
        let _ = unsafe { inb(DATA) };
    }
    controller_step("selftest", 0xaa, 1);
    command(0x20);
    let ctr = answer(1).0[0];
    // Both ports off, their interrupts off, while the devices are set up.
    write_ctr((ctr | CTR_KBD_DISABLE | CTR_AUX_DISABLE) & !(CTR_KBD_INT | CTR_AUX_INT));
    controller_step("kbd-test", 0xab, 1);
    command(0xa8);
    command(0xd3);
    write_data(0xa5);
    match read_byte() {
        Some((b, aux)) => print(if aux { "aux-loop" } else { "aux-loop-not-aux" }, &[b]),
        None => print("aux-loop", &[]),
    }
    controller_step("aux-test", 0xa9, 1);
    write_ctr(CTR_XLATE | CTR_SYSTEM);
    device_step("kbd-reset", false, &[0xff], &[2]);
    device_step("kbd-id", false, &[0xf2], &[3]);
    device_step("kbd-leds", false, &[0xed, 0x07], &[1, 1]);
    device_step("kbd-set", false, &[0xf0, 0x00], &[1, 2]);
    device_step("kbd-rate", false, &[0xf3, 0x00], &[1, 1]);
    device_step("kbd-enable", false, &[0xf4], &[1]);
    device_step("aux-reset", true, &[0xff], &[3]);
    device_step(
        "aux-knock",
        true,
        &[0xf3, 200, 0xf3, 100, 0xf3, 80],
        &[1, 1, 1, 1, 1, 1],
    );
    device_step("aux-id", true, &[0xf2], &[2]);
    device_step("aux-res", true, &[0xe8, 0x03], &[1, 1]);
    device_step("aux-status", true, &[0xe9], &[4]);
    device_step("aux-enable", true, &[0xf4], &[1]);

    let (Some(kbd_vector), Some(aux_vector)) = (route_irq(acpi, 1), route_irq(acpi, 12)) else {
        console::error("i8042: IRQ 1 or 12 cannot be routed").end();
        cpu::halt_forever();
    };
    write_ctr(CTR_XLATE | CTR_SYSTEM | CTR_KBD_INT | CTR_AUX_INT);
    console::line("GUEST I8042 READY").end();
    // A byte is read only once its interrupt came (or, without one, once a second
    // passed): each read lets the next byte in, with an interrupt of its own.
    let counts = || [interrupts::count(kbd_vector), interrupts::count(aux_vector)];
    let mut seen = counts();
    loop {
        let came = halt_until(1000, || counts() != seen);
        let now = counts();
        if status() & STATUS_OBF == 0 {
            seen = now;
            continue;
        }
        let irq = match (now[0] > seen[0], now[1] > seen[1], came) {
            (true, _, true) => 1,
            (_, true, true) => 12,
            _ => 0,
        };
        seen = now;
        let aux = status() & STATUS_AUX != 0;
        // SAFETY: as in `status`.
        let byte = unsafe { inb(DATA) };
        console::line("GUEST I8042 ")
            .s(if aux { "aux " } else { "kbd " })
            .hex_digits(u64::from(byte), 2)
            .s(" irq=")
            .dec(irq)
            .end();
        if !aux && byte == 0x01 {
            write_ctr(CTR_SYSTEM | CTR_KBD_INT | CTR_AUX_INT);
            console::line("GUEST I8042 XLATE off").end();
        }
    }
}
