//! Debian's `etcdctl` (package `etcd-client`, etcd's own command-line
//! client) against three ha-node processes with `--etcd-listen`: every
//! command's output checked against what etcd prints.
//!
//! Without `etcdctl` on the PATH the test fails under `CI=true` (the test
//! setup installs it) and is skipped with a notice elsewhere.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ha_examples::procs::{Cluster, PATIENCE, one_at_a_time};

/// `etcdctl`, or `None` (after saying why) when the test should skip.
fn etcdctl_available() -> bool {
    let found = Command::new("etcdctl")
        .arg("version")
        .env("ETCDCTL_API", "3")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "etcdctl is not installed: install Debian's etcd-client package \
                 (scripts/prereqs.sh does this for scripts/test and .ci/run)"
            );
        }
        eprintln!("NOTICE: etcdctl not found (apt-get install etcd-client); test skipped");
    }
    found
}

struct Etcdctl {
    endpoints: String,
}

impl Etcdctl {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints))
            .args(["--dial-timeout=5s", "--command-timeout=15s"])
            .args(args);
        c
    }

    /// Runs a command to completion; panics with its output unless it
    /// succeeds.
    async fn run(&self, args: &[&str]) -> String {
        self.run_with_input(args, "").await
    }

    async fn run_with_input(&self, args: &[&str], input: &str) -> String {
        let mut command = self.command(args);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let input = input.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut child = command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn etcdctl");
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(input.as_bytes()).expect("write stdin");
            }
            let out = child.wait_with_output().expect("etcdctl output");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "etcdctl {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        })
        .await
        .expect("etcdctl task")
    }

    /// Starts a long-running command (watch, elect): its output lines
    /// arrive on the receiver; the child is killed on drop.
    fn start(&self, args: &[&str]) -> Running {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcdctl");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }
}

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// The next `n` lines of output.
    async fn lines(&mut self, n: usize) -> Vec<String> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + PATIENCE;
        while got.len() < n {
            match self.lines.try_recv() {
                Ok(line) => got.push(line),
                Err(mpsc::TryRecvError::Empty) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "etcdctl printed only {got:?} within {PATIENCE:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    panic!("etcdctl exited after printing {got:?}")
                }
            }
        }
        got
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// The lease id in `lease 694d77aa9e1b2c05 granted with TTL(60s)`.
fn granted_lease(out: &str) -> String {
    let words: Vec<&str> = out.split_whitespace().collect();
    assert!(
        words.len() >= 3 && words[0] == "lease" && words[2] == "granted",
        "unexpected lease grant output: {out}"
    );
    words[1].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_against_a_three_process_group() {
    if !etcdctl_available() {
        return;
    }
    one_at_a_time(async {
        let c = Cluster::start_etcd(3).await;
        c.healthy().await;
        let ctl = Etcdctl {
            endpoints: c.etcd_endpoints(),
        };

        // put / get / del with prefixes and revisions.
        assert_eq!(ctl.run(&["put", "app/a", "1"]).await.trim(), "OK");
        assert_eq!(ctl.run(&["put", "app/b", "2"]).await.trim(), "OK");
        assert_eq!(ctl.run(&["put", "other", "x"]).await.trim(), "OK");
        assert_eq!(
            lines(&ctl.run(&["get", "--prefix", "app/"]).await),
            ["app/a", "1", "app/b", "2"]
        );
        let json = ctl.run(&["get", "app/a", "-w", "json"]).await;
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        let rev_a = v["kvs"][0]["mod_revision"].as_i64().expect("mod_revision");
        assert!(v["header"]["raft_term"].as_u64().unwrap_or(0) > 0, "{json}");
        assert_eq!(ctl.run(&["put", "app/a", "10"]).await.trim(), "OK");
        assert_eq!(
            lines(&ctl.run(&["get", "app/a", &format!("--rev={rev_a}")]).await),
            ["app/a", "1"],
            "a read at an old revision"
        );
        assert_eq!(lines(&ctl.run(&["get", "app/a"]).await), ["app/a", "10"]);
        assert_eq!(
            lines(&ctl.run(&["get", "--prefix", "app/", "--keys-only"]).await)
                .into_iter()
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>(),
            ["app/a", "app/b"]
        );

        // txn from a file (etcdctl reads it on stdin).
        let txn = "value(\"app/b\") = \"2\"\n\nput app/b 3\nget app/b\n\nput app/failed yes\n\n";
        assert_eq!(
            lines(&ctl.run_with_input(&["txn"], txn).await),
            ["SUCCESS", "", "OK", "", "app/b", "3"]
        );
        assert_eq!(
            lines(&ctl.run_with_input(&["txn"], txn).await),
            ["FAILURE", "", "OK"],
            "the compare fails the second time"
        );

        // watch from a past revision: the history, then a live event.
        let mut watch = ctl.start(&["watch", "--prefix", "app/a", &format!("--rev={rev_a}")]);
        assert_eq!(
            watch.lines(6).await,
            ["PUT", "app/a", "1", "PUT", "app/a", "10"]
        );
        ctl.run(&["put", "app/a", "11"]).await;
        assert_eq!(watch.lines(3).await, ["PUT", "app/a", "11"]);
        ctl.run(&["del", "app/a"]).await;
        assert_eq!(watch.lines(2).await, ["DELETE", "app/a"]);
        drop(watch);

        assert_eq!(ctl.run(&["del", "--prefix", "app/"]).await.trim(), "2");
        assert_eq!(ctl.run(&["get", "--prefix", "app/"]).await.trim(), "");

        // leases with attached keys.
        let lease = granted_lease(&ctl.run(&["lease", "grant", "60"]).await);
        assert_eq!(
            ctl.run(&["put", "--lease", &lease, "leased/k", "v"])
                .await
                .trim(),
            "OK"
        );
        assert_eq!(
            ctl.run(&["lease", "keep-alive", "--once", &lease])
                .await
                .trim(),
            format!("lease {lease} keepalived with TTL(60)")
        );
        let ttl = ctl.run(&["lease", "timetolive", "--keys", &lease]).await;
        assert!(
            ttl.starts_with(&format!("lease {lease} granted with TTL(60s), remaining("))
                && ttl.trim_end().ends_with("attached keys([leased/k])"),
            "timetolive: {ttl}"
        );
        assert!(ctl.run(&["lease", "list"]).await.contains(&lease));
        assert_eq!(
            ctl.run(&["lease", "revoke", &lease]).await.trim(),
            format!("lease {lease} revoked")
        );
        assert_eq!(
            ctl.run(&["get", "leased/k"]).await.trim(),
            "",
            "revoked with its lease"
        );
        assert_eq!(
            ctl.run(&["lease", "timetolive", &lease]).await.trim(),
            format!("lease {lease} already expired")
        );

        // lock: the command runs while the lock is held.
        let out = ctl.run(&["lock", "jobs", "echo", "holding"]).await;
        assert_eq!(out.trim(), "holding");
        assert_eq!(
            ctl.run(&["get", "--prefix", "jobs/"]).await.trim(),
            "",
            "the lock key is gone after the command"
        );

        // elect: a candidate wins and is observed.
        let mut alice = ctl.start(&["elect", "leader-of", "alice"]);
        let won = alice.lines(2).await;
        assert!(won[0].starts_with("leader-of/"), "{won:?}");
        assert_eq!(won[1], "alice");
        let mut observer = ctl.start(&["elect", "-l", "leader-of"]);
        assert_eq!(observer.lines(2).await, won, "the observer sees alice lead");
        drop(observer);
        drop(alice);

        // member list and endpoint status.
        let members = ctl.run(&["member", "list"]).await;
        for id in 1..=3u64 {
            let line = format!(
                "{id:x}, started, member-{id}, 127.0.0.1:{}, http://127.0.0.1:{}, false",
                c.peer[&id], c.etcd[&id]
            );
            assert!(
                members.lines().any(|l| l == line),
                "no `{line}` in:\n{members}"
            );
        }
        let status = ctl.run(&["endpoint", "status", "-w", "json"]).await;
        let v: serde_json::Value = serde_json::from_str(&status).expect("status json");
        let statuses = v.as_array().expect("one status per endpoint");
        assert_eq!(statuses.len(), 3, "{status}");
        let leaders: Vec<u64> = statuses
            .iter()
            .map(|s| s["Status"]["leader"].as_u64().expect("leader"))
            .collect();
        assert!(
            leaders
                .iter()
                .all(|&l| l == leaders[0] && (1..=3).contains(&l)),
            "every member names the same leader: {status}"
        );
        assert!(statuses.iter().all(|s| s["Status"]["version"] == "3.5.0"));
    })
    .await;
}
