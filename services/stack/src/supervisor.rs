//! Child processes: start them with their output in log files, wait until they answer, notice
//! when one dies, and stop them all.
//!
//! `stack` runs the shop with it, and the end-to-end, stack and gateway integration tests start
//! their processes with it too, so every harness captures logs, fails on a child that died and
//! leaves no process behind the same way.
//!
//! # How to use
//!
//! ```no_run
//! # async fn demo() -> Result<(), stack::StackError> {
//! use std::time::Duration;
//! use stack::supervisor::{Launch, Supervisor};
//!
//! let mut sup = Supervisor::new("/tmp/logs".into()); // logs go to /tmp/logs/<name>.log
//! sup.spawn(Launch::new("users", "target/debug/users").env("LISTEN_ADDR", "127.0.0.1:7001"))?;
//! let http = reqwest::Client::new();
//! sup.wait_ready("users", "http://127.0.0.1:7001/readyz", Duration::from_secs(30), &http)
//!     .await?;
//! sup.stop_all(Duration::from_secs(10)).await; // or drop `sup`: nothing is left running
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
/// The signals [`Supervisor::signal`] sends, re-exported so callers need no `nix` of their own.
pub use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::error::StackError;

/// How often liveness is polled while waiting for a child to exit.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// How often readiness is polled: often, since every harness start waits on it.
const READY_POLL_EVERY: Duration = Duration::from_millis(100);
/// How long dropping a [`Supervisor`] waits for SIGKILLed children to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

// === Launch ===

/// One child to start: what to run and how, for [`Supervisor::spawn`].
///
/// By default the child inherits this process's environment (plus [`Launch::env`]), its working
/// directory and process group, writes stdout and stderr to `<log_dir>/<name>.log`, and is killed
/// (SIGKILL) when its supervisor is dropped.
#[derive(Debug, Clone)]
pub struct Launch {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
    current_dir: Option<PathBuf>,
    own_process_group: bool,
    stderr_apart: bool,
    drop_grace: Option<Duration>,
}

impl Launch {
    /// `program`, known to the supervisor (and in its log file name) as `name`.
    pub fn new(name: &str, program: impl Into<PathBuf>) -> Self {
        Launch {
            name: name.to_owned(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            current_dir: None,
            own_process_group: false,
            stderr_apart: false,
            drop_grace: None,
        }
    }

    /// Appends command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets one environment variable (a later setting of the same variable wins).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets several environment variables, in order.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Does not pass `key` on from this process's environment.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env_remove.push(key.into());
        self
    }

    /// Runs the child in `dir` (default: this process's working directory).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Puts the child in a process group of its own, so a Ctrl-C in the terminal reaches only
    /// this process, which then stops the children in order. For `stack`; a test harness keeps
    /// its children in its own group, so that Ctrl-C on the test run takes them down too.
    pub fn own_process_group(mut self) -> Self {
        self.own_process_group = true;
        self
    }

    /// Writes stderr to `<log_dir>/<name>.stderr.log` rather than into the same log as stdout,
    /// for callers that read what a child prints on each apart.
    pub fn stderr_apart(mut self) -> Self {
        self.stderr_apart = true;
        self
    }

    /// When the supervisor is dropped with this child still running, sends it SIGTERM and gives
    /// it `grace` to stop before SIGKILL (default: SIGKILL at once). For a child that has
    /// children of its own to stop, such as `stack` under test.
    pub fn stop_on_drop(mut self, grace: Duration) -> Self {
        self.drop_grace = Some(grace);
        self
    }
}

// === Supervisor ===

/// One running child.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    drop_grace: Option<Duration>,
}

/// Owns every child it started. Dropping it stops whatever is still running (SIGKILL, or
/// SIGTERM first for children started with [`Launch::stop_on_drop`]) and waits until they are
/// gone, so no path out of a run or a test leaves orphans behind; [`Supervisor::stop_all`] is the
/// graceful way.
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

    /// Starts `launch` with stdin closed and its output appended to its log file.
    pub fn spawn(&mut self, launch: Launch) -> Result<(), StackError> {
        let Launch {
            name,
            program,
            args,
            env,
            env_remove,
            current_dir,
            own_process_group,
            stderr_apart,
            drop_grace,
        } = launch;
        let log = self.log_path(&name);
        let out =
            File::create(&log).map_err(StackError::io(format!("creating {}", log.display())))?;
        let err = if stderr_apart {
            let path = self.stderr_path(&name);
            File::create(&path).map_err(StackError::io(format!("creating {}", path.display())))?
        } else {
            out.try_clone()
                .map_err(StackError::io(format!("opening {}", log.display())))?
        };
        let mut command = Command::new(&program);
        command.args(&args);
        for key in &env_remove {
            command.env_remove(key);
        }
        command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        if let Some(dir) = &current_dir {
            command.current_dir(dir);
        }
        if own_process_group {
            command.process_group(0);
        }
        let child = command
            .spawn()
            .map_err(StackError::io(format!("starting {}", program.display())))?;
        self.procs.push(Proc {
            name,
            child,
            log,
            drop_grace,
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
        self.wait_until(name, timeout, async || {
            http.get(url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
        })
        .await
    }

    /// Polls `ready` until it holds, child `name` exits, or `timeout` passes; how long it took.
    /// For readiness that is not an HTTP 200: a line in the child's log, a protocol greeting.
    pub async fn wait_until(
        &mut self,
        name: &str,
        timeout: Duration,
        mut ready: impl AsyncFnMut() -> bool,
    ) -> Result<Duration, StackError> {
        let started = Instant::now();
        loop {
            if let Some(exited) = self.check_one(name)? {
                return Err(self.died(exited));
            }
            if ready().await {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                let log = self.log_path(name);
                print_tail(name, &log);
                return Err(StackError::NotReady {
                    name: name.to_owned(),
                    timeout,
                    log,
                });
            }
            tokio::time::sleep(READY_POLL_EVERY).await;
        }
    }

    /// The first child (in start order) that has exited, if any: for a harness that must not
    /// go on talking to a port whose process died.
    pub fn exited(&mut self) -> Result<Option<Exited>, StackError> {
        for p in &mut self.procs {
            let status = p
                .child
                .try_wait()
                .map_err(StackError::io(format!("watching {}", p.name)))?;
            if let Some(status) = status {
                return Ok(Some(Exited {
                    name: p.name.clone(),
                    status,
                    log: p.log.clone(),
                }));
            }
        }
        Ok(None)
    }

    /// Resolves when any child exits, with the error to report; prints its last log lines.
    pub async fn first_exit(&mut self) -> StackError {
        loop {
            match self.exited() {
                Ok(None) => {}
                Ok(Some(exited)) => return self.died(exited),
                Err(e) => return e,
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Waits up to `timeout` for child `name` to exit; its status, or `None` if it is still
    /// running (or was never started).
    pub async fn wait_exit(&mut self, name: &str, timeout: Duration) -> Option<ExitStatus> {
        let p = self.procs.iter_mut().find(|p| p.name == name)?;
        tokio::time::timeout(timeout, p.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Sends `signal` to child `name` (e.g. SIGHUP to reload, SIGTERM to stop).
    pub fn signal(&self, name: &str, signal: Signal) -> Result<(), StackError> {
        let pid = self
            .pid(name)
            .ok_or_else(|| StackError::io(format!("signalling {name}"))(not_running()))?;
        kill(pid, signal)
            .map_err(|e| StackError::io(format!("signalling {name}"))(std::io::Error::from(e)))
    }

    /// The log file of child `name`: stdout, and stderr unless [`Launch::stderr_apart`].
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Where the stderr of a child started with [`Launch::stderr_apart`] goes.
    pub fn stderr_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.stderr.log"))
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

    /// Kills every child at once (SIGKILL) and waits until they are gone, for harnesses where
    /// how a child stops is not what is tested.
    pub async fn kill_all(&mut self) {
        for mut p in std::mem::take(&mut self.procs) {
            let _ = p.child.kill().await;
        }
    }

    fn pid(&self, name: &str) -> Option<Pid> {
        let p = self.procs.iter().find(|p| p.name == name)?;
        let id = p.child.id()?;
        Some(Pid::from_raw(i32::try_from(id).ok()?))
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

    fn died(&self, exited: Exited) -> StackError {
        print_tail(&exited.name, &exited.log);
        StackError::ChildExited {
            name: exited.name,
            status: exited.status,
            log: exited.log,
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_now();
    }
}

impl Supervisor {
    /// Stops every child without an async runtime and blocks until they are gone: SIGTERM and
    /// up to its grace for children started with [`Launch::stop_on_drop`], SIGKILL for the others
    /// (and for those past their grace). What dropping the supervisor does; call it to be sure
    /// the children are gone at a given point, e.g. before removing their directory.
    pub fn stop_now(&mut self) {
        let now = Instant::now();
        let mut running: Vec<(Proc, Instant)> = Vec::new();
        for mut p in std::mem::take(&mut self.procs) {
            if !matches!(p.child.try_wait(), Ok(None)) {
                continue;
            }
            let deadline = match p.drop_grace {
                Some(grace) => {
                    terminate(&p.child);
                    now + grace
                }
                None => {
                    let _ = p.child.start_kill();
                    now + KILL_WAIT
                }
            };
            running.push((p, deadline));
        }
        let longest = running.iter().map(|(_, d)| *d - now).max();
        let give_up = now + longest.unwrap_or_default() + KILL_WAIT;
        while !running.is_empty() && Instant::now() < give_up {
            running.retain_mut(|(p, deadline)| {
                if !matches!(p.child.try_wait(), Ok(None)) {
                    return false;
                }
                if Instant::now() >= *deadline {
                    let _ = p.child.start_kill();
                }
                true
            });
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn not_running() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, "no such running child")
}

/// SIGTERM to `child` if it is still running.
fn terminate(child: &Child) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
}

/// SIGTERM to every running process of `procs`, then waits for all of them together,
/// killing those still running at the deadline.
async fn stop_group(mut procs: Vec<Proc>, grace: Duration) {
    for p in &mut procs {
        if let Ok(None) = p.child.try_wait() {
            terminate(&p.child);
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
        sup.spawn(Launch::new("sleeper", &sh).args(["-c", "sleep 30"]))
            .unwrap();
        sup.spawn(
            Launch::new("crasher", &sh)
                .args(["-c", "echo \"boom: $WHY\"; exit 3"])
                .env("WHY", "on purpose"),
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
            sup.spawn(Launch::new(name, sh).args(["-c", slow])).unwrap();
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
            Launch::new("stubborn", "/bin/sh")
                .args(["-c", "trap '' TERM; sleep 30 & wait; sleep 30"]),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        sup.stop_all(Duration::from_millis(500)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[tokio::test]
    async fn launch_options_shape_the_child() {
        let dir = scratch("options");
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let (inherited, _) = std::env::vars()
            .find(|(k, _)| k.starts_with("CARGO_"))
            .expect("cargo test sets CARGO_* variables");
        let mut sup = Supervisor::new(dir.clone());
        let script =
            format!("echo out; echo err >&2; pwd; echo \"removed=${{{inherited}-gone}} set=$SET\"");
        sup.spawn(
            Launch::new("shaped", "/bin/sh")
                .args(["-c", &script])
                .env("SET", "first")
                .env("SET", "second")
                .env_remove(&inherited)
                .current_dir(&work)
                .stderr_apart(),
        )
        .unwrap();
        let status = sup.wait_exit("shaped", Duration::from_secs(10)).await;
        assert_eq!(status.and_then(|s| s.code()), Some(0));
        let work = work.canonicalize().unwrap();
        assert_eq!(
            tail(&sup.log_path("shaped"), 10),
            [
                "out".to_owned(),
                work.display().to_string(),
                "removed=gone set=second".to_owned()
            ]
        );
        assert_eq!(tail(&sup.stderr_path("shaped"), 10), ["err"]);
    }

    #[tokio::test]
    async fn waiting_ends_when_ready_when_the_child_dies_or_at_the_timeout() {
        let dir = scratch("wait");
        let mut sup = Supervisor::new(dir);
        sup.spawn(Launch::new("slow", "/bin/sh").args(["-c", "sleep 0.3; echo up; sleep 30"]))
            .unwrap();
        sup.spawn(Launch::new("dies", "/bin/sh").args(["-c", "sleep 0.3; exit 4"]))
            .unwrap();
        let log = sup.log_path("slow");
        let took = sup
            .wait_until("slow", Duration::from_secs(10), async || {
                tail(&log, 1) == ["up"]
            })
            .await
            .unwrap();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        let never = sup
            .wait_until("slow", Duration::from_millis(300), async || false)
            .await;
        assert!(
            matches!(never, Err(StackError::NotReady { .. })),
            "{never:?}"
        );
        let died = sup
            .wait_until("dies", Duration::from_secs(10), async || false)
            .await;
        match died {
            Err(StackError::ChildExited { name, status, .. }) => {
                assert_eq!((name.as_str(), status.code()), ("dies", Some(4)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_signal_reaches_the_child_and_its_exit_is_awaited() {
        let dir = scratch("signal");
        let mut sup = Supervisor::new(dir);
        sup.spawn(Launch::new("hup", "/bin/sh").args([
            "-c",
            "trap 'echo got hup; exit 7' USR1; echo ready; while :; do sleep 0.05; done",
        ]))
        .unwrap();
        // Signal only once the trap is set (a loaded machine may take a while to start sh).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tail(&sup.log_path("hup"), 1) != ["ready"] {
            assert!(std::time::Instant::now() < deadline, "sh never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            sup.wait_exit("hup", Duration::from_millis(100))
                .await
                .is_none(),
            "still running"
        );
        assert!(sup.exited().unwrap().is_none());
        // SIGUSR1, not SIGHUP: under nohup SIGHUP is ignored, and sh cannot trap a signal that
        // was ignored when it started.
        sup.signal("hup", Signal::SIGUSR1).unwrap();
        let status = sup.wait_exit("hup", Duration::from_secs(10)).await;
        assert_eq!(status.and_then(|s| s.code()), Some(7));
        assert_eq!(tail(&sup.log_path("hup"), 5), ["ready", "got hup"]);
        let exited = sup.exited().unwrap().expect("hup has exited");
        assert_eq!(exited.name, "hup");
        assert!(sup.signal("nobody", Signal::SIGHUP).is_err());
    }

    #[tokio::test]
    async fn dropping_the_supervisor_leaves_nothing_running() {
        let dir = scratch("drop");
        let stopped = dir.join("stopped");
        let _ = std::fs::remove_file(&stopped);
        let mut sup = Supervisor::new(dir.clone());
        sup.spawn(Launch::new("killed", "/bin/sh").args(["-c", "sleep 30"]))
            .unwrap();
        let graceful = format!(
            "trap 'echo stopped > {}; exit 0' TERM; while :; do sleep 0.05; done",
            stopped.display()
        );
        sup.spawn(
            Launch::new("graceful", "/bin/sh")
                .args(["-c", &graceful])
                .stop_on_drop(Duration::from_secs(10)),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pids = [sup.pid("killed").unwrap(), sup.pid("graceful").unwrap()];
        drop(sup);
        for pid in pids {
            assert_eq!(
                kill(pid, None),
                Err(nix::errno::Errno::ESRCH),
                "{pid} is gone and reaped"
            );
        }
        assert_eq!(
            std::fs::read_to_string(&stopped).unwrap().trim(),
            "stopped",
            "the graceful child got SIGTERM"
        );
    }
}
