//! leader_job: the singleton-job pattern. Three members in one process
//! (memory storage), each running the same job under `LeaderTask`: it runs
//! only on the elected instance. The member running it is killed; its
//! session ends, and the job moves to another instance — with a higher
//! fencing token. Prints a timeline.
//!
//! ```text
//! cargo run --release -p ha-examples --example leader_job
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ha_discovery::{Election, LeaderTask};

type ExampleResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Sessions' TTL: how long a dead leader's job can stay unowned.
const TTL: Duration = Duration::from_secs(2);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExampleResult<()> {
    let t0 = Instant::now();
    let at = move || format!("[{:6.3}s]", t0.elapsed().as_secs_f64());

    // Three members in this process, on memory storage.
    let (_network, members) = ha_examples::start_mem_kv_group(3).await?;
    println!("{} three members up", at());

    // The same job on every instance; LeaderTask runs it only where elected.
    let (owner_tx, mut owner_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for (i, kv) in members.iter().enumerate() {
        let name = format!("instance-{}", i + 1);
        let owner_tx = owner_tx.clone();
        let task = LeaderTask::new(kv.clone(), "jobs/report")
            .value(name.clone())
            .ttl(TTL)
            .run(move |leadership| {
                let (name, owner_tx) = (name.clone(), owner_tx.clone());
                async move {
                    let token = leadership.fencing_token();
                    println!("{} {name}: elected, job starts (token {token})", at());
                    let _ = owner_tx.send(i);
                    let stop = leadership.cancellation_token();
                    let mut tick = 0;
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                        tick += 1;
                        println!("{} {name}: job tick {tick} (token {token})", at());
                    }
                    println!("{} {name}: leadership lost, job stops", at());
                }
            });
        tasks.push(tokio::spawn(task));
    }

    let first = owner_rx.recv().await.ok_or("no instance ran the job")?;
    // An observer (no session needed) on a member that stays up prints
    // every change of owner, starting with the current one.
    let observer = Arc::new(members[(first + 1) % members.len()].clone());
    let mut owners = Election::observe_on(observer, "jobs/report");
    let printer = tokio::spawn(async move {
        while let Some(Ok(owner)) = owners.next().await {
            match owner {
                Some(l) => println!(
                    "{} observer: the job's owner is {} (token {})",
                    at(),
                    String::from_utf8_lossy(&l.value),
                    l.token
                ),
                None => println!("{} observer: nobody owns the job", at()),
            }
        }
    });

    tokio::time::sleep(Duration::from_millis(1600)).await;
    println!(
        "{} killing member {} (it runs the job; the job's session ends with it)",
        at(),
        first + 1
    );
    members[first].kill().await;
    let second = owner_rx.recv().await.ok_or("the job did not move")?;
    if second == first {
        return Err("the job restarted on the dead member".into());
    }
    tokio::time::sleep(Duration::from_millis(1600)).await;
    println!(
        "{} the job moved from instance-{} to instance-{}",
        at(),
        first + 1,
        second + 1
    );
    for t in &tasks {
        t.abort();
    }
    printer.abort();
    for (i, m) in members.iter().enumerate() {
        if i != first {
            m.shutdown().await?;
        }
    }
    Ok(())
}
