//! The request path on arbitrary bytes, as UDP and TCP deliver them: parse, identify, decide,
//! record, answer from the cache or synthesis, encode. Every reply written must be a valid DNS
//! message; nothing may panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;

use cleanpipe::dns::{Client, Now, Pipeline, Step, Transport};

struct World {
    pipeline: Pipeline,
    _rt: tokio::runtime::Runtime,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = std::env::temp_dir().join(format!("cleanpipe-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("policy")).expect("dir");
        std::fs::write(
            dir.join("policy/infected.yaml"),
            "infected:\n  - {prefix: 192.0.2.66, family: Mirai, source: x, first_seen: 2026-11-20T08:00:00Z}\n",
        )
        .expect("write");
        std::fs::write(
            dir.join("policy/enrolments.yaml"),
            "enrolments:\n  - {prefix: 192.0.2.20, profile: kids, enabled_by: x, enabled_at: 2026-11-01T10:00:00Z}\n",
        )
        .expect("write");
        std::fs::write(
            dir.join("feed.rpz"),
            "$ORIGIN f.rpz.\n@ SOA ns hm 1 1 1 1 1\nnx.example CNAME .\ntcp.example CNAME rpz-tcp-only.\nlocal.example A 192.0.2.9\nlocal.example TXT \"x\"\ngarden.example CNAME www.example.org.\nc2.example CNAME .\n32.7.2.0.192.rpz-client-ip CNAME rpz-drop.\n",
        )
        .expect("write");
        let text = format!(
            "clients:\n  allow: [192.0.2.0/24]\nresolver:\n  mode: forward\n  forward:\n    - address: 127.0.0.1\n      port: 9\npolicy:\n  dir: {d}/policy\n  allowlists: {root}/allowlists\nstate:\n  path: {d}/state.sqlite\nfeeds:\n  - name: f\n    file: {d}/feed.rpz\n    botnet: true\n",
            d = dir.display(),
            root = concat!(env!("CARGO_MANIFEST_DIR"), "/.."),
        );
        let config = cleanpipe::config::Config::from_str_in(&text, "fuzz.yaml", &dir)
            .expect("config");
        let state: Arc<dyn cleanpipe::state::StateStore> =
            Arc::new(cleanpipe::state::SqliteStore::in_memory().expect("state"));
        let store = Arc::new(
            cleanpipe::store::PolicyStore::open(&config, state, Default::default())
                .expect("policy"),
        );
        let resolver = Arc::new(
            cleanpipe::resolve::Resolver::from_config(&config, rt.handle().clone())
                .expect("resolver"),
        );
        World {
            pipeline: Pipeline::new(store, resolver),
            _rt: rt,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let mut out = Vec::new();
    // The first byte picks the client and the transport; the rest is the packet.
    let (pick, packet) = data.split_first().unwrap_or((&0, &[]));
    let ip = [66u8, 20, 7, 1, 250][usize::from(*pick) % 5];
    let client = Client {
        addr: std::net::SocketAddr::from(([192, 0, 2, ip], 5353)),
        transport: if pick & 0x80 == 0 { Transport::Udp } else { Transport::Tcp },
    };
    if let Step::Answered = w.pipeline.start(packet, client, Now::read(), &mut out) {
        let limit = if client.transport == Transport::Udp { 1232 } else { 65535 };
        assert!(out.len() <= limit.max(512), "reply larger than the transport allows");
        hickory_proto::op::Message::from_vec(&out).expect("every reply is a valid message");
    }
});
