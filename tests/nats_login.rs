//! Logging in to a real `nats-server`: TLS with our own CA plus user and password, a token, an
//! NKey, a credentials file (an operator-mode server: operator, account and user JWTs made
//! here and signed with NKeys). Each time three message events go agent-side `nats` sink → server → `nats` source and
//! arrive typed; a wrong password is said plainly and delivers nothing.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const MESSAGES: &str = r#"{"id": "msg_1", "sessionID": "ses_1", "role": "assistant", "tokens": {"input": 10, "output": 1}, "timeCreated": 1764800000000}
{"id": "msg_2", "sessionID": "ses_1", "role": "assistant", "tokens": {"input": 20, "output": 2}, "timeCreated": 1764800001000}
{"id": "msg_3", "sessionID": "ses_1", "role": "assistant", "tokens": {"input": 30, "output": 3}, "timeCreated": 1764800002000}"#;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A JetStream server with `settings` (its authorization and TLS blocks); its port.
fn server(program: &Path, dir: &Path, name: &str, settings: &str) -> (Server, u16) {
    let port = free_port();
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n{settings}\n",
            dir.join(format!("{name}-store")).display()
        ),
    )
    .unwrap();
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(program)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let ended = server.0.try_wait().unwrap().is_some();
        assert!(
            !ended && start.elapsed() < Duration::from_secs(20),
            "nats-server ({name}) did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

/// Sends the three messages with `login` (TOML lines) and reads them back; the receiver's
/// events and the sender's log.
fn round_trip(dir: &Path, name: &str, url: &str, login: &str) -> (Vec<serde_json::Value>, String) {
    std::fs::write(dir.join("messages.jsonl"), MESSAGES).unwrap();
    let sender = dir.join(format!("{name}-send.toml"));
    std::fs::write(
        &sender,
        format!(
            "[sources.gen]\ntype = \"exec\"\nkind = \"message\"\nmode = \"once\"\ncommand = [\"cat\", \"messages.jsonl\"]\n\
             [sinks.team]\ntype = \"nats\"\ninputs = [\"gen\"]\nurl = \"{url}\"\nhost = \"laptop-7\"\n{login}\n"
        ),
    )
    .unwrap();
    let env = [("OCPIPE_DATA_DIR", dir.join(format!("{name}-send-state")).display().to_string())];
    let run = Running::start_args_in(dir, &["run", &sender.display().to_string()], &env);
    let (status, send_log) = run.finish(Duration::from_secs(60));
    if !status.success() || final_counter(&send_log, "team", "sent") == 0 {
        return (Vec::new(), send_log);
    }
    let out = dir.join(format!("{name}-got.jsonl"));
    let receiver = dir.join(format!("{name}-receive.toml"));
    std::fs::write(
        &receiver,
        format!(
            "[sources.team]\ntype = \"nats\"\nurl = \"{url}\"\n{login}\n\
             [sinks.out]\ntype = \"jsonl\"\ninputs = [\"team\"]\npath = \"{}\"\n",
            out.display()
        ),
    )
    .unwrap();
    let env = [("OCPIPE_DATA_DIR", dir.join(format!("{name}-receive-state")).display().to_string())];
    let rx = Running::start_args_in(dir, &["run", &receiver.display().to_string()], &env);
    let lines = || std::fs::read_to_string(&out).unwrap_or_default().lines().count();
    let start = std::time::Instant::now();
    while lines() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{name}: the three messages did not arrive: {}\nsender: {send_log}",
            rx.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    rx.stop_with_log();
    let got = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (got, send_log)
}

fn assert_arrived(got: &[serde_json::Value], how: &str, log: &str) {
    let ids: Vec<&str> = got.iter().filter_map(|v| v["id"].as_str()).collect();
    assert_eq!(ids, ["msg_1", "msg_2", "msg_3"], "{how}: {got:?}\n{log}");
    assert_eq!(got[2]["tokens"]["input"], 30, "{how}: typed and whole");
}

#[test]
fn every_way_to_log_in_carries_events_and_a_wrong_password_or_ca_is_said() {
    let Some(program) = require("nats-server") else { return };
    let Some(openssl) = require("openssl") else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // A CA of our own and a server certificate for 127.0.0.1; another CA.
    test_certificates(&openssl, d);

    // TLS, user and password.
    let tls = format!(
        "tls {{ cert_file: \"{0}/server.pem\", key_file: \"{0}/server.key\" }}\n\
         authorization {{ users = [ {{ user: alice, password: s3cret-pw }} ] }}",
        d.display()
    );
    let (_s, port) = server(&program, d, "tls", &tls);
    let url = format!("tls://127.0.0.1:{port}");
    let ca = format!("tls = {{ ca_file = \"{}\" }}", d.join("ca.pem").display());
    let (got, log) = round_trip(d, "tls", &url, &format!("user = \"alice\"\npassword = \"s3cret-pw\"\n{ca}"));
    assert_arrived(&got, "tls + password", &log);

    // The password changed on the server and not here: said, nothing delivered, never shown.
    let quick = "connect_timeout_secs = 1\nack_timeout_secs = 1";
    let login = format!("user = \"alice\"\npassword = \"old-pw\"\n{ca}\n{quick}");
    let (got, log) = round_trip(d, "wrong", &url, &login);
    assert!(got.is_empty(), "{got:?}");
    assert!(log.contains("the cluster refused the login"), "the log says why and what to check: {log}");
    assert!(!log.contains("old-pw"), "{log}");
    assert_eq!(final_counter(&log, "team", "sent"), 0, "{log}");
    // A CA that did not sign the server's certificate: said as such.
    let other = format!("tls = {{ ca_file = \"{}\" }}", d.join("other.pem").display());
    let login = format!("user = \"alice\"\npassword = \"s3cret-pw\"\n{other}\n{quick}");
    let (got, log) = round_trip(d, "other-ca", &url, &login);
    assert!(got.is_empty(), "{got:?}");
    assert!(log.contains("the TLS handshake") && log.contains("`tls.ca_file`"), "the log says what to check: {log}");

    // A token.
    let (_t, port) = server(&program, d, "token", "authorization { token: \"t0ken-abc\" }");
    let (got, log) = round_trip(d, "token", &format!("nats://127.0.0.1:{port}"), "token = \"t0ken-abc\"");
    assert_arrived(&got, "token", &log);

    // A credentials file: the server trusts an operator, which signed an account, which signed
    // the user whose JWT and seed the file holds.
    let operator = nkeys::KeyPair::new_operator();
    let system = nkeys::KeyPair::new_account();
    let account = nkeys::KeyPair::new_account();
    let holder = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator,
        serde_json::json!({"type": "operator", "version": 2, "system_account": system.public_key()}),
    );
    let system_jwt = jwt(&operator, &system, serde_json::json!({"type": "account", "version": 2}));
    let account_jwt = jwt(
        &operator,
        &account,
        serde_json::json!({"type": "account", "version": 2, "limits": {
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1,
            "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}}),
    );
    let user_jwt = jwt(
        &account,
        &holder,
        serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
    );
    std::fs::write(
        d.join("user.creds"),
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            holder.seed().unwrap()
        ),
    )
    .unwrap();
    let settings = format!(
        "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{ {sys}: {system_jwt}, {}: {account_jwt} }}",
        account.public_key(),
        sys = system.public_key()
    );
    let (_c, port) = server(&program, d, "creds", &settings);
    let creds = format!("credentials_file = \"{}\"", d.join("user.creds").display());
    let (got, log) = round_trip(d, "creds", &format!("nats://127.0.0.1:{port}"), &creds);
    assert_arrived(&got, "credentials file", &log);

    // An NKey.
    let user = nkeys::KeyPair::new_user();
    let (_n, port) =
        server(&program, d, "nkey", &format!("authorization {{ users = [ {{ nkey: {} }} ] }}", user.public_key()));
    let seed = user.seed().unwrap();
    let (got, log) = round_trip(d, "nkey", &format!("nats://127.0.0.1:{port}"), &format!("nkey = \"{seed}\""));
    assert_arrived(&got, "nkey", &log);
}

/// A NATS JWT (ed25519-nkey) about `subject`, signed by `issuer`, with `nats` as its claims.
fn jwt(issuer: &nkeys::KeyPair, subject: &nkeys::KeyPair, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "jti": format!("ocpipe-test-{}-{now}", subject.public_key()),
        "iat": now,
        "iss": issuer.public_key(),
        "name": "ocpipe-test",
        "sub": subject.public_key(),
        "nats": nats,
    });
    let body = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let signature = issuer.sign(body.as_bytes()).unwrap();
    format!("{body}.{}", b64(&signature))
}
