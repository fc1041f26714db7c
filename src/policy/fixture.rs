//! Policy data for tests and benchmarks: a small, hand-written policy on documentation address
//! ranges, and generators for realistic sizes (a million infected prefixes...).
#![doc(hidden)]

use std::fmt::Write as _;

use ipnet::IpNet;

use super::SourceSet;
use super::compile::CompileOptions;

/// A small allowlist: two categories, three services, two profiles, probes, canaries.
pub const ALLOWLISTS: &[(&str, &str)] = &[
    ("meta.yaml", "version: \"test\"\n"),
    (
        "categories.yaml",
        "categories:\n  - {id: banking, name: Banking, description: Banks}\n  - {id: education, name: Education, description: Learning}\n  - {id: search, name: Search, description: Search}\n",
    ),
    (
        "services/banking.yaml",
        "services:\n  - id: bank\n    name: Example Bank\n    category: banking\n    description: A bank.\n    domains: [bank.example, bank-cdn.example]\n    shared: [sso.example]  # shared login\n",
    ),
    (
        "services/education.yaml",
        "services:\n  - id: school\n    name: School\n    category: education\n    description: A school.\n    domains: [school.example]\n    shared: [sso.example]  # shared login\n",
    ),
    (
        "services/search.yaml",
        "services:\n  - id: google\n    name: Google\n    category: search\n    description: Search.\n    domains: [google.com]\n",
    ),
    (
        "profiles.yaml",
        "profiles:\n  clean-pipe:\n    description: all\n    categories: [banking, education, search]\n    blocked: nxdomain\n  kids:\n    description: kids\n    categories: [education, search]\n    blocked: info-page\n    safe_search: true\n",
    ),
    (
        "safe-search.yaml",
        "rewrites:\n  - engine: google\n    target: forcesafesearch.google.com\n    names: [www.google.com, google.com]\n",
    ),
    (
        "remediation.yaml",
        "groups:\n  - id: antivirus\n    name: AV\n    domains: [antivirus.example, update.os.example]\n",
    ),
    (
        "probes.yaml",
        "probes:\n  - {name: captive.os.example, vendor: OS, kind: http, expects: 200, quarantine: sinkhole}\n  - {name: dns.probe.example, vendor: OS, kind: dns, expects: 192.0.2.255, quarantine: resolve}\n",
    ),
    (
        "bypass.yaml",
        "groups:\n  - id: resolvers\n    profiles: [kids]\n    domains: [dns.google.com, doh.example]\n",
    ),
    (
        "essentials.yaml",
        "groups:\n  - id: time\n    domains: [time.example]\ncanaries:\n  - {name: use-application-dns.net, why: DoH canary}\n",
    ),
];

/// The policy files of the small fixture.
pub const POLICY: &[(&str, &str)] = &[
    (
        "infected.yaml",
        "infected:\n  - prefix: 192.0.2.66\n    family: Mirai\n    source: shadowserver\n    first_seen: 2026-11-20T08:00:00Z\n    ticket: ABUSE-1\n  - prefix: 2001:db8:66:6600::/56\n    family: Emotet\n    source: cert\n    first_seen: 2026-11-20T08:00:00Z\n  - prefix: 203.0.113.66\n    family: Qakbot\n    source: botnet-lookup\n    first_seen: 2026-11-20T08:00:00Z\n  - prefix: 198.51.100.66\n    family: Redline\n    source: cert\n    first_seen: 2026-11-20T08:00:00Z\n  - prefix: 192.0.2.77\n    family: Mirai\n    source: cert\n    first_seen: 2026-11-20T08:00:00Z\n",
    ),
    (
        "enrolments.yaml",
        "enrolments:\n  - prefix: 192.0.2.20\n    profile: clean-pipe\n    enabled_by: portal\n    enabled_at: 2026-11-01T10:00:00Z\n  - prefix: 2001:db8:20:2000::/56\n    profile: kids\n    enabled_by: helpdesk\n    enabled_at: 2026-11-01T10:00:00Z\n  - prefix: 192.0.2.77\n    profile: kids\n    enabled_by: portal\n    enabled_at: 2026-11-01T10:00:00Z\n",
    ),
    (
        "organisations.yaml",
        "organisations:\n  - id: hospital\n    name: Hospital\n    networks: [203.0.113.0/24]\n    grace_hours: 48\n  - id: lazy-corp\n    name: Lazy Corp\n    networks: [198.51.100.0/24]\n    standing: revoked\n",
    ),
];

/// Sources of the small fixture, with `extra` policy files appended.
pub fn sources(extra: &[(&str, &str)]) -> SourceSet {
    SourceSet {
        policy_files: POLICY
            .iter()
            .chain(extra)
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect(),
        allowlist_files: ALLOWLISTS
            .iter()
            .map(|(n, t)| ((*n).to_owned(), format!("allowlists/{n}"), (*t).to_owned()))
            .collect(),
        ..SourceSet::default()
    }
}

/// Options serving every documentation range and loopback.
pub fn options() -> CompileOptions {
    CompileOptions {
        clients: [
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "2001:db8::/32",
            "127.0.0.0/8",
            "::1/128",
        ]
        .iter()
        .filter_map(|s| s.parse::<IpNet>().ok())
        .collect(),
        ..CompileOptions::default()
    }
}

/// `n` infected subscribers as CSV: IPv4 /32s from 10.0.0.0 upwards, every 4th an IPv6 /56.
pub fn infected_csv(n: usize) -> String {
    let mut s = String::with_capacity(n * 56);
    s.push_str("prefix,family,source,first_seen,ticket\n");
    let families = [
        "Mirai",
        "Emotet",
        "Qakbot",
        "Redline",
        "AgentTesla",
        "Formbook",
    ];
    for i in 0..n {
        let fam = families[i % families.len()];
        if i % 4 == 3 {
            let _ = writeln!(
                s,
                "2a02:{:x}:{:x}:{:x}00::/56,{fam},feed,2026-11-20T08:00:00Z,",
                0x1000 + (i >> 24),
                (i >> 8) & 0xffff,
                i & 0xff
            );
        } else {
            let a = 0x0a00_0000u32 + i as u32;
            let _ = writeln!(
                s,
                "{},{fam},feed,2026-11-20T08:00:00Z,",
                std::net::Ipv4Addr::from(a)
            );
        }
    }
    s
}

/// `n` enrolments as YAML (100.64.0.0/10 upwards), alternating profiles.
pub fn enrolments_yaml(n: usize) -> String {
    let mut s = String::with_capacity(n * 110);
    s.push_str("enrolments:\n");
    for i in 0..n {
        let a = std::net::Ipv4Addr::from(0x6440_0000u32 + i as u32);
        let p = if i % 2 == 0 { "clean-pipe" } else { "kids" };
        let _ = writeln!(
            s,
            "  - {{prefix: {a}, profile: {p}, enabled_by: portal, enabled_at: 2026-11-01T10:00:00Z}}"
        );
    }
    s
}
