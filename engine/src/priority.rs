//! CPU and I/O priority (`nice`, `ionice`) for the engine's worker threads.
//!
//! Data flow: backup/restore spawn their reader/writer threads and each
//! thread calls [`apply_to_current_thread`] first, so only the threads that
//! do the I/O run at the lower priority — the agent's API threads keep
//! theirs. Linux applies both settings per thread when given a thread id:
//! `setpriority(PRIO_PROCESS, tid)` and `ioprio_set(IOPRIO_WHO_PROCESS, tid)`.
//! rustix covers `setpriority`; no maintained crate wraps `ioprio_set`, so
//! the two raw syscalls below are the engine's only `unsafe` code.
#![allow(unsafe_code)]

use std::io;

/// The seed docs' `runtimeSettings.container.{nice, ionice}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Priority {
    /// `nice.adjustment`: -20 (highest) ..= 19 (lowest).
    pub nice: Option<i32>,
    /// `ionice.class`: 1 realtime, 2 best-effort, 3 idle.
    pub ionice_class: Option<u8>,
    /// `ionice.classData`: 0 (highest) ..= 7 (lowest); ignored for idle.
    pub ionice_class_data: Option<u8>,
}

/// A priority the kernel refused or that is out of range.
#[derive(Debug, thiserror::Error)]
pub enum PriorityError {
    #[error("nice adjustment {0} is out of range; use -20..=19")]
    NiceRange(i32),
    #[error("ionice class {0} is invalid; use 1 (realtime), 2 (best-effort) or 3 (idle)")]
    ClassRange(u8),
    #[error("ionice classData {0} is invalid; use 0..=7")]
    DataRange(u8),
    #[error(
        "setting the thread's {what} failed: {source} (lowering priority needs no privilege; raising it needs CAP_SYS_NICE/CAP_SYS_ADMIN)"
    )]
    Syscall {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

const IOPRIO_WHO_PROCESS: libc::c_int = 1;
const IOPRIO_CLASS_SHIFT: u32 = 13;

impl Priority {
    pub fn validate(&self) -> Result<(), PriorityError> {
        if let Some(n) = self.nice
            && !(-20..=19).contains(&n)
        {
            return Err(PriorityError::NiceRange(n));
        }
        if let Some(c) = self.ionice_class
            && !(1..=3).contains(&c)
        {
            return Err(PriorityError::ClassRange(c));
        }
        if let Some(d) = self.ionice_class_data
            && d > 7
        {
            return Err(PriorityError::DataRange(d));
        }
        Ok(())
    }

    pub fn is_default(&self) -> bool {
        self.nice.is_none() && self.ionice_class.is_none()
    }
}

/// Apply `p` to the calling thread only.
pub fn apply_to_current_thread(p: &Priority) -> Result<(), PriorityError> {
    p.validate()?;
    let tid = rustix::thread::gettid();
    if let Some(n) = p.nice {
        rustix::process::setpriority_process(Some(tid), n).map_err(|e| PriorityError::Syscall {
            what: "nice value",
            source: e.into(),
        })?;
    }
    if let Some(class) = p.ionice_class {
        let data = if class == 3 {
            0
        } else {
            p.ionice_class_data.unwrap_or(4)
        };
        let prio = (libc::c_int::from(class) << IOPRIO_CLASS_SHIFT) | libc::c_int::from(data);
        // SAFETY: ioprio_set takes three integers and touches no memory of
        // ours; an invalid tid or priority only yields an error return.
        let r = unsafe {
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                tid.as_raw_nonzero().get(),
                prio,
            )
        };
        if r != 0 {
            return Err(PriorityError::Syscall {
                what: "I/O priority",
                source: io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// The calling thread's I/O priority as `(class, data)` (`ioprio_get`).
pub fn current_thread_ioprio() -> io::Result<(u8, u8)> {
    let tid = rustix::thread::gettid();
    // SAFETY: as above, integers in, integer out.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioprio_get,
            IOPRIO_WHO_PROCESS,
            tid.as_raw_nonzero().get(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(((r >> IOPRIO_CLASS_SHIFT) as u8, (r & 0xff) as u8))
}

/// The calling thread's nice value, read from `/proc/thread-self/stat`.
pub fn current_thread_nice() -> io::Result<i32> {
    let s = std::fs::read_to_string("/proc/thread-self/stat")?;
    // Fields after the parenthesised command start at field 3 (state);
    // nice is field 19.
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    after
        .split_whitespace()
        .nth(16)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other("unexpected /proc/thread-self/stat format"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_to_the_calling_thread_only() {
        let before_nice = current_thread_nice().unwrap();
        let before_io = current_thread_ioprio().unwrap();
        let p = Priority {
            nice: Some(before_nice.max(0) + 5),
            ionice_class: Some(2),
            ionice_class_data: Some(7),
        };
        let (nice, io) = std::thread::spawn(move || {
            apply_to_current_thread(&p).unwrap();
            (
                current_thread_nice().unwrap(),
                current_thread_ioprio().unwrap(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(nice, before_nice.max(0) + 5);
        assert_eq!(io, (2, 7));
        // the spawning thread is untouched
        assert_eq!(current_thread_nice().unwrap(), before_nice);
        assert_eq!(current_thread_ioprio().unwrap(), before_io);

        let idle = std::thread::spawn(|| {
            apply_to_current_thread(&Priority {
                nice: None,
                ionice_class: Some(3),
                ionice_class_data: None,
            })
            .unwrap();
            current_thread_ioprio().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(idle.0, 3);
    }

    #[test]
    fn rejects_out_of_range_values() {
        assert!(matches!(
            Priority {
                nice: Some(20),
                ..Default::default()
            }
            .validate(),
            Err(PriorityError::NiceRange(20))
        ));
        assert!(matches!(
            Priority {
                ionice_class: Some(4),
                ..Default::default()
            }
            .validate(),
            Err(PriorityError::ClassRange(4))
        ));
        assert!(matches!(
            Priority {
                ionice_class: Some(2),
                ionice_class_data: Some(8),
                ..Default::default()
            }
            .validate(),
            Err(PriorityError::DataRange(8))
        ));
    }
}
