//! Criterion benches of the policy core at production size: 1,000,000 infected prefixes,
//! 100,000 enrolments and the full curated allowlist.
//!
//! Run: `cargo bench --bench policy`. Also prints the resident memory the compiled snapshot
//! takes (RSS before and after compiling, from /proc/self/statm).

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use hickory_proto::rr::RecordType;

use cleanpipe::policy::compile::{CompileOptions, Overrides, compile};
use cleanpipe::policy::{Question, Snapshot, SourceSet, decide, fixture};

const INFECTED: usize = 1_000_000;
const ENROLMENTS: usize = 100_000;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn sources() -> SourceSet {
    let allowlists = Path::new(env!("CARGO_MANIFEST_DIR")).join("allowlists");
    let mut s = SourceSet::read(None, &allowlists).expect("allowlists readable");
    s.policy_files
        .push(("infected-feed.csv".into(), fixture::infected_csv(INFECTED)));
    s.policy_files.push((
        "enrolments.yaml".into(),
        fixture::enrolments_yaml(ENROLMENTS),
    ));
    s
}

/// Criterion reports means; the goal also bounds the tail. Each call is timed on its own over
/// 1,000,000 clients spread over the whole infected table (so most lookups miss the CPU caches),
/// the timer's own cost included and reported beside it.
fn tail_latency(snap: &Snapshot, questions: &[Question], now: i64) {
    const CALLS: usize = 1_000_000;
    let pct = |v: &mut Vec<u64>, p: f64| {
        v.sort_unstable();
        v[((v.len() - 1) as f64 * p) as usize]
    };
    let mut timer = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let t = std::time::Instant::now();
        timer.push(black_box(t).elapsed().as_nanos() as u64);
    }
    let mut calls = Vec::with_capacity(CALLS);
    let mut x: u32 = 0x1234_5678;
    for i in 0..CALLS {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        // 10.0.0.0 upwards holds the IPv4 infected entries (fixture::infected_csv); some of
        // these addresses are in it, some are not.
        let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0A00_0000 | (x >> 12)));
        let q = &questions[i % questions.len()];
        let t = std::time::Instant::now();
        black_box(decide(snap, &snap.classify(black_box(ip)), q, now));
        calls.push(t.elapsed().as_nanos() as u64);
    }
    eprintln!(
        "classify+decide, each call timed, {CALLS} clients over the infected table: median {} ns, p99 {} ns, p99.9 {} ns (the timer alone: median {} ns, p99 {} ns)",
        pct(&mut calls, 0.5),
        pct(&mut calls, 0.99),
        pct(&mut calls, 0.999),
        pct(&mut timer, 0.5),
        pct(&mut timer, 0.99),
    );
}

fn options() -> CompileOptions {
    CompileOptions {
        clients: vec![
            "0.0.0.0/0".parse().expect("net"),
            "::/0".parse().expect("net"),
        ],
        ..CompileOptions::default()
    }
}

fn build(src: &SourceSet) -> Snapshot {
    compile(src, &Overrides::default(), &options()).expect("bench policy compiles")
}

/// A `n`-name RPZ zone, as a CERT feed export would look.
fn rpz_text(n: usize) -> String {
    let mut z = String::with_capacity(n * 40);
    z.push_str("$ORIGIN big.rpz.example.\n@ SOA ns.rpz.example. hostmaster.rpz.example. 1 3600 600 86400 300\n");
    for i in 0..n {
        z.push_str(&format!("c2-{i}.botnet-{}.example CNAME .\n", i % 997));
    }
    z
}

fn sizes() {
    // Resident memory per entry, each structure alone (free memory returned to the system
    // first, as the server does after every reload).
    cleanpipe::store::release_free_memory();
    let mut infected = SourceSet::default();
    infected
        .policy_files
        .push(("infected-feed.csv".into(), fixture::infected_csv(INFECTED)));
    let input = infected.policy_files[0].1.len() as u64;
    cleanpipe::store::release_free_memory();
    // The input text is resident before and gone after: add it back.
    let before = rss_bytes().saturating_sub(input);
    let t = std::time::Instant::now();
    let alone = CompileOptions {
        allowlists: None, // the infected part alone, without a trusted zone
        ..options()
    };
    let snap = compile(&infected, &Overrides::default(), &alone).expect("compiles");
    let took = t.elapsed();
    drop(infected);
    cleanpipe::store::release_free_memory();
    let after = rss_bytes();
    eprintln!(
        "1M infected prefixes (CSV, 3/4 IPv4 /32, 1/4 IPv6 /56): compiled in {:.0} ms, resident +{:.0} B per entry",
        took.as_secs_f64() * 1e3,
        after.saturating_sub(before) as f64 / snap.infections().len() as f64
    );
    drop(snap);
    let text = rpz_text(1_000_000);
    let input = text.len() as u64;
    cleanpipe::store::release_free_memory();
    let before = rss_bytes().saturating_sub(input);
    let t = std::time::Instant::now();
    let zone = cleanpipe::policy::rpz::parse("big.rpz", &text, None).expect("parses");
    let took = t.elapsed();
    drop(text);
    cleanpipe::store::release_free_memory();
    let after = rss_bytes();
    eprintln!(
        "1M-name RPZ feed: parsed in {:.0} ms, resident +{:.0} B per name",
        took.as_secs_f64() * 1e3,
        after.saturating_sub(before) as f64 / zone.len() as f64
    );
}

fn benches(c: &mut Criterion) {
    sizes();
    let src = sources();
    let input: u64 = src.policy_files.iter().map(|(_, t)| t.len() as u64).sum();
    cleanpipe::store::release_free_memory();
    let before = rss_bytes();
    let snap = build(&src);
    cleanpipe::store::release_free_memory();
    let after = rss_bytes();
    let counts = snap.counts();
    eprintln!(
        "snapshot: {} infected, {} enrolments, {} allowlisted names; resident +{:.1} MiB ({:.0} B per infected+enrolment entry; {:.0} MiB of source text kept for the benches)",
        counts.infected,
        counts.enrolments,
        counts.allowlisted_names,
        (after.saturating_sub(before)) as f64 / (1 << 20) as f64,
        (after.saturating_sub(before)) as f64 / (counts.infected + counts.enrolments) as f64,
        input as f64 / (1 << 20) as f64
    );

    // A mix of clients: infected v4, infected v6, enrolled, unknown.
    let clients: Vec<IpAddr> = [
        "10.0.12.34",
        "2a02:1000:30:ab00::1",
        "100.64.1.2",
        "100.64.1.3",
        "192.0.2.1",
        "198.51.100.9",
    ]
    .iter()
    .map(|s| s.parse().expect("ip"))
    .collect();
    let names = [
        "www.example.org",
        "kbc.be",
        "www.google.com",
        "cdn.some-tracker.example.net",
        "windowsupdate.com",
        "a.b.c.d.e.f.deep.example",
    ];
    let questions: Vec<Question> = names
        .iter()
        .map(|n| Question::new(n, RecordType::A).expect("name"))
        .collect();
    let views: Vec<_> = clients.iter().map(|ip| snap.classify(*ip)).collect();
    let now = 1_795_000_000;
    tail_latency(&snap, &questions, now);

    let mut g = c.benchmark_group("decide");
    g.bench_function("classify+decide (mixed clients and names)", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = i.wrapping_add(1);
            let ip = clients[i % clients.len()];
            let q = &questions[(i / clients.len()) % questions.len()];
            black_box(decide(&snap, &snap.classify(black_box(ip)), q, now))
        })
    });
    g.bench_function("decide only (client view cached)", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = i.wrapping_add(1);
            let v = &views[i % views.len()];
            let q = &questions[(i / views.len()) % questions.len()];
            black_box(decide(&snap, v, q, now))
        })
    });
    g.bench_function("classify only (1M-prefix lookup)", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(snap.classify(black_box(clients[i % clients.len()])))
        })
    });
    // What a moka cache in front of classify() costs on a hit (the store's per-client cache).
    let cache: moka::sync::Cache<IpAddr, cleanpipe::policy::ClientView> =
        moka::sync::Cache::builder().max_capacity(200_000).build();
    for ip in &clients {
        cache.insert(*ip, snap.classify(*ip));
    }
    g.bench_function("moka client-cache hit", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(cache.get(black_box(&clients[i % clients.len()])))
        })
    });

    let zone =
        cleanpipe::policy::rpz::parse("big.rpz", &rpz_text(1_000_000), None).expect("parses");
    let feed_names: Vec<cleanpipe::policy::QName> = [
        "c2-77.botnet-77.example",
        "www.example.org",
        "a.b.c.botnet-5.example",
    ]
    .iter()
    .map(|n| cleanpipe::policy::QName::new(n).expect("name"))
    .collect();
    g.bench_function("RPZ QNAME match (1M-name feed)", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(zone.match_qname(black_box(&feed_names[i % feed_names.len()])))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("1M-name RPZ feed", |b| {
        let text = rpz_text(1_000_000);
        b.iter(|| black_box(cleanpipe::policy::rpz::parse("big.rpz", &text, None).expect("parses")))
    });
    g.finish();

    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("1M infected + 100k enrolments + allowlists", |b| {
        b.iter(|| black_box(build(&src)))
    });
    // What a reload costs when only something small changed (a mode flip, an organisation):
    // the store hands the infected and enrolment parts of the previous snapshot back in.
    let previous = build(&src);
    let reuse = SourceSet {
        reuse_infected: Some(previous.infected.clone()),
        reuse_enrolled: Some(previous.enrolled.clone()),
        ..src.clone()
    };
    g.bench_function("same policy, infected and enrolment parts reused", |b| {
        b.iter(|| black_box(build(&reuse)))
    });
    g.finish();
}

/// The whole synchronous request path (parse, identify, decide, record, cache probe, encode)
/// for a cached name, as the UDP loop runs it, and the cache probe alone.
fn request_path(c: &mut Criterion) {
    use cleanpipe::dns::{Client, Now, Pipeline, Step, Transport};
    use cleanpipe::resolve::cache::{CachedAnswer, Key};
    use std::sync::Arc;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let text = format!(
        "resolver:\n  mode: forward\n  forward:\n    - address: 127.0.0.1\n      port: 9\npolicy:\n  allowlists: {}/allowlists\n",
        env!("CARGO_MANIFEST_DIR")
    );
    let config = cleanpipe::config::Config::from_str_in(&text, "bench.yaml", Path::new("."))
        .expect("config");
    let state = Arc::new(cleanpipe::state::SqliteStore::in_memory().expect("state"));
    let store = Arc::new(
        cleanpipe::store::PolicyStore::open(&config, state, Default::default()).expect("policy"),
    );
    let resolver = Arc::new(
        cleanpipe::resolve::Resolver::from_config(&config, rt.handle().clone()).expect("resolver"),
    );
    let name = hickory_proto::rr::Name::from_ascii("www.example.org.").expect("name");
    let answer = cleanpipe::resolve::Answer {
        rcode: hickory_proto::op::ResponseCode::NoError,
        answers: vec![hickory_proto::rr::Record::from_rdata(
            name.clone(),
            300,
            hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 1)),
        )],
        authorities: Vec::new(),
        secure: false,
    };
    let key = Key::from_name(&name, RecordType::A, 0).expect("key");
    let cached = CachedAnswer::build(&name, RecordType::A, &answer, 300).expect("builds");
    resolver.cache().insert(&key, Arc::new(cached));
    let pipeline = Pipeline::new(store, resolver.clone());
    let mut m = hickory_proto::op::Message::query();
    m.metadata.id = 7;
    m.metadata.recursion_desired = true;
    m.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_ascii("WwW.Example.ORG.").expect("name"),
        RecordType::A,
    ));
    let mut edns = hickory_proto::op::Edns::new();
    edns.set_max_payload(1232);
    m.set_edns(edns);
    let query = m.to_vec().expect("query");
    let client = Client {
        addr: "127.0.0.1:5353".parse().expect("addr"),
        transport: Transport::Udp,
    };
    let mut out = Vec::with_capacity(512);
    let mut g = c.benchmark_group("request path");
    g.bench_function("cached name over UDP: parse .. encode", |b| {
        b.iter(|| {
            let step = pipeline.start(black_box(&query), client, Now::read(), &mut out);
            assert!(matches!(step, Step::Answered));
            black_box(out.len())
        })
    });
    let now = std::time::Instant::now();
    g.bench_function(
        "answer-cache probe (key from the wire name + lookup)",
        |b| {
            let q = cleanpipe::wire::Query::parse(&query).expect("query");
            b.iter(|| {
                let k = Key::from_wire(black_box(q.qname()), 1, 0).expect("key");
                black_box(resolver.cache().get(&k, now).is_some())
            })
        },
    );
    g.finish();
}

criterion_group!(policy, benches, request_path);
criterion_main!(policy);
