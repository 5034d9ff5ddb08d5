//! One child process of a local cluster: started from a [`ProcessSpec`], found by the
//! `... http://ADDR` line it prints first, signalled (stop, kill, pause, resume) and restarted on
//! the address it had, with its stderr appended to one log file across restarts. The child is
//! killed when its handle is dropped, and on Linux by the kernel if this process dies.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use super::{eventually, LocalClusterError};

/// How long [`LocalProcess::pause`] waits for every thread to be stopped.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to start one child process (and restart it the same way).
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    /// A name for messages and errors (`n0`, `dev-consul`).
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments, without the listen address.
    pub args: Vec<String>,
    /// The flag that takes the listen address (`--listen`), if the program takes one: it gets
    /// `127.0.0.1:0` the first time and the address it got then on every restart, so the others
    /// find it where they left it. `None`: the program picks its own address.
    pub listen_flag: Option<String>,
    /// Environment variables to set.
    pub env: Vec<(String, String)>,
    /// Environment variables to remove (inherited settings that would change its behaviour).
    pub env_remove: Vec<String>,
    /// Where its stderr goes (appended across restarts).
    pub log: PathBuf,
    /// Longest wait for the first stdout line.
    pub start_timeout: Duration,
    /// Longest wait for an exit after SIGTERM before [`LocalProcess::stop`] kills it.
    pub stop_timeout: Duration,
}

impl ProcessSpec {
    /// `program args` with its log at `log`, no listen flag, `RUST_LOG=info`, 30 s to start and
    /// 15 s to stop.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>, log: impl Into<PathBuf>) -> Self {
        ProcessSpec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            listen_flag: None,
            env: vec![("RUST_LOG".into(), "info".into())],
            env_remove: Vec::new(),
            log: log.into(),
            start_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(15),
        }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets (or replaces) an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }
}

/// The running part of a [`LocalProcess`].
#[derive(Debug)]
struct Running {
    /// The child (`kill_on_drop`).
    child: Child,
    /// Its pid, kept because `Child::id` is `None` once it has been reaped.
    pid: u32,
}

/// A child process that serves on a loopback address, started and restarted from its spec.
#[derive(Debug)]
pub struct LocalProcess {
    /// How to start it.
    spec: ProcessSpec,
    /// The address from its first start (kept while it is down, reused on restart).
    addr: Option<SocketAddr>,
    /// The process, while started (`None` once stopped, killed or reaped).
    running: Option<Running>,
}

impl LocalProcess {
    /// A process that is not started yet.
    pub fn new(spec: ProcessSpec) -> Self {
        LocalProcess {
            spec,
            addr: None,
            running: None,
        }
    }

    /// Starts a process from `spec`.
    ///
    /// # Errors
    /// As [`LocalProcess::start`].
    pub async fn spawn(spec: ProcessSpec) -> Result<Self, LocalClusterError> {
        let mut process = LocalProcess::new(spec);
        process.start().await?;
        Ok(process)
    }

    /// Starts the process (on its previous address if it ran before) and waits for its first
    /// stdout line, which must end with `http://ADDR`. Does nothing if it is running.
    ///
    /// # Errors
    /// The log cannot be opened, the program cannot be started, or it exits, stays silent past
    /// the start timeout or prints something else first.
    pub async fn start(&mut self) -> Result<(), LocalClusterError> {
        if self.running.is_some() {
            return Ok(());
        }
        let spec = &self.spec;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(LocalClusterError::io(format!(
                "cannot open {}",
                spec.log.display()
            )))?;
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args);
        if let Some(flag) = &spec.listen_flag {
            let listen = self
                .addr
                .map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
            cmd.args([flag, &listen]);
        }
        for key in &spec.env_remove {
            cmd.env_remove(key);
        }
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            // Its own process group: a terminal's Ctrl-C reaches only the parent, which stops
            // its children in order instead of all at once.
            .process_group(0)
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. It makes the
        // kernel kill the child when the thread that started it ends, e.g. when the parent is
        // killed with SIGKILL and cannot run its drops, so no process is ever left behind.
        unsafe {
            cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from));
        }
        let mut child = cmd
            .spawn()
            .map_err(LocalClusterError::io(format!("cannot start {}", spec.name)))?;
        let fail = |message: String| LocalClusterError::Start {
            name: spec.name.clone(),
            message,
            log: spec.log.clone(),
        };
        let pid = child.id().ok_or_else(|| fail("exited at once".into()))?;
        let stdout = child.stdout.take().ok_or_else(|| fail("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(spec.start_timeout, lines.next_line())
            .await
            .map_err(|_| fail(format!("no answer within {:?}", spec.start_timeout)))?
            .map_err(|e| fail(e.to_string()))?
            .ok_or_else(|| fail("exited at start".into()))?;
        let addr = line
            .rsplit("http://")
            .next()
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| fail(format!("unexpected first line {line:?}")))?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.addr = Some(addr);
        self.running = Some(Running { child, pid });
        Ok(())
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// How it is started.
    pub fn spec(&self) -> &ProcessSpec {
        &self.spec
    }

    /// Whether it has been started and not stopped, killed or reaped since.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The address it serves on (the last one while it is down; `None` before its first start).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// `http://ADDR` (the last address while it is down; empty before its first start).
    pub fn url(&self) -> String {
        self.addr.map(|a| format!("http://{a}")).unwrap_or_default()
    }

    /// Its pid while running.
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.pid)
    }

    /// Where its stderr goes.
    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }

    /// Its stderr so far, over all its starts (empty if unreadable).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.spec.log).unwrap_or_default()
    }

    /// Sends `signal` (nothing once it is stopped or reaped).
    pub fn signal(&self, signal: Signal) {
        if let Some(running) = &self.running {
            // The pid is ours until we reap it: a signal cannot reach another process.
            let _ = nix::sys::signal::kill(Pid::from_raw(running.pid as i32), signal);
        }
    }

    /// SIGSTOP, then waits until the kernel reports every thread stopped, so that nothing sent
    /// to it afterwards is handled before [`LocalProcess::resume`].
    ///
    /// # Errors
    /// It is not running, or not every thread stopped within 5 s.
    pub async fn pause(&self) -> Result<(), LocalClusterError> {
        let pid = self.pid().ok_or_else(|| self.not_running())?;
        self.signal(Signal::SIGSTOP);
        eventually(PAUSE_TIMEOUT, || async { all_threads_stopped(pid).then_some(()) })
            .await
            .ok_or_else(|| LocalClusterError::Timeout {
                name: self.spec.name.clone(),
                what: "stop (SIGSTOP)",
                after: PAUSE_TIMEOUT,
            })
    }

    /// SIGCONT: undoes [`LocalProcess::pause`].
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    /// SIGKILL and reap (a paused process is killed too). Its address is kept for a restart.
    pub async fn kill(&mut self) {
        if let Some(mut running) = self.running.take() {
            let _ = running.child.kill().await;
        }
    }

    /// Waits at most `within` for it to exit by itself (after a signal sent with
    /// [`LocalProcess::signal`]) and answers how it exited.
    ///
    /// # Errors
    /// It is not running, still running after `within`, or cannot be waited for.
    pub async fn wait(&mut self, within: Duration) -> Result<ExitStatus, LocalClusterError> {
        let name = self.spec.name.clone();
        let running = self
            .running
            .as_mut()
            .ok_or_else(|| LocalClusterError::NotRunning { name: name.clone() })?;
        let status = tokio::time::timeout(within, running.child.wait())
            .await
            .map_err(|_| LocalClusterError::Timeout {
                name: name.clone(),
                what: "exit",
                after: within,
            })?
            .map_err(LocalClusterError::io(format!("cannot wait for {name}")))?;
        self.running = None;
        Ok(status)
    }

    /// SIGTERM (its graceful stop), then waits for the exit; kills it if it takes longer than
    /// the spec's stop timeout.
    ///
    /// # Errors
    /// It is not running, or did not exit in time (it has been killed then).
    pub async fn stop(&mut self) -> Result<ExitStatus, LocalClusterError> {
        self.resume();
        self.signal(Signal::SIGTERM);
        let within = self.spec.stop_timeout;
        match self.wait(within).await {
            Err(LocalClusterError::Timeout { name, .. }) => {
                self.kill().await;
                Err(LocalClusterError::StopTimeout { name, after: within })
            }
            other => other,
        }
    }

    /// Stops it gracefully if it runs, then starts it again on the same address.
    ///
    /// # Errors
    /// As [`LocalProcess::start`]; a stop that needed a kill is not an error here.
    pub async fn restart(&mut self) -> Result<(), LocalClusterError> {
        if self.is_running() {
            match self.stop().await {
                Ok(_) | Err(LocalClusterError::StopTimeout { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        self.start().await
    }

    fn not_running(&self) -> LocalClusterError {
        LocalClusterError::NotRunning {
            name: self.spec.name.clone(),
        }
    }
}

/// Whether every thread of `pid` is in state `T` (stopped), per `/proc/PID/task/*/stat`.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                // The state follows the command name, which is in parentheses and may hold spaces.
                stat.rsplit(')')
                    .next()
                    .map(|rest| rest.trim_start().starts_with('T'))
            })
            .unwrap_or(false)
    })
}
