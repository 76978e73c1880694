//! What the supervisor sees of a running container: its processes (through the engine's `top`),
//! their connections (from the host's `/proc`, per process by socket inode), and its cgroup's
//! memory and OOM kills; and the summaries written at the end.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::capture::{ConnectionRow, ProcessRow, Snapshot};

/// `ps` columns asked of the engine (`docker top`): the last one keeps its spaces.
pub const PS_ARGS: &str = "-o pid,ppid,etimes,pcpu,rss,args";

pub fn parse_top(titles: &[String], rows: &[Vec<String>]) -> Vec<ProcessRow> {
    let col = |name: &str| titles.iter().position(|t| t.eq_ignore_ascii_case(name));
    let (pid, ppid, elapsed, cpu, rss, cmd) =
        (col("PID"), col("PPID"), col("ELAPSED"), col("%CPU"), col("RSS"), col("COMMAND").or(col("CMD")));
    rows.iter()
        .filter_map(|r| {
            let get = |i: Option<usize>| i.and_then(|i| r.get(i)).map(String::as_str).unwrap_or("");
            Some(ProcessRow {
                pid: get(pid).parse().ok()?,
                ppid: get(ppid).parse().unwrap_or(0),
                elapsed_secs: get(elapsed).parse().unwrap_or(0),
                cpu_percent: get(cpu).parse().unwrap_or(0.0),
                rss_kb: get(rss).parse().unwrap_or(0),
                command: get(cmd).to_string(),
            })
        })
        .collect()
}

/// The pids that are this container's processes as this machine's `/proc` shows them (their
/// cgroup names the container); none when the engine runs elsewhere (its pids are another
/// machine's).
pub fn local_pids(pids: &[u32], container_id: &str) -> Vec<u32> {
    pids.iter()
        .copied()
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(container_id)))
        .collect()
}

/// The TCP and UDP sockets the given (local, checked) pids hold, from `/proc`, and whether
/// their descriptors could be read at all.
pub fn connections(pids: &[u32]) -> (Vec<ConnectionRow>, bool) {
    let mut owner: HashMap<u64, u32> = HashMap::new();
    let mut readable = false;
    for &pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        readable = true;
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && let Some(inode) =
                    target.to_str().and_then(|t| t.strip_prefix("socket:[")).and_then(|t| t.strip_suffix(']'))
                && let Ok(inode) = inode.parse()
            {
                owner.entry(inode).or_insert(pid);
            }
        }
    }
    let Some(&first) = pids.first() else { return (Vec::new(), readable) };
    let mut out = Vec::new();
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        let Ok(table) = std::fs::read_to_string(format!("/proc/{first}/net/{proto}")) else { continue };
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let Some(&pid) = f[9].parse::<u64>().ok().and_then(|i| owner.get(&i)) else { continue };
            let (Some(local), Some(remote)) = (address(f[1]), address(f[2])) else { continue };
            out.push(ConnectionRow {
                pid,
                protocol: proto.trim_end_matches('6').to_string(),
                local,
                remote,
                state: state(proto, f[3]).to_string(),
            });
        }
    }
    (out, readable)
}

/// `0100007F:1F90` → `127.0.0.1:8080` (IPv6: four little-endian words).
fn address(hex_addr: &str) -> Option<String> {
    let (ip, port) = hex_addr.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> =
        (0..ip.len() / 8).map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()).collect::<Option<_>>()?;
    let ip = match words.as_slice() {
        [w] => Ipv4Addr::from(w.swap_bytes()).to_string(),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => format!("[{v6}]"),
            }
        }
        _ => return None,
    };
    Some(format!("{ip}:{port}"))
}

fn state(proto: &str, hex_state: &str) -> &'static str {
    if proto.starts_with("udp") {
        return if hex_state == "07" { "UNCONN" } else { "ESTABLISHED" };
    }
    match hex_state {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "03" => "SYN_RECV",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        "06" => "TIME_WAIT",
        "07" => "CLOSE",
        "08" => "CLOSE_WAIT",
        "09" => "LAST_ACK",
        "0A" => "LISTEN",
        "0B" => "CLOSING",
        _ => "UNKNOWN",
    }
}

/// The cgroup (v2) directory of a host pid, when it can be read here.
pub fn cgroup_of(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    dir.join("memory.events").exists().then_some(dir)
}

/// The cgroup's memory in use and its OOM kills so far.
pub fn memory(cgroup: &Path) -> (Option<u64>, Option<u64>) {
    let current = std::fs::read_to_string(cgroup.join("memory.current")).ok().and_then(|t| t.trim().parse().ok());
    let kills = std::fs::read_to_string(cgroup.join("memory.events"))
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok()));
    (current, kills)
}

struct Seen {
    row: ProcessRow,
    started_at: String,
    first_seen: String,
    last_seen: String,
    max_rss_kb: u64,
    max_cpu_percent: f64,
}

struct Endpoint {
    protocol: String,
    first_seen: String,
    last_seen: String,
    states: BTreeSet<String>,
    commands: BTreeSet<String>,
}

/// Everything seen over a run, summarised at the end.
#[derive(Default)]
pub struct Observer {
    processes: BTreeMap<u32, Seen>,
    timeline: Vec<Value>,
    endpoints: BTreeMap<String, Endpoint>,
    listening: BTreeSet<String>,
    pub oom_kills: u64,
    snapshots: usize,
    /// Per snapshot, each process's CPU and RSS.
    samples: Vec<Value>,
    /// Whether connections could be read (local engine, readable descriptors).
    pub observable: bool,
}

impl Observer {
    pub fn add(&mut self, s: &Snapshot) {
        self.snapshots += 1;
        let command_of: HashMap<u32, &str> = s.processes.iter().map(|p| (p.pid, p.command.as_str())).collect();
        for p in &s.processes {
            let started_at = chrono::DateTime::parse_from_rfc3339(&s.at)
                .map(|t| (t - chrono::Duration::seconds(p.elapsed_secs as i64)).to_rfc3339())
                .unwrap_or_default();
            let e = self.processes.entry(p.pid).or_insert_with(|| Seen {
                row: p.clone(),
                started_at,
                first_seen: s.at.clone(),
                last_seen: s.at.clone(),
                max_rss_kb: 0,
                max_cpu_percent: 0.0,
            });
            e.last_seen = s.at.clone();
            e.max_rss_kb = e.max_rss_kb.max(p.rss_kb);
            e.max_cpu_percent = e.max_cpu_percent.max(p.cpu_percent);
            e.row.rss_kb = p.rss_kb;
        }
        for c in &s.connections {
            if c.state == "LISTEN" || c.state == "UNCONN" {
                self.listening.insert(format!("{} {}", c.protocol, c.local));
                continue;
            }
            let e = self.endpoints.entry(c.remote.clone()).or_insert_with(|| Endpoint {
                protocol: c.protocol.clone(),
                first_seen: s.at.clone(),
                last_seen: s.at.clone(),
                states: BTreeSet::new(),
                commands: BTreeSet::new(),
            });
            e.last_seen = s.at.clone();
            e.states.insert(c.state.clone());
            e.commands.insert(command_of.get(&c.pid).copied().unwrap_or("?").to_string());
        }
        self.oom_kills = self.oom_kills.max(s.oom_kills.unwrap_or(0));
        let rows: Vec<Value> = s
            .processes
            .iter()
            .map(|p| json!({"pid": p.pid, "cpu_percent": p.cpu_percent, "rss_kb": p.rss_kb}))
            .collect();
        self.samples.push(json!({"at": s.at, "processes": rows}));
        self.timeline.push(json!({
            "at": s.at,
            "processes": s.processes.len(),
            "rss_kb": s.processes.iter().map(|p| p.rss_kb).sum::<u64>(),
            "cpu_percent": s.processes.iter().map(|p| p.cpu_percent).sum::<f64>(),
            "memory_bytes": s.memory_bytes,
            "connections": s.connections.len(),
        }));
    }

    /// `process_tree.json`: every process seen (first and last seen, peak RSS and CPU), the
    /// tree by parent, and the samples over time.
    pub fn process_tree(&self) -> Value {
        let processes: Vec<Value> = self
            .processes
            .values()
            .map(|s| {
                json!({
                    "pid": s.row.pid, "ppid": s.row.ppid, "command": s.row.command, "started_at": s.started_at,
                    "first_seen": s.first_seen, "last_seen": s.last_seen,
                    "max_rss_kb": s.max_rss_kb, "max_cpu_percent": s.max_cpu_percent,
                })
            })
            .collect();
        json!({
            "source": "docker top (host pids)",
            "snapshots": self.snapshots,
            "processes": processes,
            "timeline": self.timeline,
            "samples": self.samples,
        })
    }

    /// `network.json`: distinct remote endpoints with first and last seen.
    pub fn network(&self, mode: &str) -> Value {
        let observable = self.observable;
        let endpoints: Vec<Value> = self
            .endpoints
            .iter()
            .map(|(remote, e)| {
                json!({
                    "remote": remote, "protocol": e.protocol, "first_seen": e.first_seen,
                    "last_seen": e.last_seen, "states": e.states, "processes": e.commands,
                })
            })
            .collect();
        json!({
            "network_mode": mode,
            "observable": observable,
            "how": "the sockets of the container's processes in /proc, by inode, at each poll",
            "snapshots": self.snapshots,
            "endpoints": endpoints,
            "listening": self.listening,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_decode() {
        assert_eq!(address("0100007F:1F90").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(address("0000000000000000FFFF00000100007F:0050").as_deref(), Some("127.0.0.1:80"));
        assert_eq!(address("00000000000000000000000001000000:0016").as_deref(), Some("[::1]:22"));
        let rows = parse_top(
            &["PID", "PPID", "ELAPSED", "%CPU", "RSS", "COMMAND"].map(String::from),
            &[["10", "1", "5", "2.5", "1024", "bash -c echo hi"].map(String::from).to_vec()],
        );
        assert_eq!(rows[0].command, "bash -c echo hi");
        assert_eq!((rows[0].pid, rows[0].ppid, rows[0].rss_kb), (10, 1, 1024));
    }
}
