//! The rate limit's promise with real processes: two keygate binaries sharing one Redis, or
//! a three-master Redis Cluster, under bursts at four times the limit that start at
//! different points of a second. No span of one period admits more than the limit, and the
//! limit is used: the burst's three periods admit at least 99 % of three limits.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::check::{check_request, decision_code, try_check};
use common::process::KeygateProcess;
use common::redis::{RedisCluster, RedisServer};
use common::{ADMIN_TOKEN, TEST_CONFIG, create_owner, issue_key};
use keygate::proto;
use tonic::transport::Channel;

/// Requests a second the plan admits, per key.
const LIMIT: usize = 200;
/// The plan's period.
const PERIOD: Duration = Duration::from_secs(1);
/// How long each burst lasts: it covers three periods' starts.
const BURST: Duration = Duration::from_millis(2_500);
/// Requests sent a second during a burst.
const SENT_PER_SECOND: u32 = 4 * LIMIT as u32;
/// Where in a wall-clock second each burst starts.
const OFFSETS: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(300),
    Duration::from_millis(500),
    Duration::from_millis(800),
];

/// The configuration of a replica: the test configuration with the store and limiter in
/// the Redis `redis_table` names, and the burst plan. Calls may wait for a CPU longer than
/// by default: tests share a small machine, and this one is about limits, not overload.
fn config(redis_table: &str) -> String {
    format!(
        "store = \"redis\"\n{TEST_CONFIG}\n[ratelimit]\nbackend = \"redis\"\nreplicas = 2\n\n\
         [admission]\nmax_wait = \"2s\"\ntimeout = \"5s\"\n\n\
         {redis_table}\ntimeout = \"2s\"\n\n[[plans]]\nname = \"burst\"\n\
         rate_windows = [{{ limit = {LIMIT}, period = \"1s\" }}]\n"
    )
}

/// One answered request: when it was sent and answered (from the burst's start) and
/// whether it was admitted.
struct Answer {
    sent: Duration,
    answered: Duration,
    admitted: bool,
}

/// Sends a burst for `key`, alternating between the replicas, and returns every answer.
async fn burst(replicas: &[Channel; 2], key: &str) -> Vec<Answer> {
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / SENT_PER_SECOND);
    let mut calls = tokio::task::JoinSet::new();
    let mut i = 0;
    while started.elapsed() < BURST {
        ticks.tick().await;
        let replica = replicas[i % 2].clone();
        let request = check_request(
            "203.0.113.5",
            "GET",
            "/v1/items",
            &[("x-api-key", key)],
            &[],
        );
        i += 1;
        calls.spawn(async move {
            let sent = started.elapsed();
            let response = try_check(&replica, request)
                .await
                .expect("a replica failed a Check");
            let code = decision_code(&response);
            assert!(
                code == "OK" || code == "RATE_LIMITED",
                "unexpected decision {code}"
            );
            Answer {
                sent,
                answered: started.elapsed(),
                admitted: code == "OK",
            }
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = calls.join_next().await {
        answers.push(answer.unwrap());
    }
    answers
}

/// The most admissions that certainly fell in one span of a period: those sent no earlier
/// than some admission was sent and answered before a period after that. Each was decided
/// between its sending and its answer, so these many were decided within one period.
fn most_certainly_in_one_period(admitted: &[&Answer]) -> usize {
    admitted
        .iter()
        .map(|first| {
            admitted
                .iter()
                .filter(|a| a.sent >= first.sent && a.answered < first.sent + PERIOD)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Waits until `offset` into the next wall-clock second.
async fn wait_for_offset(offset: Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into_second = Duration::from_nanos(u64::from(now.subsec_nanos()));
    let wait = (Duration::from_secs(1) - into_second) + offset;
    tokio::time::sleep(wait).await;
}

/// Runs the bursts against two replicas on the Redis that `redis_table` names.
async fn bursts_through_two_replicas(redis_table: &str) {
    let config = config(redis_table);
    let env = [
        ("KEYGATE_PEPPER", "rate bound test pepper 0123456789"),
        ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    let dirs = [common::data_dir(), common::data_dir()];
    let processes = [
        KeygateProcess::start_with_config(dirs[0].path(), &config, &env),
        KeygateProcess::start_with_config(dirs[1].path(), &config, &env),
    ];
    let mut manage = proto::key_manager_client::KeyManagerClient::connect(processes[0].url())
        .await
        .unwrap();
    let owner = create_owner(&mut manage, "bursty", "burst").await.id;
    let mut replicas = Vec::new();
    for process in &processes {
        let endpoint = Channel::from_shared(format!("http://{}", process.data_plane_addr));
        replicas.push(endpoint.unwrap().connect().await.unwrap());
    }
    let replicas: [Channel; 2] = replicas.try_into().unwrap();
    let floor = LIMIT * 99 / 100;
    for offset in OFFSETS {
        // A key of its own, so each burst starts from an empty window.
        let key = issue_key(&mut manage, &owner, "burst").await.secret;
        wait_for_offset(offset).await;
        let answers = burst(&replicas, &key).await;
        let admitted: Vec<&Answer> = answers.iter().filter(|a| a.admitted).collect();
        let per_period: Vec<usize> = (0..3)
            .map(|p| {
                let span = PERIOD * p..PERIOD * (p + 1);
                admitted.iter().filter(|a| span.contains(&a.sent)).count()
            })
            .collect();
        let most = most_certainly_in_one_period(&admitted);
        eprintln!(
            "burst {offset:?} into a second: {} sent, {} admitted, per period {per_period:?}, \
             at least {most} certainly within one period",
            answers.len(),
            admitted.len()
        );
        assert!(
            most <= LIMIT,
            "{most} admitted within one period (limit {LIMIT}), burst at {offset:?}"
        );
        // Per period, an admission decided just after a boundary may count on either side
        // of it (it is sorted by when it was sent); the total cannot move.
        assert!(
            admitted.len() >= 3 * floor,
            "the burst at {offset:?} admitted {}, under 99 % of 3 × {LIMIT}",
            admitted.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_never_admit_over_the_limit_in_any_second() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    bursts_through_two_replicas(&format!("[redis]\nurl = \"{}\"", redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_cluster_never_admit_over_the_limit_in_any_second() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
    bursts_through_two_replicas(&format!("[redis]\ncluster_nodes = [{}]", nodes.join(", "))).await;
}
