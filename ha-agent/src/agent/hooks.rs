//! Role hooks: keepalived-compatible notify scripts, role-dependent
//! services and interfaces that follow the role. Hooks run on a task of
//! their own, one group's in order, each under a timeout; a hook that fails
//! or hangs is logged and killed. Queuing a hook never waits: the ownership
//! write and GARP never wait on a hook.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::sync::mpsc;
use tracing::{info, warn};

use ha_core::{
    node::{Hook, NotifyKind},
    vrrp::machine::Role,
};

use crate::{config::GroupConfig, status::RoleHookStatus};

/// One hook to run.
#[derive(Debug, Clone)]
struct Job {
    /// What it is, for logs.
    what: String,
    action: Action,
    /// The service or role interface it is for (recorded on the board).
    subject: Option<Subject>,
}

/// A role-dependent service or interface, and what its role asks of it.
#[derive(Debug, Clone)]
struct Subject {
    group: String,
    kind: &'static str,
    name: String,
    wanted: &'static str,
}

/// What the hooks last did for each service and role interface, for the
/// status (the cluster view's "services running"). The hook task writes
/// it; the VRRP loop only tries the lock.
#[derive(Debug, Clone, Default)]
pub struct Board(Arc<Mutex<BTreeMap<BoardKey, RoleHookStatus>>>);

/// Group, kind, name.
type BoardKey = (String, &'static str, String);

impl Board {
    fn record(&self, s: &Subject, outcome: &str, detail: Option<String>) {
        let at_unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.insert(
            (s.group.clone(), s.kind, s.name.clone()),
            RoleHookStatus {
                group: s.group.clone(),
                kind: s.kind.to_owned(),
                name: s.name.clone(),
                wanted: s.wanted.to_owned(),
                outcome: outcome.to_owned(),
                detail,
                at_unix_ms,
            },
        );
    }

    /// The board now, unless the hook task holds it this instant.
    pub fn try_snapshot(&self) -> Option<Vec<RoleHookStatus>> {
        self.0
            .try_lock()
            .ok()
            .map(|m| m.values().cloned().collect())
    }
}

#[derive(Debug, Clone)]
enum Action {
    /// A command (argv).
    Command(Vec<String>),
    /// An interface set administratively up (true) or down.
    Link(String, bool),
}

/// The hook runner of one group.
#[derive(Debug)]
pub struct Hooks {
    /// Queue to the group's hook task.
    tx: mpsc::UnboundedSender<Job>,
    group: String,
    /// The task, awaited on a graceful stop so the last hooks run.
    task: tokio::task::JoinHandle<()>,
    /// The group's configuration (script, services).
    notify: Option<PathBuf>,
    services: Vec<crate::config::Service>,
    role_interfaces: Vec<String>,
}

impl Hooks {
    /// Starts the hook task of `group` on `rt` (the agent's hook runtime:
    /// never the VRRP loop's thread, which a fork must not hold up).
    pub fn spawn(group: &GroupConfig, rt: &tokio::runtime::Handle, board: Board) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let timeout = Duration::from_millis(group.hook_timeout_ms);
        let task = {
            rt.spawn(async move {
                while let Some(job) = rx.recv().await {
                    // Recorded here, never on the VRRP loop's thread (which
                    // queues the job and must not wait on this lock).
                    if let Some(s) = &job.subject {
                        board.record(s, "pending", None);
                    }
                    let outcome = run(&job, timeout).await;
                    if let Some(s) = &job.subject {
                        match outcome {
                            Ok(()) => board.record(s, "done", None),
                            Err(Failure::TimedOut(why)) => board.record(s, "timed out", Some(why)),
                            Err(Failure::Failed(why)) => board.record(s, "failed", Some(why)),
                        }
                    }
                }
            })
        };
        Hooks {
            tx,
            group: group.name.clone(),
            task,
            notify: group.notify.clone(),
            services: group.services.clone(),
            role_interfaces: group.role_interfaces.clone(),
        }
    }

    fn queue(&self, what: String, argv: Vec<String>, subject: Option<Subject>) {
        if !argv.is_empty() {
            self.send(what, Action::Command(argv), subject);
        }
    }

    fn send(&self, what: String, action: Action, subject: Option<Subject>) {
        let _ = self.tx.send(Job {
            what,
            action,
            subject,
        });
    }

    fn subject(&self, kind: &'static str, name: &str, wanted: &'static str) -> Option<Subject> {
        Some(Subject {
            group: self.group.clone(),
            kind,
            name: name.to_owned(),
            wanted,
        })
    }

    /// Runs what is queued (each hook still under its timeout) and ends the
    /// task: the last hooks of a graceful stop are not lost.
    pub async fn finish(self) {
        drop(self.tx);
        let _ = self.task.await;
    }

    /// Queues `hook`.
    pub fn queue_hook(&self, hook: &Hook) {
        match hook {
            Hook::Notify {
                kind,
                name,
                role,
                priority,
            } => self.notify(*kind, name, *role, *priority),
            Hook::Services { role } => self.services(*role),
            Hook::Path { name, state } => self.path(name, *state),
        }
    }

    /// `<script> PATH <interface> UP|DOWN|NO-CARRIER|QUIET 0`: a heartbeat
    /// path failed or recovered (no role changed).
    fn path(&self, name: &str, state: ha_core::node::PathState) {
        if let Some(script) = &self.notify {
            let state = state.as_str().to_ascii_uppercase();
            self.queue(
                format!("notify PATH {name} {state}"),
                vec![
                    script.display().to_string(),
                    "PATH".into(),
                    name.to_owned(),
                    state,
                    "0".into(),
                ],
                None,
            );
        }
    }

    /// `<script> GROUP|INSTANCE <name> <ROLE> <priority>`. A router leaving
    /// service (graceful stop) is reported as BACKUP: it serves nothing.
    fn notify(&self, kind: NotifyKind, name: &str, role: Role, priority: u8) {
        let role = if role == Role::Initialize {
            Role::Backup
        } else {
            role
        };
        if let Some(script) = &self.notify {
            self.queue(
                format!("notify {} {name} {}", kind.as_str(), role.as_str()),
                vec![
                    script.display().to_string(),
                    kind.as_str().to_owned(),
                    name.to_owned(),
                    role.as_str().to_owned(),
                    priority.to_string(),
                ],
                None,
            );
        }
    }

    /// Starts (MASTER) or stops (BACKUP, FAULT, a stop) the role-dependent
    /// services, and sets the role interfaces up or down: up before the
    /// services start (a DHCP or PPPoE client needs its link), down after
    /// they stopped.
    fn services(&self, role: Role) {
        let master = role == Role::Master;
        if master {
            self.links(true);
        }
        for s in &self.services {
            let (verb, argv) = if master {
                ("start", s.start.clone())
            } else {
                ("stop", s.stop.clone())
            };
            let argv =
                argv.unwrap_or_else(|| vec!["systemctl".into(), verb.into(), s.name.clone()]);
            self.queue(
                format!("{verb} service {}", s.name),
                argv,
                self.subject("service", &s.name, verb),
            );
        }
        if !master {
            self.links(false);
        }
    }

    fn links(&self, up: bool) {
        for iface in &self.role_interfaces {
            let wanted = if up { "up" } else { "down" };
            self.send(
                format!("role interface {iface} {wanted}"),
                Action::Link(iface.clone(), up),
                self.subject("interface", iface, wanted),
            );
        }
    }
}

/// Why a hook did not succeed.
enum Failure {
    Failed(String),
    TimedOut(String),
}

async fn run(job: &Job, timeout: Duration) -> Result<(), Failure> {
    let argv = match &job.action {
        Action::Command(argv) => argv,
        Action::Link(iface, up) => {
            return match crate::iface::set_admin_up(iface, *up) {
                Ok(()) => {
                    info!(hook = %job.what, "hook done");
                    Ok(())
                }
                Err(e) => {
                    warn!(hook = %job.what, cause = %e, "hook failed");
                    Err(Failure::Failed(e.to_string()))
                }
            };
        }
    };
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own process group, so a timeout kills what it started too.
        .process_group(0);
    // SAFETY: only an async-signal-safe syscall runs between fork and exec.
    // Hooks must not inherit the agent's realtime priority.
    unsafe {
        cmd.pre_exec(|| {
            let param = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_OTHER, &param);
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            warn!(hook = %job.what, cause = %e, "hook could not start");
            return Err(Failure::Failed(format!("could not start {}: {e}", argv[0])));
        }
    };
    let pgid = child.id().map(|p| p as i32);
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => {
            info!(hook = %job.what, "hook done");
            Ok(())
        }
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr = stderr.trim();
            warn!(hook = %job.what, status = %out.status, %stderr, "hook failed");
            // The first line of stderr is enough for a status line.
            let first = stderr.lines().next().unwrap_or("");
            Err(Failure::Failed(if first.is_empty() {
                out.status.to_string()
            } else {
                format!(
                    "{}: {}",
                    out.status,
                    first.chars().take(200).collect::<String>()
                )
            }))
        }
        Ok(Err(e)) => {
            warn!(hook = %job.what, cause = %e, "hook failed");
            Err(Failure::Failed(e.to_string()))
        }
        Err(_) => {
            if let Some(pgid) = pgid {
                // SAFETY: plain syscall; the group is the hook's own.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            warn!(hook = %job.what, timeout_ms = timeout.as_millis() as u64, "hook timed out; killed");
            Err(Failure::TimedOut(format!(
                "killed after {} ms (hook_timeout_ms)",
                timeout.as_millis()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(toml: &str) -> GroupConfig {
        toml::from_str(toml).expect("group")
    }

    /// Real processes, real time: a hook that hangs is killed at its timeout
    /// with what it started.
    #[tokio::test]
    async fn a_hung_hook_is_killed_with_what_it_started_at_its_timeout() {
        let pidfile = std::env::temp_dir().join(format!("ha-agent-hook-{}", std::process::id()));
        let g = group(&format!(
            r#"
name = "fw"
hook_timeout_ms = 300
services = [{{ name = "x", start = ["sh", "-c", "sleep 3600 & echo $! > {}; wait"] }}]
vrrp = []
"#,
            pidfile.display()
        ));
        let board = Board::default();
        let hooks = Hooks::spawn(&g, &tokio::runtime::Handle::current(), board.clone());
        let t = std::time::Instant::now();
        hooks.queue_hook(&Hook::Services { role: Role::Master });
        // Pending while it runs.
        let t0 = std::time::Instant::now();
        while board.try_snapshot().is_none_or(|b| b.is_empty())
            && t0.elapsed() < Duration::from_secs(2)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let running = board.try_snapshot().unwrap();
        assert_eq!(
            (running[0].outcome.as_str(), running[0].wanted.as_str()),
            ("pending", "start")
        );
        hooks.finish().await;
        let took = t.elapsed();
        let after = board.try_snapshot().unwrap();
        assert_eq!(
            (
                after[0].group.as_str(),
                after[0].kind.as_str(),
                after[0].name.as_str()
            ),
            ("fw", "service", "x")
        );
        assert_eq!(after[0].outcome, "timed out", "{after:?}");
        assert!(!after[0].running());
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("the hook started its child")
            .trim()
            .parse()
            .expect("a pid");
        let _ = std::fs::remove_file(&pidfile);
        // The grandchild goes with the hook's process group (gone, or a
        // zombie for init to reap), as soon as the kill is delivered.
        let gone = || {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            state.is_empty() || state.contains(") Z")
        };
        let t = std::time::Instant::now();
        while !gone() && t.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(gone(), "process {pid} outlived its hook's timeout");
    }

    #[tokio::test]
    async fn hooks_run_in_order_and_notify_reports_a_stop_as_backup() {
        let out = std::env::temp_dir().join(format!("ha-agent-notify-{}", std::process::id()));
        let script = out.with_extension("sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho \"$@\" >> {}\n", out.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let g = group(&format!(
            "name = \"fw\"\nnotify = \"{}\"\nvrrp = []\n",
            script.display()
        ));
        let hooks = Hooks::spawn(&g, &tokio::runtime::Handle::current(), Board::default());
        for (role, prio) in [
            (Role::Master, 200),
            (Role::Initialize, 200),
            (Role::Fault, 100),
        ] {
            hooks.queue_hook(&Hook::Notify {
                kind: NotifyKind::Group,
                name: "fw".into(),
                role,
                priority: prio,
            });
        }
        hooks.finish().await;
        let lines = std::fs::read_to_string(&out).unwrap_or_default();
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&script);
        assert_eq!(
            lines,
            "GROUP fw MASTER 200\nGROUP fw BACKUP 200\nGROUP fw FAULT 100\n"
        );
    }
}
