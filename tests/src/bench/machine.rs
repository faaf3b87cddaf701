//! What this machine does with an idle CPU, printed before timing runs: a
//! guest that halts an idle vCPU at once pays the hypervisor's wake-up at
//! every wait, and that sets the latency of calls made one after another
//! (BENCHMARKS.md, "The machine, and why the pinning").

use std::path::Path;

/// The cpuidle governor and, under the `haltpoll` governor, how long an
/// idle vCPU polls before it halts; `None` where the kernel shows no
/// governor.
pub(crate) fn idle_policy() -> Option<String> {
    idle_policy_in(Path::new("/sys"))
}

fn idle_policy_in(sys: &Path) -> Option<String> {
    let read = |path: &str| {
        let text = std::fs::read_to_string(sys.join(path)).ok()?;
        Some(text.trim().to_owned())
    };
    let governor = read("devices/system/cpu/cpuidle/current_governor")?;
    let mut policy = format!("CPU idle: governor {governor}");
    // The parameter exists wherever the governor is built in; it only
    // applies while the governor is the one in use.
    if governor == "haltpoll"
        && let Some(ns) = read("module/haltpoll/parameters/guest_halt_poll_ns")
    {
        policy.push_str(&format!(", guest_halt_poll_ns {ns}"));
        if ns == "0" {
            policy.push_str(" (an idle vCPU halts at once)");
        }
    }
    Some(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    const GOVERNOR: &str = "devices/system/cpu/cpuidle/current_governor";
    const HALT_POLL: &str = "module/haltpoll/parameters/guest_halt_poll_ns";

    #[test]
    fn a_guest_that_never_polls_is_named_as_such() {
        let dir = sys(&[(GOVERNOR, "haltpoll\n"), (HALT_POLL, "0\n")]);
        assert_eq!(
            idle_policy_in(dir.path()).as_deref(),
            Some("CPU idle: governor haltpoll, guest_halt_poll_ns 0 (an idle vCPU halts at once)")
        );
        let dir = sys(&[(GOVERNOR, "haltpoll\n"), (HALT_POLL, "200000\n")]);
        assert_eq!(
            idle_policy_in(dir.path()).as_deref(),
            Some("CPU idle: governor haltpoll, guest_halt_poll_ns 200000")
        );
    }

    #[test]
    fn another_governor_is_shown_alone_and_a_bare_sys_shows_nothing() {
        // A kernel with haltpoll built in shows its parameter under any
        // governor, where it does nothing.
        let dir = sys(&[(GOVERNOR, "menu\n"), (HALT_POLL, "0\n")]);
        assert_eq!(
            idle_policy_in(dir.path()).as_deref(),
            Some("CPU idle: governor menu")
        );
        assert_eq!(idle_policy_in(sys(&[]).path()), None);
    }
}
