//! What a run changed on the host (network namespaces, FUSE mounts) is undone even when the
//! harness itself is stopped by SIGINT or SIGTERM: `Drop` does not run when a signal ends the
//! process, and a run must leave nothing behind (Jepsen's teardown guarantee). Each resource
//! registers an undo action while it exists; the first SIGINT/SIGTERM runs every registered
//! action, newest first, and exits with 130. The node processes die with the harness by
//! themselves (they are started with PR_SET_PDEATHSIG).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

type Action = Box<dyn FnOnce() + Send>;

/// Undo actions by registration number.
#[derive(Default)]
struct Registry {
    actions: Mutex<Vec<(u64, Action)>>,
    next_id: AtomicU64,
}

impl Registry {
    const fn new() -> Registry {
        Registry {
            actions: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        }
    }

    fn add(&'static self, undo: Action) -> Guard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().push((id, undo));
        Guard { registry: self, id }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Action)>> {
        self.actions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs every registered action, newest first, and forgets them. Returns how many ran.
    fn run_all(&self) -> usize {
        let actions = std::mem::take(&mut *self.lock());
        let n = actions.len();
        for (_, undo) in actions.into_iter().rev() {
            undo();
        }
        n
    }
}

static REGISTRY: Registry = Registry::new();
static WATCH: Once = Once::new();

/// A registered undo action; dropping it deregisters the action without running it (the
/// resource was released the normal way).
#[must_use = "dropping the guard deregisters the action at once"]
pub struct Guard {
    registry: &'static Registry,
    id: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.registry.lock().retain(|(id, _)| *id != self.id);
    }
}

/// Registers `undo` to run if the harness is stopped by a signal while the guard lives.
pub fn on_signal(undo: impl FnOnce() + Send + 'static) -> Guard {
    WATCH.call_once(watch_signals);
    REGISTRY.add(Box::new(undo))
}

/// Detaches a mount point at once (MNT_DETACH: it disappears from the namespace even while a
/// dying process still holds a file in it), the undo action of a FUSE mount.
pub fn detach_mount(mountpoint: PathBuf) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        // Without root the mount was made through fusermount3, which can undo it too.
        let _ = std::process::Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&mountpoint)
            .status();
    }
}

fn watch_signals() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let caught = rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return false;
            };
            tokio::select! {
                _ = term.recv() => true,
                _ = int.recv() => true,
            }
        });
        if caught {
            let n = REGISTRY.run_all();
            eprintln!("kcheck: stopped by a signal; undid {n} host change(s) of the run");
            std::process::exit(130);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn registered_actions_run_newest_first_and_a_dropped_guard_is_forgotten() {
        // A registry of its own: the global one may hold other tests' mounts.
        let registry: &'static Registry = Box::leak(Box::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let o = order.clone();
        let first = registry.add(Box::new(move || o.lock().unwrap().push(1)));
        let released = Arc::new(AtomicUsize::new(0));
        let r = released.clone();
        let dropped = registry.add(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        let o = order.clone();
        let last = registry.add(Box::new(move || o.lock().unwrap().push(3)));
        drop(dropped);
        assert_eq!(registry.run_all(), 2);
        assert_eq!(*order.lock().unwrap(), vec![3, 1]);
        assert_eq!(
            released.load(Ordering::SeqCst),
            0,
            "a released resource is not undone"
        );
        // Ran once: the guards now deregister nothing.
        drop((first, last));
        assert_eq!(registry.run_all(), 0);
    }
}
