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
    /// `--cacert`, `--cert`, `--key` and the like.
    tls: Vec<String>,
}

impl Etcdctl {
    fn new(endpoints: String) -> Etcdctl {
        Etcdctl {
            endpoints,
            tls: Vec::new(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints))
            .args(["--dial-timeout=5s", "--command-timeout=15s"])
            // Later flags win: these may shorten the timeouts.
            .args(&self.tls)
            .args(args);
        c
    }

    /// Runs a command to completion; panics with its output unless it
    /// succeeds.
    async fn run(&self, args: &[&str]) -> String {
        self.run_with_input(args, "").await
    }

    async fn run_with_input(&self, args: &[&str], input: &str) -> String {
        let (ok, stdout, stderr) = self.output(args, input).await;
        assert!(
            ok,
            "etcdctl {args:?} failed\nstdout: {stdout}\nstderr: {stderr}"
        );
        stdout
    }

    /// As [`Etcdctl::run`] for a membership change, which ha refuses with
    /// `Unavailable "etcdserver: unhealthy cluster"` (not applied) while
    /// the leader has not heard from enough members lately — right after a
    /// leader change or a promotion: asked again until it is accepted.
    async fn change(&self, args: &[&str]) -> String {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let (ok, stdout, stderr) = self.output(args, "").await;
            if ok {
                return stdout;
            }
            assert!(
                stderr.contains("unhealthy cluster") && std::time::Instant::now() < deadline,
                "etcdctl {args:?} failed\nstdout: {stdout}\nstderr: {stderr}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs a command to completion: whether it succeeded, its stdout and
    /// its stderr.
    async fn output(&self, args: &[&str], input: &str) -> (bool, String, String) {
        let mut command = self.command(args);
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
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
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
        let ctl = Etcdctl::new(c.etcd_endpoints());

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

/// Member `id`'s line in `etcdctl member list -w json`: (is it there, is
/// it a learner).
async fn listed(ctl: &Etcdctl, id: u64) -> Option<bool> {
    let json = ctl.run(&["member", "list", "-w", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&json).expect("member list json");
    v["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["ID"].as_u64() == Some(id))
        .map(|m| m["isLearner"].as_bool().unwrap_or(false))
}

/// The member id in `Member 4 added to cluster 6b0f...` (hex).
fn added_member(out: &str) -> u64 {
    let words: Vec<&str> = out.split_whitespace().collect();
    assert!(
        words.len() >= 3 && words[0] == "Member" && words[2] == "added",
        "unexpected member add output: {out}"
    );
    u64::from_str_radix(words[1], 16).expect("hex member id")
}

/// etcd's member workflow through a follower's gateway: `member add`
/// (the new member is started with that id and joins as the learner it
/// was added as, then becomes a voter once caught up), `member add
/// --learner` + `member promote`, `member update`, `move-leader` and
/// `member remove` — each forwarded to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_changes_membership_through_any_member() {
    if !etcdctl_available() {
        return;
    }
    one_at_a_time(async {
        let mut c = Cluster::start_etcd(3).await;
        let leader = c.healthy().await;
        let follower = (1..=3).find(|&id| id != leader).expect("a follower");
        let via = Etcdctl::new(format!("127.0.0.1:{}", c.etcd[&follower]));

        // member add (a voter once caught up), then start it.
        let port = ha_examples::procs::free_port();
        let out = via
            .change(&[
                "member",
                "add",
                "m4",
                &format!("--peer-urls=http://127.0.0.1:{port}"),
            ])
            .await;
        let id = added_member(&out);
        assert_eq!(id, 4, "the next id never used: {out}");
        assert!(
            out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
            "{out}"
        );
        assert_eq!(
            listed(&via, id).await,
            Some(true),
            "a learner until it catches up"
        );
        c.peer.insert(id, port);
        c.etcd.insert(id, ha_examples::procs::free_port());
        c.spawn_joining(id, Some(follower));
        let deadline = std::time::Instant::now() + PATIENCE;
        while listed(&via, id).await != Some(false) {
            assert!(
                std::time::Instant::now() < deadline,
                "member {id} was not promoted within {PATIENCE:?}\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let four = Etcdctl::new(format!("127.0.0.1:{}", c.etcd[&id]));
        assert_eq!(four.run(&["put", "from/4", "yes"]).await.trim(), "OK");
        assert_eq!(lines(&via.run(&["get", "from/4"]).await), ["from/4", "yes"]);

        // member add --learner, start it, promote it once it has caught
        // up; promoting a voter is refused.
        let port5 = ha_examples::procs::free_port();
        let out = via
            .change(&[
                "member",
                "add",
                "m5",
                "--learner",
                &format!("--peer-urls=http://127.0.0.1:{port5}"),
            ])
            .await;
        let five = added_member(&out);
        assert_eq!(five, 5, "{out}");
        assert_eq!(listed(&via, five).await, Some(true));
        c.peer.insert(five, port5);
        c.etcd.insert(five, ha_examples::procs::free_port());
        c.spawn_joining(five, Some(follower));
        let learner = Etcdctl::new(format!("127.0.0.1:{}", c.etcd[&five]));
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let (ok, out, _) = learner
                .output(&["get", "from/4", "--consistency=s"], "")
                .await;
            if ok && lines(&out) == ["from/4", "yes"] {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "learner {five} did not catch up within {PATIENCE:?}\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            listed(&via, five).await,
            Some(true),
            "not promoted by itself"
        );
        let out = via
            .change(&["member", "promote", &format!("{five:x}")])
            .await;
        assert!(
            out.starts_with(&format!("Member {five:16x} promoted in cluster")),
            "{out}"
        );
        assert_eq!(listed(&via, five).await, Some(false));
        let (ok, _, err) = via
            .output(&["member", "promote", &format!("{five:x}")], "")
            .await;
        assert!(!ok && err.contains("learner"), "a voter promoted: {err}");

        // member update: the same address (a running member's address
        // moves only when it moves); a malformed URL is refused.
        let out = via
            .change(&[
                "member",
                "update",
                &format!("{id:x}"),
                &format!("--peer-urls=http://127.0.0.1:{port}"),
            ])
            .await;
        assert!(
            out.starts_with(&format!("Member {id:16x} updated in cluster")),
            "{out}"
        );
        let (ok, _, err) = via
            .output(
                &[
                    "member",
                    "update",
                    &format!("{id:x}"),
                    "--peer-urls=http://localhost:2380",
                ],
                "",
            )
            .await;
        assert!(!ok && err.contains("IP:port"), "{err}");

        // move-leader to member 4, sent to a follower.
        let all = Etcdctl::new(c.etcd_endpoints());
        let out = all.change(&["move-leader", &format!("{id:x}")]).await;
        assert!(out.contains(&format!("to {id:x}")), "{out}");
        assert_eq!(c.healthy().await, id, "member 4 leads");

        // member remove of a voter, through a member that does not lead.
        let out = via
            .change(&["member", "remove", &format!("{leader:x}")])
            .await;
        assert!(
            out.starts_with(&format!("Member {leader:16x} removed")),
            "{out}"
        );
        assert_eq!(listed(&via, leader).await, None);
        c.kill(leader);
        assert_eq!(via.run(&["put", "after", "remove"]).await.trim(), "OK");

        // member remove of the leader itself (member 4): it hands
        // leadership over, then goes.
        let out = via.change(&["member", "remove", &format!("{id:x}")]).await;
        assert!(
            out.starts_with(&format!("Member {id:16x} removed")),
            "{out}"
        );
        assert_eq!(listed(&via, id).await, None);
        c.kill(id);
        assert_eq!(
            via.run(&["put", "after", "leader removed"]).await.trim(),
            "OK"
        );
        let voters = c.healthy().await;
        assert!(voters != id && voters != leader, "a remaining member leads");
    })
    .await;
}

/// The gateway of a group with TLS: etcdctl with the CA and a client
/// certificate works; without a client certificate, or without TLS, it
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_over_tls_needs_a_client_certificate() {
    if !etcdctl_available() {
        return;
    }
    one_at_a_time(async {
        let c = Cluster::start_etcd_tls(3).await;
        c.healthy().await;
        let tls = c.tls.as_ref().expect("tls");
        let dir = c.dir.path();
        std::fs::write(dir.join("etcdctl-ca.pem"), tls.ca.cert_pem()).expect("ca");
        std::fs::write(dir.join("etcdctl.pem"), &tls.client.cert).expect("cert");
        std::fs::write(dir.join("etcdctl.key"), &tls.client.key).expect("key");
        let endpoints = c
            .etcd
            .values()
            .map(|port| format!("https://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let ca = format!("--cacert={}", dir.join("etcdctl-ca.pem").display());
        let good = Etcdctl {
            endpoints: endpoints.clone(),
            tls: vec![
                ca.clone(),
                format!("--cert={}", dir.join("etcdctl.pem").display()),
                format!("--key={}", dir.join("etcdctl.key").display()),
            ],
        };
        assert_eq!(good.run(&["put", "secure", "yes"]).await.trim(), "OK");
        assert_eq!(
            lines(&good.run(&["get", "secure"]).await),
            ["secure", "yes"]
        );
        let members = good.run(&["member", "list"]).await;
        assert!(
            members.contains(&format!("https://127.0.0.1:{}", c.etcd[&1])),
            "client URLs are https: {members}"
        );

        let no_cert = Etcdctl {
            endpoints: endpoints.clone(),
            tls: vec![
                ca,
                "--dial-timeout=2s".into(),
                "--command-timeout=4s".into(),
            ],
        };
        let (ok, out, err) = no_cert.output(&["get", "secure"], "").await;
        assert!(!ok, "read without a client certificate: {out}");
        let plain = Etcdctl {
            endpoints: c.etcd_endpoints(),
            tls: vec!["--dial-timeout=2s".into(), "--command-timeout=4s".into()],
        };
        let (ok, out, err2) = plain.output(&["get", "secure"], "").await;
        assert!(!ok, "read over plaintext: {out}");
        eprintln!("refused as expected:\n{err}\n{err2}");
    })
    .await;
}
