//! Input events as they travel from the gateway to vmm-core's PS/2 keyboard and mouse
//! (`VmmRequest::Input`), and the one table of QEMU's key codes (QKeyCode): each key's
//! name, its AT scancodes in set 1 and set 2, and QEMU's key numbers ("qnum": set 1
//! scancodes with 0x80 standing for the 0xe0 prefix, `{"type": "number"}` in QMP).
//!
//! The table is QEMU 7.2's (its keycodemapdb, from which QEMU generates its own tables),
//! in QKeyCode's order, so a key's index is QEMU's enum value.

use serde::{Deserialize, Serialize};

/// One QKeyCode: its name and its scancodes (0: none in that set; 0xe0xx: the 0xe0
/// prefix, then xx).
pub struct KeyInfo {
    pub name: &'static str,
    pub set1: u16,
    pub set2: u16,
}

const fn key(name: &'static str, set1: u16, set2: u16) -> KeyInfo {
    KeyInfo { name, set1, set2 }
}

/// QEMU 7.2's QKeyCode, in its order.
pub const KEYS: [KeyInfo; 150] = [
    key("unmapped", 0x0000, 0x0000),
    key("shift", 0x002a, 0x0012),
    key("shift_r", 0x0036, 0x0059),
    key("alt", 0x0038, 0x0011),
    key("alt_r", 0xe038, 0xe011),
    key("ctrl", 0x001d, 0x0014),
    key("ctrl_r", 0xe01d, 0xe014),
    key("menu", 0xe01e, 0x0000),
    key("esc", 0x0001, 0x0076),
    key("1", 0x0002, 0x0016),
    key("2", 0x0003, 0x001e),
    key("3", 0x0004, 0x0026),
    key("4", 0x0005, 0x0025),
    key("5", 0x0006, 0x002e),
    key("6", 0x0007, 0x0036),
    key("7", 0x0008, 0x003d),
    key("8", 0x0009, 0x003e),
    key("9", 0x000a, 0x0046),
    key("0", 0x000b, 0x0045),
    key("minus", 0x000c, 0x004e),
    key("equal", 0x000d, 0x0055),
    key("backspace", 0x000e, 0x0066),
    key("tab", 0x000f, 0x000d),
    key("q", 0x0010, 0x0015),
    key("w", 0x0011, 0x001d),
    key("e", 0x0012, 0x0024),
    key("r", 0x0013, 0x002d),
    key("t", 0x0014, 0x002c),
    key("y", 0x0015, 0x0035),
    key("u", 0x0016, 0x003c),
    key("i", 0x0017, 0x0043),
    key("o", 0x0018, 0x0044),
    key("p", 0x0019, 0x004d),
    key("bracket_left", 0x001a, 0x0054),
    key("bracket_right", 0x001b, 0x005b),
    key("ret", 0x001c, 0x005a),
    key("a", 0x001e, 0x001c),
    key("s", 0x001f, 0x001b),
    key("d", 0x0020, 0x0023),
    key("f", 0x0021, 0x002b),
    key("g", 0x0022, 0x0034),
    key("h", 0x0023, 0x0033),
    key("j", 0x0024, 0x003b),
    key("k", 0x0025, 0x0042),
    key("l", 0x0026, 0x004b),
    key("semicolon", 0x0027, 0x004c),
    key("apostrophe", 0x0028, 0x0052),
    key("grave_accent", 0x0029, 0x000e),
    key("backslash", 0x002b, 0x005d),
    key("z", 0x002c, 0x001a),
    key("x", 0x002d, 0x0022),
    key("c", 0x002e, 0x0021),
    key("v", 0x002f, 0x002a),
    key("b", 0x0030, 0x0032),
    key("n", 0x0031, 0x0031),
    key("m", 0x0032, 0x003a),
    key("comma", 0x0033, 0x0041),
    key("dot", 0x0034, 0x0049),
    key("slash", 0x0035, 0x004a),
    key("asterisk", 0x0037, 0x007c),
    key("spc", 0x0039, 0x0029),
    key("caps_lock", 0x003a, 0x0058),
    key("f1", 0x003b, 0x0005),
    key("f2", 0x003c, 0x0006),
    key("f3", 0x003d, 0x0004),
    key("f4", 0x003e, 0x000c),
    key("f5", 0x003f, 0x0003),
    key("f6", 0x0040, 0x000b),
    key("f7", 0x0041, 0x0083),
    key("f8", 0x0042, 0x000a),
    key("f9", 0x0043, 0x0001),
    key("f10", 0x0044, 0x0009),
    key("num_lock", 0x0045, 0x0077),
    key("scroll_lock", 0x0046, 0x007e),
    key("kp_divide", 0xe035, 0xe04a),
    key("kp_multiply", 0x0037, 0x007c),
    key("kp_subtract", 0x004a, 0x007b),
    key("kp_add", 0x004e, 0x0079),
    key("kp_enter", 0xe01c, 0xe05a),
    key("kp_decimal", 0x0053, 0x0071),
    key("sysrq", 0x0054, 0x007f),
    key("kp_0", 0x0052, 0x0070),
    key("kp_1", 0x004f, 0x0069),
    key("kp_2", 0x0050, 0x0072),
    key("kp_3", 0x0051, 0x007a),
    key("kp_4", 0x004b, 0x006b),
    key("kp_5", 0x004c, 0x0073),
    key("kp_6", 0x004d, 0x0074),
    key("kp_7", 0x0047, 0x006c),
    key("kp_8", 0x0048, 0x0075),
    key("kp_9", 0x0049, 0x007d),
    key("less", 0x0056, 0x0061),
    key("f11", 0x0057, 0x0078),
    key("f12", 0x0058, 0x0007),
    key("print", 0x0054, 0x007f),
    key("home", 0xe047, 0xe06c),
    key("pgup", 0xe049, 0xe07d),
    key("pgdn", 0xe051, 0xe07a),
    key("end", 0xe04f, 0xe069),
    key("left", 0xe04b, 0xe06b),
    key("up", 0xe048, 0xe075),
    key("down", 0xe050, 0xe072),
    key("right", 0xe04d, 0xe074),
    key("insert", 0xe052, 0xe070),
    key("delete", 0xe053, 0xe071),
    key("stop", 0xe068, 0xe028),
    key("again", 0xe005, 0x0000),
    key("props", 0xe006, 0x0000),
    key("undo", 0xe007, 0x0000),
    key("front", 0xe00c, 0x0000),
    key("copy", 0xe078, 0x0000),
    key("open", 0x0064, 0x0000),
    key("paste", 0x0065, 0x0000),
    key("find", 0xe041, 0x0000),
    key("cut", 0xe03c, 0x0000),
    key("lf", 0x005b, 0x0000),
    key("help", 0xe075, 0x0000),
    key("meta_l", 0xe05b, 0xe01f),
    key("meta_r", 0xe05c, 0xe027),
    key("compose", 0xe05d, 0xe02f),
    key("pause", 0xe046, 0xe077),
    key("ro", 0x0073, 0x0051),
    key("hiragana", 0x0077, 0x0062),
    key("henkan", 0x0079, 0x0064),
    key("yen", 0x007d, 0x006a),
    key("muhenkan", 0x007b, 0x0067),
    key("katakanahiragana", 0x0070, 0x0013),
    key("kp_comma", 0x007e, 0x006d),
    key("kp_equals", 0x0059, 0x000f),
    key("power", 0xe05e, 0xe037),
    key("sleep", 0xe05f, 0xe03f),
    key("wake", 0xe063, 0xe05e),
    key("audionext", 0xe019, 0xe04d),
    key("audioprev", 0xe010, 0xe015),
    key("audiostop", 0xe024, 0xe03b),
    key("audioplay", 0xe022, 0xe034),
    key("audiomute", 0xe020, 0xe023),
    key("volumeup", 0xe030, 0xe032),
    key("volumedown", 0xe02e, 0xe021),
    key("mediaselect", 0xe06d, 0xe050),
    key("mail", 0xe06c, 0xe048),
    key("calculator", 0xe021, 0xe02b),
    key("computer", 0xe06b, 0xe040),
    key("ac_home", 0xe032, 0xe03a),
    key("ac_back", 0xe06a, 0xe038),
    key("ac_forward", 0xe069, 0xe030),
    key("ac_refresh", 0xe067, 0xe020),
    key("ac_bookmarks", 0xe066, 0xe018),
    key("lang1", 0x0072, 0x0000),
    key("lang2", 0x0071, 0x0000),
];

/// QEMU's key numbers to QKeyCode indices (qemu_input_map_qnum_to_qcode); numbers past
/// its end are no key (0, "unmapped").
const QNUM_TO_KEY: [u8; 254] = [
    0, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30,
    31, 32, 33, 34, 35, 5, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 1, 48, 49, 50, 51, 52,
    53, 54, 55, 56, 57, 58, 2, 75, 3, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 88,
    89, 90, 76, 85, 86, 87, 77, 82, 83, 84, 81, 79, 80, 0, 91, 92, 93, 128, 0, 115, 0, 0, 0, 0, 0,
    0, 0, 0, 111, 112, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 126, 149, 148, 121, 0, 0, 0, 122, 0, 123, 0,
    125, 0, 124, 127, 0, 0, 0, 0, 0, 0, 106, 107, 108, 0, 0, 0, 0, 109, 0, 0, 0, 133, 0, 0, 0, 0,
    0, 0, 0, 0, 132, 0, 0, 78, 6, 7, 0, 136, 141, 135, 0, 134, 0, 0, 0, 0, 0, 0, 0, 0, 0, 138, 0,
    137, 0, 143, 0, 0, 74, 0, 80, 4, 0, 0, 0, 114, 0, 0, 0, 0, 113, 0, 0, 0, 0, 120, 95, 100, 96,
    0, 99, 0, 102, 0, 98, 101, 97, 103, 104, 0, 0, 0, 0, 0, 0, 0, 117, 118, 119, 129, 130, 0, 0, 0,
    131, 0, 0, 147, 146, 105, 145, 144, 142, 140, 139, 0, 0, 0, 0, 0, 0, 0, 116, 0, 0, 110, 0, 0,
    0, 0, 0,
];

/// A key, as QEMU's QKeyCode (its index in `KEYS`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyCode(u8);

impl KeyCode {
    /// "unmapped": a key no keyboard sends anything for.
    pub const UNMAPPED: KeyCode = KeyCode(0);

    pub fn from_name(name: &str) -> Option<KeyCode> {
        let i = KEYS.iter().position(|k| k.name == name)?;
        u8::try_from(i).ok().map(KeyCode)
    }

    /// The key with QEMU's number `number`, as QEMU 7.2 finds it: the number is taken as
    /// a C unsigned int (its low 32 bits), and one past the table is "unmapped".
    pub fn from_number(number: i64) -> KeyCode {
        let n = number as u32 as usize;
        KeyCode(QNUM_TO_KEY.get(n).copied().unwrap_or(0))
    }

    /// The key's entry (a KeyCode from elsewhere, decoded from a frame, may be past the
    /// table: it is then "unmapped").
    pub fn info(self) -> &'static KeyInfo {
        KEYS.get(usize::from(self.0)).unwrap_or(&KEYS[0])
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }
}

/// QEMU's InputButton.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputButton {
    Left,
    Middle,
    Right,
    WheelUp,
    WheelDown,
    Side,
    Extra,
    WheelLeft,
    WheelRight,
}

impl InputButton {
    pub fn from_name(name: &str) -> Option<InputButton> {
        use InputButton::*;
        Some(match name {
            "left" => Left,
            "middle" => Middle,
            "right" => Right,
            "wheel-up" => WheelUp,
            "wheel-down" => WheelDown,
            "side" => Side,
            "extra" => Extra,
            "wheel-left" => WheelLeft,
            "wheel-right" => WheelRight,
            _ => return None,
        })
    }
}

/// QEMU's InputAxis.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputAxis {
    X,
    Y,
}

/// One event for the guest's input devices (QMP input-send-event's key, btn and rel; abs
/// events have no device to go to and never get here).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputEvent {
    Key {
        key: KeyCode,
        down: bool,
    },
    Button {
        button: InputButton,
        down: bool,
    },
    /// A relative move: `value` units along `axis` (y grows downwards, as QEMU's).
    Move {
        axis: InputAxis,
        value: i64,
    },
}

/// What vmm-core plays, in order: events, the end of a group of pointer events (QEMU's
/// sync: the mouse sends its packet), and pauses (send-key's hold time).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputStep {
    Event(InputEvent),
    Sync,
    Wait { ms: u32 },
}

/// The most steps vmm-core holds waiting (QEMU's input queue limit); past it, new
/// steps are dropped, as QEMU drops them.
pub const MAX_PENDING_STEPS: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_find_qemu_keys() {
        let a = KeyCode::from_name("a").unwrap();
        assert_eq!((a.info().set1, a.info().set2), (0x1e, 0x1c));
        assert_eq!(KeyCode::from_name("nosuch"), None);
        assert_eq!(KeyCode::from_number(0x1e), a);
        // 0x9c: 0x1c with the 0xe0 prefix.
        assert_eq!(KeyCode::from_number(0x9c).name(), "kp_enter");
        // QEMU keeps the low 32 bits, and past the table there is no key.
        assert_eq!(KeyCode::from_number((1 << 32) + 0x1e), a);
        assert_eq!(KeyCode::from_number(-1), KeyCode::UNMAPPED);
        assert_eq!(KeyCode::from_number(254), KeyCode::UNMAPPED);
        assert_eq!(KeyCode(200).name(), "unmapped");
    }
}
