//! `create_challenge` over HTTP (totp-verify-server, keep-alive) against the same call over SQL
//! (prepared statement), in the same run, interleaved: bench/rest/run starts everything and runs
//! this. Environment: DATABASE_URL, BENCH_URL (the server), BENCH_ACCOUNT, BENCH_TOKEN,
//! BENCH_CLIENTS (4), BENCH_SECONDS per run (10), BENCH_ROUNDS (3), BENCH_FACTORS (400).

use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn num(name: &str, default: u64) -> u64 {
    env(name, &default.to_string()).parse().expect("a number")
}

struct Run {
    calls: usize,
    seconds: f64,
    micros: Vec<u64>,
}

async fn sql_client(url: String, work: Vec<(String, String, String)>, until: Instant) -> Vec<u64> {
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    let stmt = client.prepare("SELECT sid FROM totp.create_challenge($1, $2, $3)").await.expect("prepare");
    let mut lat = Vec::new();
    for (service, identity, factor) in work.iter().cycle() {
        if Instant::now() >= until {
            break;
        }
        let t = Instant::now();
        client.query_one(&stmt, &[service, identity, factor]).await.expect("create_challenge over SQL");
        lat.push(t.elapsed().as_micros() as u64);
    }
    lat
}

async fn http_client(
    base: String,
    auth: (String, String),
    work: Vec<(String, String, String)>,
    until: Instant,
) -> Vec<u64> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("client");
    let mut lat = Vec::new();
    for (service, identity, factor) in work.iter().cycle() {
        if Instant::now() >= until {
            break;
        }
        let t = Instant::now();
        let r = http
            .post(format!("{base}/v2/Services/{service}/Entities/{identity}/Challenges"))
            .basic_auth(&auth.0, Some(&auth.1))
            .form(&[("FactorSid", factor.as_str())])
            .send()
            .await
            .expect("create_challenge over HTTP");
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap_or_default());
        r.bytes().await.expect("body");
        lat.push(t.elapsed().as_micros() as u64);
    }
    lat
}

async fn run(http: bool, seconds: u64, slices: &[Vec<(String, String, String)>]) -> Run {
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for work in slices {
        let work = work.clone();
        tasks.push(if http {
            tokio::spawn(http_client(
                env("BENCH_URL", ""),
                (env("BENCH_ACCOUNT", ""), env("BENCH_TOKEN", "")),
                work,
                until,
            ))
        } else {
            tokio::spawn(sql_client(env("DATABASE_URL", ""), work, until))
        });
    }
    let mut micros = Vec::new();
    for t in tasks {
        micros.extend(t.await.expect("client"));
    }
    let seconds = start.elapsed().as_secs_f64();
    micros.sort_unstable();
    Run { calls: micros.len(), seconds, micros }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (clients, seconds, rounds, factors) =
        (num("BENCH_CLIENTS", 4), num("BENCH_SECONDS", 10), num("BENCH_ROUNDS", 3), num("BENCH_FACTORS", 400));
    let (db, conn) = tokio_postgres::connect(&env("DATABASE_URL", ""), NoTls).await.expect("connect");
    tokio::spawn(conn);
    // One service of the account, limits raised so that no call is refused, verified factors.
    let service: String = db
        .query_one("SELECT sid FROM totp.create_service('Bench', account_sid => $1)", &[&env("BENCH_ACCOUNT", "")])
        .await
        .expect("service")
        .get(0);
    db.execute(
        "SELECT totp.update_service($1, max_challenges_per_hour => 1000000000, max_challenges_per_day => 1000000000)",
        &[&service],
    )
    .await
    .expect("limits");
    let secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
    let mut work = Vec::new();
    for i in 0..factors {
        let identity = format!("bench-{i}");
        let sid: String = db
            .query_one(
                "SELECT sid FROM totp.create_factor($1, $2, 'bench', secret => $3)",
                &[&service, &identity, &secret],
            )
            .await
            .expect("factor")
            .get(0);
        db.execute(
            "SELECT totp.verify_factor($1, $2, $3, totp.totp_code(totp.base32_decode($4)))",
            &[&service, &identity, &sid, &secret],
        )
        .await
        .expect("verify");
        work.push((service.clone(), identity, sid));
    }
    let slices: Vec<Vec<_>> =
        (0..clients as usize).map(|c| work.iter().skip(c).step_by(clients as usize).cloned().collect()).collect();
    println!("create_challenge (pending, no code): {clients} clients, {rounds} rounds of {seconds} s each way, {factors} factors");
    // Warm up both paths (connections, prepared statements, the server's pool).
    run(false, 2, &slices).await;
    run(true, 2, &slices).await;
    let (mut sql, mut http) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for over_http in order {
            let r = run(over_http, seconds, &slices).await;
            println!(
                "round {round} {:4}: {:7.0} calls/s  p50 {:.2} ms  p99 {:.2} ms",
                if over_http { "HTTP" } else { "SQL" },
                r.calls as f64 / r.seconds,
                pct(&r.micros, 0.5),
                pct(&r.micros, 0.99)
            );
            if over_http {
                http.push(r)
            } else {
                sql.push(r)
            }
        }
    }
    let total = |runs: &[Run]| {
        let mut all: Vec<u64> = runs.iter().flat_map(|r| r.micros.iter().copied()).collect();
        all.sort_unstable();
        let tps = runs.iter().map(|r| r.calls).sum::<usize>() as f64 / runs.iter().map(|r| r.seconds).sum::<f64>();
        (tps, pct(&all, 0.5), pct(&all, 0.99))
    };
    let (s, h) = (total(&sql), total(&http));
    println!("SQL : {:7.0} calls/s  p50 {:.2} ms  p99 {:.2} ms", s.0, s.1, s.2);
    println!("HTTP: {:7.0} calls/s  p50 {:.2} ms  p99 {:.2} ms", h.0, h.1, h.2);
    println!(
        "HTTP/SQL throughput {:.2} (target >= 0.5: {}); HTTP p99 {:.2} ms (target < 5 ms: {})",
        h.0 / s.0,
        if h.0 / s.0 >= 0.5 { "met" } else { "NOT met" },
        h.2,
        if h.2 < 5.0 { "met" } else { "NOT met" }
    );
}
