//! Plays the gateway's input steps (send-key, input-send-event) into the i8042's keyboard
//! and mouse on a thread of its own, so that send-key's hold times pass without holding
//! up the control loop or a vCPU. At most `MAX_PENDING_STEPS` wait; more are dropped, as
//! QEMU drops events past its input queue's limit. Events that come due while the VM
//! does not run are dropped too, as QEMU drops them (a paused guest gets no keys).

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc::input::{InputStep, MAX_PENDING_STEPS};
use parking_lot::{Condvar, Mutex};

use crate::devices::i8042::I8042;

#[derive(Default)]
struct Pending {
    steps: VecDeque<InputStep>,
    closed: bool,
    running: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

pub struct InputPlayer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl InputPlayer {
    pub fn start(controller: Arc<Mutex<I8042>>) -> std::io::Result<InputPlayer> {
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new().name("input".into()).spawn({
            let shared = shared.clone();
            move || play(&shared, &controller)
        })?;
        Ok(InputPlayer {
            shared,
            thread: Some(thread),
        })
    }

    /// Whether the VM runs (events played meanwhile reach the devices).
    pub fn set_running(&self, running: bool) {
        self.shared.pending.lock().running = running;
    }

    /// Queues `steps` after those waiting; returns how many were dropped for want of room.
    pub fn push(&self, steps: Vec<InputStep>) -> usize {
        let mut p = self.shared.pending.lock();
        let room = MAX_PENDING_STEPS.saturating_sub(p.steps.len());
        let dropped = steps.len().saturating_sub(room);
        p.steps.extend(steps.into_iter().take(room));
        self.shared.wake.notify_one();
        dropped
    }
}

fn play(shared: &Shared, controller: &Mutex<I8042>) {
    let mut p = shared.pending.lock();
    loop {
        if p.closed {
            return;
        }
        let Some(step) = p.steps.pop_front() else {
            shared.wake.wait(&mut p);
            continue;
        };
        match step {
            InputStep::Event(_) | InputStep::Sync if !p.running => {}
            InputStep::Event(event) => controller.lock().input(event),
            InputStep::Sync => controller.lock().sync(),
            InputStep::Wait { ms } => {
                let until = Instant::now() + Duration::from_millis(u64::from(ms));
                while !p.closed && !shared.wake.wait_until(&mut p, until).timed_out() {}
            }
        }
    }
}

impl Drop for InputPlayer {
    fn drop(&mut self) {
        self.shared.pending.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use ipc::input::{InputEvent, KeyCode};

    use super::*;
    use crate::devices::IrqLine;
    use crate::events::EventSender;

    struct NoLine;
    impl IrqLine for NoLine {
        fn set_level(&self, _: bool) {}
    }

    #[test]
    fn steps_play_in_order_with_their_waits_and_the_queue_is_bounded() {
        let (tx, _rx) = EventSender::channel();
        let c = Arc::new(Mutex::new(I8042::new(
            tx,
            Box::new(NoLine),
            Box::new(NoLine),
        )));
        let player = InputPlayer::start(c.clone()).unwrap();
        let a = KeyCode::from_name("a").unwrap();
        // Not running: events are dropped.
        player.push(vec![InputStep::Event(InputEvent::Key {
            key: a,
            down: true,
        })]);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(c.lock().read_status() & 1, 0);
        player.set_running(true);
        let started = Instant::now();
        let key = |down| InputStep::Event(InputEvent::Key { key: a, down });
        assert_eq!(
            player.push(vec![key(true), InputStep::Wait { ms: 50 }, key(false)]),
            0
        );
        let deadline = started + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < 3 && Instant::now() < deadline {
            let mut c = c.lock();
            if c.read_status() & 1 != 0 {
                got.push((c.read_data(), started.elapsed()));
            }
        }
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            [0x1c, 0xf0, 0x1c]
        );
        assert!(got[1].1 >= Duration::from_millis(50), "{got:?}");
        // A long wait holds the rest: past the bound, steps are dropped.
        player.push(vec![InputStep::Wait { ms: 60_000 }]);
        let many = vec![InputStep::Sync; MAX_PENDING_STEPS + 5];
        let dropped = player.push(many);
        assert!((5..=6).contains(&dropped), "{dropped}");
        // Dropping the player ends its thread, even in a wait.
        drop(player);
    }
}
