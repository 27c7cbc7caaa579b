//! Crash safety: a child process commits in a loop and reports each acknowledged commit; it is
//! killed with SIGKILL at random moments, and every acknowledged commit must survive while no
//! partial transaction may appear, on SQLite and on PostgreSQL. `KILN_CRASH_ROUNDS` sets the
//! number of rounds (default 20).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use kiln_store::query::Query;
use kiln_value::Value;
use rand::Rng;

use crate::{Backend, ack_until_killed, config, obj, open, open_postgres};

const WRITERS: u64 = 4;
const TABLES: [&str; 3] = ["a", "b", "c"];

fn int(v: &Value) -> u64 {
    match v {
        Value::Int64(i) => *i as u64,
        other => panic!("not an int64: {other:?}"),
    }
}

fn int_json(v: u64) -> String {
    format!(r#"{{"$integer": "{}"}}"#, kiln_value::json::base64_encode(&(v as i64).to_le_bytes()))
}

/// The child: commits forever from several concurrent writers. Each transaction inserts one
/// document into each of three tables and advances its writer's progress document.
#[test]
#[ignore = "run as a child process by `acknowledged_commits_survive_sigkill`"]
fn crash_child() {
    let (dir, postgres) = (std::env::var("KILN_CRASH_DIR"), std::env::var("KILN_CRASH_POSTGRES"));
    if dir.is_err() && postgres.is_err() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let store = match (dir, postgres) {
            (Ok(dir), _) => open(std::path::Path::new(&dir), config()).await,
            (_, Ok(target)) => {
                let (url, name) = target.split_once(' ').unwrap();
                open_postgres(url, name, config()).await
            }
            _ => unreachable!(),
        };
        let store = Arc::new(store);
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let (seq, _) = retry!(store, |tx| {
                        let progress = tx.collect(Query::full_table_scan("progress")).await?;
                        let mine = progress.iter().find(|d| int(&d.value["writer"]) == w);
                        let seq = mine.map_or(w << 32, |d| int(&d.value["last"]) + 1);
                        for t in TABLES {
                            tx.insert(
                                t,
                                obj(&format!(r#"{{"seq": {}, "pad": "{}"}}"#, int_json(seq), "x".repeat(200))),
                            )
                            .await?;
                        }
                        match mine {
                            Some(d) => {
                                tx.patch(d.id, [("last".to_string(), Some(Value::Int64(seq as i64)))].into()).await?;
                            }
                            None => {
                                tx.insert(
                                    "progress",
                                    obj(&format!(r#"{{"writer": {}, "last": {}}}"#, int_json(w), int_json(seq))),
                                )
                                .await?;
                            }
                        }
                        Ok(seq)
                    });
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {seq}").unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        // The writers loop until the process is killed.
        futures::future::join_all(tasks).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commits_survive_sigkill() {
    let backend = Backend::sqlite();
    let Backend::Sqlite(dir) = &backend else { unreachable!() };
    let child = ("KILN_CRASH_DIR", dir.path().display().to_string());
    crash_rounds(&backend, child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commits_survive_sigkill_on_postgres() {
    let Some(backend) = Backend::postgres() else { return };
    let Backend::Postgres { url, name } = &backend else { unreachable!() };
    let child = ("KILN_CRASH_POSTGRES", format!("{url} {name}"));
    crash_rounds(&backend, child).await;
}

/// Kills the child (its store on `backend`, named to it by the variable `child`) at random
/// moments, checking after each kill that every acknowledged commit is whole and present.
async fn crash_rounds(backend: &Backend, child: (&str, String)) {
    let rounds: usize = std::env::var("KILN_CRASH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(20);
    let mut acked = BTreeSet::new();
    let mut rng = rand::thread_rng();
    for round in 0..rounds {
        let delay = Duration::from_millis(rng.gen_range(1..250));
        let seen = ack_until_killed("crash::crash_child", &[(child.0, child.1.clone())], delay);
        acked.extend(seen);

        let store = backend.open(config()).await;
        let mut tx = store.begin_read_only();
        let mut parts: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
        for t in TABLES {
            for d in tx.collect(Query::full_table_scan(t)).await.unwrap() {
                assert!(parts.entry(int(&d.value["seq"])).or_default().insert(t), "seq inserted twice into {t}");
            }
        }
        for (seq, tables) in &parts {
            assert_eq!(tables.len(), 3, "round {round}: transaction {seq} is partially visible: {tables:?}");
        }
        for seq in &acked {
            assert!(parts.contains_key(seq), "round {round}: acknowledged commit {seq} was lost");
        }
        for p in tx.collect(Query::full_table_scan("progress")).await.unwrap() {
            let w = int(&p.value["writer"]);
            let newest = parts.keys().filter(|s| *s >> 32 == w).max().copied();
            assert_eq!(Some(int(&p.value["last"])), newest, "progress of writer {w} disagrees with its documents");
        }
        drop(tx);
        store.close().await;
    }
    assert!(acked.len() >= rounds, "too few commits acknowledged: {}", acked.len());
    eprintln!("{rounds} kills, {} acknowledged commits verified", acked.len());
}
