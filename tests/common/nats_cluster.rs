//! A three-node NATS JetStream cluster on loopback ports (Debian's `nats-server`, routes between
//! the nodes), for the tests and the benchmark.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Node {
    client: u16,
    monitor: u16,
    config: PathBuf,
    child: Option<Child>,
}

/// Three `nats-server`s with JetStream, routed to each other.
pub struct Cluster {
    program: PathBuf,
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(program: PathBuf) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16, u16)> = (0..3).map(|_| (free_port(), free_port(), free_port())).collect();
        let routes: Vec<String> = ports.iter().map(|(_, r, _)| format!("nats-route://127.0.0.1:{r}")).collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, (client, route, monitor))| {
                let store = dir.path().join(format!("n{i}"));
                let config = dir.path().join(format!("n{i}.conf"));
                std::fs::write(
                    &config,
                    format!(
                        "server_name: n{i}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                         jetstream {{ store_dir: \"{}\" }}\n\
                         cluster {{ name: ocpipe-test\n listen: 127.0.0.1:{route}\n routes: [{}] }}\n",
                        store.display(),
                        routes.join(", ")
                    ),
                )
                .unwrap();
                Node { client: *client, monitor: *monitor, config, child: None }
            })
            .collect();
        let mut c = Cluster { program, nodes, _dir: dir };
        for i in 0..3 {
            c.up(i);
        }
        c.wait_ready();
        c
    }

    pub fn up(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        assert!(n.child.is_none());
        n.child = Some(
            Command::new(&self.program)
                .arg("-c")
                .arg(&n.config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }

    /// `kill -9`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every node up and the JetStream meta group has a leader.
    pub fn wait_ready(&self) {
        let start = Instant::now();
        let has_leader = |monitor: u16| {
            let url = format!("http://127.0.0.1:{monitor}/jsz");
            let out = Command::new("curl").args(["-s", "--max-time", "2", &url]).output().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["meta_cluster"]["leader"].as_str().is_some_and(|l| !l.is_empty())
        };
        while !self.nodes.iter().filter(|n| n.child.is_some()).all(|n| has_leader(n.monitor)) {
            assert!(start.elapsed() < Duration::from_secs(60), "the cluster's JetStream found no leader in 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.client)).collect::<Vec<_>>().join(",")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
