//! How sheep and sheepfs ask the kernel to schedule their threads.
//!
//! One 4 KiB write through sheepfs wakes a thread at every hop: a FUSE thread, the gateway,
//! each replica, the gateway again, the FUSE thread again. Under the default policy each
//! woken thread preempts the one that woke it, so the waker is switched out in the middle of
//! its send and every reply costs two context switches. Under SCHED_BATCH a woken thread
//! does not preempt: it runs on an idle CPU at once, or when the waker blocks or its slice
//! ends, and meanwhile more replies queue for it to take in one go. Nice values and CPU
//! shares still apply as usual.

/// Puts the calling thread, and so every thread it starts afterwards, under SCHED_BATCH,
/// when it runs under the default policy (an operator's choice, `chrt` or systemd's
/// `CPUSchedulingPolicy=`, is kept). Call it first thing in `main`, before any thread is
/// started. Returns whether the policy changed.
pub fn batch() -> std::io::Result<bool> {
    // SAFETY: reads the calling thread's policy; no memory is passed.
    let policy = unsafe { libc::sched_getscheduler(0) };
    if policy != libc::SCHED_OTHER {
        return Ok(false);
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_policy_becomes_batch_and_threads_started_later_inherit_it() {
        // A thread of its own: the policy is per thread, and the test harness's must stay.
        std::thread::spawn(|| {
            // SAFETY: as in `batch`.
            let policy = || unsafe { libc::sched_getscheduler(0) };
            let before = policy();
            let changed = super::batch().expect("sched_setscheduler");
            assert_eq!(
                changed,
                before == libc::SCHED_OTHER,
                "only the default policy is changed"
            );
            let now = policy();
            assert_eq!(now, if changed { libc::SCHED_BATCH } else { before });
            assert!(
                !super::batch().expect("second call"),
                "a policy other than the default is kept"
            );
            let child = std::thread::spawn(policy).join().expect("child");
            assert_eq!(child, now, "threads started afterwards inherit it");
        })
        .join()
        .expect("thread");
    }
}
