//! Finding OpenCode processes on this machine: what they are (mode, command line, working
//! directory), what they use (CPU, memory) and which TCP ports they listen on. Shared by the
//! components that need it (the `process_scan` source, `opencode_sse` discovery).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use regex::Regex;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

use crate::event::ProcessInfo;

/// Process names that are OpenCode.
pub fn default_names() -> Vec<String> {
    vec!["opencode".into()]
}

/// Command lines that are OpenCode: the native binary of the npm package, a bare `opencode`,
/// and the node/bun launcher.
pub fn default_patterns() -> Vec<String> {
    vec![
        r"opencode-(darwin|linux|windows)-(arm64|x64)[^/ ]*/bin/opencode".into(),
        r"(^|/)opencode(\s|$)".into(),
        r"(^|/)(node|bun)\s+\S*opencode-ai/bin/opencode".into(),
    ]
}

/// Finds OpenCode processes; keep one to get CPU % between calls.
///
/// Cheap when nothing starts: each scan lists `/proc` and reads only the processes it has not
/// seen yet (to tell whether they are OpenCode) and the OpenCode ones (CPU, memory), not every
/// process on the machine.
pub struct Scanner {
    sys: System,
    names: Vec<String>,
    patterns: Vec<Regex>,
    min_memory: u64,
    /// Every process seen (OpenCode or not), and which of them are OpenCode.
    seen: HashSet<u32>,
    matched: HashSet<u32>,
    /// Listening sockets (inode -> port), read again when the OpenCode processes change and at
    /// most every [`PORTS_EVERY`] otherwise: reading them walks the kernel's whole TCP table.
    listening: HashMap<u64, u16>,
    ports_read: Option<(std::time::Instant, Vec<u32>)>,
    /// When the OpenCode processes last changed.
    pids_changed: std::time::Instant,
}

/// How stale the listening ports of unchanged processes may get.
const PORTS_EVERY: Duration = Duration::from_secs(10);
/// How long after the OpenCode processes change their ports are read at every scan.
const NEW_PROCESS: Duration = Duration::from_secs(30);

/// The processes running now (thread-group leaders: `/proc` lists no threads).
fn running_pids() -> HashSet<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

impl Scanner {
    /// OpenCode is a process named one of `names` or whose command line matches one of
    /// `patterns`, using at least `min_memory_mb`.
    pub fn new(names: &[String], patterns: &[String], min_memory_mb: u64) -> anyhow::Result<Scanner> {
        Ok(Scanner {
            sys: System::new(),
            names: names.to_vec(),
            patterns: patterns.iter().map(|p| Regex::new(p)).collect::<Result<_, _>>()?,
            min_memory: min_memory_mb * 1024 * 1024,
            seen: HashSet::new(),
            matched: HashSet::new(),
            listening: HashMap::new(),
            ports_read: None,
            pids_changed: std::time::Instant::now(),
        })
    }

    /// The listening sockets, read again when `pids` changed or they are old.
    fn listening(&mut self, pids: &[Pid]) -> &HashMap<u64, u16> {
        let mut pids: Vec<u32> = pids.iter().map(|p| p.as_u32()).collect();
        pids.sort_unstable();
        let now = std::time::Instant::now();
        if self.ports_read.as_ref().is_none_or(|(_, seen)| *seen != pids) {
            self.pids_changed = now;
        }
        // Servers open their port a moment after they start: look often while one is new.
        let settled = now.duration_since(self.pids_changed) > NEW_PROCESS;
        let fresh = settled && self.ports_read.as_ref().is_some_and(|(at, _)| at.elapsed() < PORTS_EVERY);
        if !fresh {
            self.listening = if pids.is_empty() { HashMap::new() } else { listening_inodes() };
            self.ports_read = Some((now, pids));
        }
        &self.listening
    }

    /// A scanner with the default names and patterns.
    pub fn with_defaults() -> Scanner {
        Scanner::new(&default_names(), &default_patterns(), 0).expect("default patterns compile")
    }

    pub fn scan(&mut self) -> Vec<ProcessInfo> {
        let kind = ProcessRefreshKind::nothing()
            .with_cpu()
            .with_memory()
            .with_cmd(UpdateKind::OnlyIfNotSet)
            .with_cwd(UpdateKind::OnlyIfNotSet)
            .with_exe(UpdateKind::OnlyIfNotSet);
        let running = running_pids();
        let to_pids = |set: &mut dyn Iterator<Item = u32>| set.map(Pid::from_u32).collect::<Vec<_>>();
        // Gone: forgotten (and dropped from the table).
        let gone = to_pids(&mut self.seen.iter().copied().filter(|p| !running.contains(p)));
        if !gone.is_empty() {
            self.sys.refresh_processes_specifics(ProcessesToUpdate::Some(&gone), true, ProcessRefreshKind::nothing());
        }
        self.seen.retain(|p| running.contains(p));
        self.matched.retain(|p| running.contains(p));
        // New: read once to tell whether they are OpenCode.
        let new = to_pids(&mut running.iter().copied().filter(|p| !self.seen.contains(p)));
        if !new.is_empty() {
            self.sys.refresh_processes_specifics(ProcessesToUpdate::Some(&new), true, kind);
            for pid in &new {
                let Some(p) = self.sys.process(*pid) else { continue };
                let name = p.name().to_string_lossy();
                let joined = p.cmd().iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
                if p.thread_kind().is_none()
                    && (self.names.iter().any(|n| *n == name) || self.patterns.iter().any(|r| r.is_match(&joined)))
                {
                    self.matched.insert(pid.as_u32());
                }
            }
            self.seen.extend(new.iter().map(|p| p.as_u32()));
        }
        // OpenCode's own: CPU and memory now (CPU % is over the time since the last scan).
        let mine = to_pids(&mut self.matched.iter().copied());
        let fresh: HashSet<u32> = new.iter().map(|p| p.as_u32()).collect();
        let old: Vec<Pid> = mine.iter().copied().filter(|p| !fresh.contains(&p.as_u32())).collect();
        if !old.is_empty() {
            self.sys.refresh_processes_specifics(ProcessesToUpdate::Some(&old), true, kind);
        }
        let listening = self.listening(&mine).clone();
        let mut out = Vec::new();
        for pid in mine {
            let Some(p) = self.sys.process(pid) else { continue };
            if p.memory() < self.min_memory {
                continue;
            }
            let name = p.name().to_string_lossy().into_owned();
            let cmdline: Vec<String> = p.cmd().iter().map(|a| a.to_string_lossy().into_owned()).collect();
            let pid = pid.as_u32();
            out.push(ProcessInfo {
                change: String::new(),
                pid,
                parent: p.parent().map(|p| p.as_u32()),
                name,
                mode: mode_of(&cmdline),
                cpu_percent: p.cpu_usage(),
                memory_bytes: p.memory(),
                uptime_secs: p.run_time(),
                cwd: p.cwd().map(|c| c.display().to_string()),
                ports: ports_of(pid, &listening),
                cmdline,
            });
        }
        out.sort_by_key(|p| p.pid);
        out
    }
}

/// What an OpenCode process is doing, from its command line.
pub fn mode_of(cmdline: &[String]) -> String {
    let first = cmdline.first().map(|s| s.rsplit('/').next().unwrap_or(s)).unwrap_or("");
    let args: Vec<&str> = cmdline.iter().skip(1).map(String::as_str).collect();
    if matches!(first, "node" | "bun") {
        return "launcher".into();
    }
    if args.contains(&"--stdio") {
        return "lsp".into();
    }
    // The first subcommand named (option values such as `--port 1` are not subcommands).
    args.iter().find_map(|a| ["serve", "web", "acp", "run"].into_iter().find(|m| m == a)).unwrap_or("tui").into()
}

/// Socket inode -> port, for every TCP socket in LISTEN state.
fn listening_inodes() -> HashMap<u64, u16> {
    let mut out = HashMap::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEX_IP:HEX_PORT; st 0A is LISTEN; field 9 is the inode.
            if f.len() > 9 && f[3] == "0A" {
                let port = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
                if let (Some(port), Ok(inode)) = (port, f[9].parse::<u64>()) {
                    out.insert(inode, port);
                }
            }
        }
    }
    out
}

fn ports_of(pid: u32, listening: &HashMap<u64, u16>) -> Vec<u16> {
    let mut ports: Vec<u16> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let s = l.to_string_lossy();
            let inode = s.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok()?;
            listening.get(&inode).copied()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn modes_come_from_the_command_line() {
        assert_eq!(mode_of(&v("/x/opencode-linux-x64/bin/opencode serve --port 4096")), "serve");
        assert_eq!(mode_of(&v("opencode --port 1 run hello")), "run");
        assert_eq!(mode_of(&v("opencode")), "tui");
        assert_eq!(mode_of(&v("opencode web")), "web");
        assert_eq!(mode_of(&v("opencode acp")), "acp");
        assert_eq!(mode_of(&v("/usr/bin/node /x/node_modules/opencode-ai/bin/opencode serve")), "launcher");
        assert_eq!(mode_of(&v("opencode run /x/langserver.js --stdio")), "lsp");
    }

    #[test]
    fn finds_a_listening_process_with_its_port() {
        // This test process itself, matched by its name, listening on a port.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Matched by its command line: Linux cuts process names to 15 characters.
        let me = regex::escape(&std::env::args().next().unwrap());
        let mut s = Scanner::new(&[], &[me], 0).unwrap();
        let found = s.scan();
        let p = found.iter().find(|p| p.pid == std::process::id()).expect("found itself");
        assert!(p.ports.contains(&port), "{:?}", p.ports);
        assert!(p.memory_bytes > 0 && p.cwd.is_some());
    }
}
