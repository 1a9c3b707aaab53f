//! Child processes: start them with their logs in files, wait for readiness, notice
//! when one dies, and stop them all.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::error::StackError;

/// How often readiness and liveness are polled.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// One running child.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Owns every child process of the stack. Dropping it kills whatever is still running
/// (`kill_on_drop`), so no path out of `stack` leaves orphans behind; [`Supervisor::stop_all`]
/// is the graceful way.
#[derive(Debug)]
pub struct Supervisor {
    log_dir: PathBuf,
    procs: Vec<Proc>,
}

/// A child that exited on its own.
#[derive(Debug)]
pub struct Exited {
    pub name: String,
    pub status: ExitStatus,
    pub log: PathBuf,
}

impl Supervisor {
    /// Children will log to `<log_dir>/<name>.log`.
    pub fn new(log_dir: PathBuf) -> Self {
        Supervisor {
            log_dir,
            procs: Vec::new(),
        }
    }

    /// Starts `program` with the inherited environment plus `envs`, stdout and stderr
    /// appended to its log file. The child gets its own process group, so a Ctrl-C in the
    /// terminal reaches only `stack`, which then stops the children in order.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
    ) -> Result<(), StackError> {
        let log = self.log_dir.join(format!("{name}.log"));
        let out =
            File::create(&log).map_err(StackError::io(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(StackError::io(format!("opening {}", log.display())))?;
        let child = Command::new(program)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(StackError::io(format!("starting {}", program.display())))?;
        self.procs.push(Proc {
            name: name.to_owned(),
            child,
            log,
        });
        Ok(())
    }

    /// Polls `url` until it answers 200, the child exits, or `timeout` passes.
    pub async fn wait_ready(
        &mut self,
        name: &str,
        url: &str,
        timeout: Duration,
        http: &reqwest::Client,
    ) -> Result<Duration, StackError> {
        let started = Instant::now();
        loop {
            if let Some(exited) = self.check_one(name)? {
                return Err(self.died(exited));
            }
            let ready = http
                .get(url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
            if ready {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                let log = self.log_of(name);
                print_tail(name, &log);
                return Err(StackError::NotReady {
                    name: name.to_owned(),
                    timeout,
                    log,
                });
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Resolves when any child exits, with the error to report; prints its last log lines.
    pub async fn first_exit(&mut self) -> StackError {
        loop {
            for i in 0..self.procs.len() {
                let p = &mut self.procs[i];
                match p.child.try_wait() {
                    Ok(None) => {}
                    Ok(Some(status)) => {
                        let exited = Exited {
                            name: p.name.clone(),
                            status,
                            log: p.log.clone(),
                        };
                        return self.died(exited);
                    }
                    Err(e) => return StackError::io(format!("watching {}", p.name))(e),
                }
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Stops every child: first the most recently started one (the gateway, so it stops
    /// taking requests before its upstreams go), then all the others at once. Each gets
    /// SIGTERM, then SIGKILL if it is still running after `grace`.
    pub async fn stop_all(&mut self, grace: Duration) {
        if let Some(last) = self.procs.pop() {
            stop_group(vec![last], grace).await;
        }
        stop_group(std::mem::take(&mut self.procs), grace).await;
    }

    fn check_one(&mut self, name: &str) -> Result<Option<Exited>, StackError> {
        let Some(p) = self.procs.iter_mut().find(|p| p.name == name) else {
            return Ok(None);
        };
        let status = p
            .child
            .try_wait()
            .map_err(StackError::io(format!("watching {name}")))?;
        Ok(status.map(|status| Exited {
            name: p.name.clone(),
            status,
            log: p.log.clone(),
        }))
    }

    fn log_of(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    fn died(&self, exited: Exited) -> StackError {
        print_tail(&exited.name, &exited.log);
        StackError::ChildExited {
            name: exited.name,
            status: exited.status,
            log: exited.log,
        }
    }
}

/// SIGTERM to every running process of `procs`, then waits for all of them together,
/// killing those still running at the deadline.
async fn stop_group(mut procs: Vec<Proc>, grace: Duration) {
    for p in &mut procs {
        if let Ok(None) = p.child.try_wait() {
            if let Some(pid) = p.child.id().and_then(|id| i32::try_from(id).ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
    }
    let deadline = tokio::time::Instant::now() + grace;
    for p in &mut procs {
        if tokio::time::timeout_at(deadline, p.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "stack: {} did not stop within {}s; killing it",
                p.name,
                grace.as_secs()
            );
            let _ = p.child.kill().await;
        }
    }
}

/// Lines shown from a failed child's log.
const TAIL_LINES: usize = 20;

fn print_tail(name: &str, log: &Path) {
    let lines = tail(log, TAIL_LINES);
    if lines.is_empty() {
        eprintln!("stack: {name} logged nothing ({})", log.display());
        return;
    }
    eprintln!("stack: last lines of {}:", log.display());
    for line in lines {
        eprintln!("  {name} | {line}");
    }
}

/// The last `n` lines of a file (empty if it cannot be read).
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    let mut last = VecDeque::with_capacity(n + 1);
    for line in BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        last.push_back(line);
        if last.len() > n {
            last.pop_front();
        }
    }
    last.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stack-sup-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = scratch("tail");
        let f = dir.join("x.log");
        std::fs::write(
            &f,
            (1..=30).map(|i| format!("line {i}\n")).collect::<String>(),
        )
        .unwrap();
        let t = tail(&f, 3);
        assert_eq!(t, ["line 28", "line 29", "line 30"]);
        assert!(tail(&dir.join("absent"), 3).is_empty());
    }

    #[tokio::test]
    async fn a_dying_child_is_reported_with_its_log() {
        let dir = scratch("die");
        let mut sup = Supervisor::new(dir.clone());
        let sh = PathBuf::from("/bin/sh");
        sup.spawn("sleeper", &sh, &["-c".into(), "sleep 30".into()], &[])
            .unwrap();
        sup.spawn(
            "crasher",
            &sh,
            &["-c".into(), "echo \"boom: $WHY\"; exit 3".into()],
            &[("WHY".into(), "on purpose".into())],
        )
        .unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), sup.first_exit())
            .await
            .unwrap();
        match &err {
            StackError::ChildExited { name, status, log } => {
                assert_eq!(name, "crasher");
                assert_eq!(status.code(), Some(3));
                assert_eq!(tail(log, 5), ["boom: on purpose"]);
            }
            other => panic!("unexpected {other}"),
        }
        let started = Instant::now();
        sup.stop_all(Duration::from_secs(5)).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGTERM stops sleep at once"
        );
        assert!(sup.procs.is_empty());
    }

    #[tokio::test]
    async fn the_others_stop_together_after_the_last_started() {
        let dir = scratch("together");
        let mut sup = Supervisor::new(dir.clone());
        let sh = Path::new("/bin/sh");
        // Each takes 300 ms to stop after SIGTERM; stopping them one by one would take 1.2 s.
        let slow = "trap 'sleep 0.3; exit 0' TERM; while :; do sleep 0.05; done";
        for name in ["a", "b", "c", "last"] {
            sup.spawn(name, sh, &["-c".into(), slow.into()], &[])
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        sup.stop_all(Duration::from_secs(5)).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(600),
            "last, then the rest: {took:?}"
        );
        assert!(
            took < Duration::from_millis(1100),
            "the rest in parallel: {took:?}"
        );
        assert!(sup.procs.is_empty());
    }

    #[tokio::test]
    async fn a_child_that_ignores_sigterm_is_killed_after_the_grace() {
        let dir = scratch("stubborn");
        let mut sup = Supervisor::new(dir);
        sup.spawn(
            "stubborn",
            Path::new("/bin/sh"),
            &[
                "-c".into(),
                "trap '' TERM; sleep 30 & wait; sleep 30".into(),
            ],
            &[],
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        sup.stop_all(Duration::from_millis(500)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}
