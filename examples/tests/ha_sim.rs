//! The `ha-sim` command line: exit status, the summary line, traces,
//! history files and the `check` subcommand.

use std::path::PathBuf;
use std::process::{Command, Output};

fn ha_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ha-sim"))
        .args(args)
        .output()
        .expect("ha-sim runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn last_line(o: &Output) -> String {
    stdout(o).lines().last().unwrap_or_default().to_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ha-sim-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn passing_seeds_exit_zero_with_the_summary_as_last_line() {
    let o = ha_sim(&["--seeds", "3", "--start", "10"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let line = last_line(&o);
    let keys: Vec<&str> = line
        .split(' ')
        .map(|kv| kv.split('=').next().unwrap_or_default())
        .collect();
    assert_eq!(
        keys,
        [
            "sim",
            "seeds",
            "violations",
            "unknown_pct",
            "ops",
            "leader_changes",
            "crashes",
            "partitions",
            "conf_changes",
            "snapshots",
            "watch_events",
            "lease_expiries",
            "compactions",
            "txns"
        ],
        "{line}"
    );
    assert!(line.starts_with("sim seeds=3 violations=0 "), "{line}");
}

#[test]
fn a_caught_bug_exits_non_zero_and_leaves_trace_and_history() {
    let dir = scratch("bug");
    let o = ha_sim(&[
        "--workload",
        "registers",
        "--seed",
        "0",
        "--bug",
        "local-reads",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "a bug went unnoticed: {}", stdout(&o));
    let out = stdout(&o);
    assert!(out.contains("first violation:"), "{out}");
    assert!(out.contains("fault schedule:"), "{out}");
    assert!(
        last_line(&o).starts_with("sim seeds=1 violations=1 "),
        "{out}"
    );
    let trace = dir.join("seed-0-m3-local-reads.trace");
    let history = dir.join("seed-0-m3-local-reads.history.jsonl");
    assert!(
        std::fs::metadata(&trace)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
    );
    // The saved history fails the checker on its own.
    let c = ha_sim(&["check", history.to_str().unwrap()]);
    assert!(!c.status.success(), "{}", stdout(&c));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_history_file_passes_check_and_traces_replay_identically() {
    let dir = scratch("history");
    let file = dir.join("h.jsonl");
    let o = ha_sim(&["--seed", "7", "--history-out", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stdout(&o));
    let c = ha_sim(&["check", file.to_str().unwrap()]);
    assert!(c.status.success(), "{}", stdout(&c));
    assert!(last_line(&c).starts_with("check ops="), "{}", stdout(&c));

    let a = ha_sim(&["--seed", "7", "--members", "5", "--trace"]);
    let b = ha_sim(&["--seed", "7", "--members", "5", "--trace"]);
    assert!(a.status.success());
    assert!(stdout(&a).lines().count() > 1000);
    assert_eq!(stdout(&a), stdout(&b), "the same seed traced differently");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_kv_workload_runs_and_its_history_file_passes_check() {
    let dir = scratch("kv");
    let file = dir.join("kv.jsonl");
    let o = ha_sim(&[
        "--seed",
        "3",
        "--workload",
        "kv",
        "--history-out",
        file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stdout(&o));
    let line = last_line(&o);
    let txns: u64 = line
        .split(' ')
        .find_map(|kv| kv.strip_prefix("txns="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(txns > 0, "{line}");
    let text = std::fs::read_to_string(&file).expect("history written");
    assert!(
        text.contains("\"mod_revision\""),
        "no revisions in the history"
    );
    let c = ha_sim(&["check", file.to_str().unwrap()]);
    assert!(c.status.success(), "{}", stdout(&c));
    // A read that saw a key at a revision nothing wrote it at fails the
    // check.
    let broken = text.replacen("\"mod_revision\":", "\"mod_revision\":1000000", 1);
    let bad = dir.join("broken.jsonl");
    std::fs::write(&bad, broken).expect("write");
    let c = ha_sim(&["check", bad.to_str().unwrap()]);
    assert!(!c.status.success(), "{}", stdout(&c));
    let _ = std::fs::remove_dir_all(&dir);
}
