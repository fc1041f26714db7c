//! The curated allowlists in `allowlists/`, loaded through the real loader and checked.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use hickory_proto::rr::RecordType;

use cleanpipe::policy::compile::{CompileOptions, Overrides, compile};
use cleanpipe::policy::sources::Allowlists;
use cleanpipe::policy::{Action, Question, Reason, Snapshot, SourceSet, decide};

use crate::support::repo_allowlists;

fn parsed() -> Allowlists {
    let src = SourceSet::read(None, &repo_allowlists()).expect("allowlists readable");
    let mut lists = Allowlists::default();
    for (rel, display, text) in &src.allowlist_files {
        lists
            .add_file(rel, display, text)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    lists
}

/// The shipped allowlists plus two enrolled clients: 192.0.2.1 clean-pipe, 192.0.2.2 kids.
fn snapshot() -> Snapshot {
    let mut src = SourceSet::read(None, &repo_allowlists()).expect("allowlists readable");
    src.policy_files.push((
        "enrolments.yaml".into(),
        "enrolments:\n  - {prefix: 192.0.2.1, profile: clean-pipe, enabled_by: t, enabled_at: 2026-11-01T00:00:00Z}\n  - {prefix: 192.0.2.2, profile: kids, enabled_by: t, enabled_at: 2026-11-01T00:00:00Z}\n  - {prefix: 192.0.2.3, profile: kids, enabled_by: t, enabled_at: 2026-11-01T00:00:00Z}\n".into(),
    ));
    src.policy_files.push((
        "infected.yaml".into(),
        "infected:\n  - {prefix: 192.0.2.66, family: Mirai, source: t, first_seen: 2026-11-01T00:00:00Z}\n".into(),
    ));
    let options = CompileOptions {
        clients: vec!["192.0.2.0/24".parse().expect("net")],
        ..CompileOptions::default()
    };
    compile(&src, &Overrides::default(), &options).unwrap_or_else(|errs| {
        panic!(
            "the shipped allowlists must compile:\n{}",
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn ask(s: &Snapshot, client: &str, name: &str) -> (Action, Reason) {
    let ip: IpAddr = client.parse().expect("ip");
    let q = Question::new(name, RecordType::A).expect("name");
    let d = decide(s, &s.classify(ip), &q, 1_795_000_000);
    (d.action, d.reason)
}

#[test]
fn shipped_allowlists_load_and_are_complete() {
    let lists = parsed();
    assert!(!lists.meta.version.is_empty(), "meta.yaml has a version");
    assert!(
        !lists.meta.changelog.is_empty(),
        "meta.yaml has a changelog"
    );
    let n = lists.services.len();
    assert!((90..=130).contains(&n), "about 100 services, found {n}");
    let categories: HashSet<&str> = lists.categories.iter().map(|c| c.id.as_str()).collect();
    for (file, s) in &lists.services {
        assert!(
            categories.contains(s.category.as_str()),
            "{file}: {} has unknown category",
            s.id
        );
        assert!(
            file.ends_with(&format!("services/{}.yaml", s.category)),
            "{}: service in the wrong file {file}",
            s.id
        );
        assert!(
            !s.description.trim().is_empty() && !s.name.trim().is_empty(),
            "{}: name and description",
            s.id
        );
        assert!(!s.domains.is_empty(), "{}: at least one domain", s.id);
    }
    for c in &categories {
        assert!(
            lists.services.iter().any(|(_, s)| s.category == *c),
            "category {c} has no service"
        );
    }
}

#[test]
fn every_profile_is_non_empty_and_kids_stays_inside_its_categories() {
    let lists = parsed();
    let s = snapshot();
    for p in &s.profiles {
        // essentials-only is empty on purpose (night time in a schedule); every other profile
        // must resolve to services.
        assert_eq!(
            p.services.is_empty(),
            p.name == "essentials-only",
            "profile {} resolves to {} services",
            p.name,
            p.services.len()
        );
    }
    let (_, kids) = lists
        .profiles
        .iter()
        .find(|(n, _)| n == "kids")
        .expect("kids profile");
    let kids_snap = s
        .profiles
        .iter()
        .find(|p| p.name == "kids")
        .expect("kids compiled");
    assert!(kids.safe_search, "kids enforces safe search");
    for &si in &kids_snap.services {
        let (id, _, category) = &s.services[si as usize];
        assert!(
            kids.categories.contains(category) || kids.services.contains(id),
            "kids contains {id} ({category}) outside its categories and explicit services"
        );
    }
    let clean = s
        .profiles
        .iter()
        .find(|p| p.name == "clean-pipe")
        .expect("clean-pipe");
    assert_eq!(
        clean.services.len(),
        lists.services.len(),
        "clean-pipe is the full trusted zone"
    );
}

#[test]
fn every_main_domain_is_allowed_in_clean_pipe_and_random_names_are_not() {
    let lists = parsed();
    let s = snapshot();
    for (_, svc) in &lists.services {
        let main = &svc.domains[0];
        for name in [main.clone(), format!("www.{main}")] {
            let (action, reason) = ask(&s, "192.0.2.1", &name);
            assert_eq!(
                action,
                Action::Resolve,
                "clean-pipe must allow {name} ({}): {reason:?}",
                svc.id
            );
        }
    }
    for name in [
        "qzx-unrelated-7361.example",
        "casino-wins.example.net",
        "www.gambling.example",
    ] {
        assert_eq!(
            ask(&s, "192.0.2.1", name).0,
            Action::NxDomain,
            "{name} is outside the zone"
        );
        assert_eq!(
            ask(&s, "192.0.2.2", name).0,
            Action::Sinkhole(cleanpipe::policy::Page::Info)
        );
    }
}

#[test]
fn kids_get_safe_search_for_every_engine() {
    let s = snapshot();
    let mut targets = BTreeSet::new();
    for name in [
        "www.google.com",
        "www.google.be",
        "www.youtube.com",
        "www.bing.com",
        "duckduckgo.com",
    ] {
        match ask(&s, "192.0.2.2", name).0 {
            Action::Rewrite(t) => {
                targets.insert(s.rewrite_targets[t as usize].1.clone());
            }
            other => panic!("kids: {name} must be rewritten, got {other:?}"),
        }
        assert_eq!(
            ask(&s, "192.0.2.1", name).0,
            Action::Resolve,
            "clean-pipe has no safe search: {name}"
        );
    }
    let want: BTreeSet<String> = [
        "forcesafesearch.google.com",
        "restrict.youtube.com",
        "strict.bing.com",
        "safe.duckduckgo.com",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(targets, want);
    // The rewrite targets themselves must resolve for kids.
    for t in &want {
        assert_eq!(
            ask(&s, "192.0.2.2", t).0,
            Action::Resolve,
            "{t} must resolve in the kids zone"
        );
    }
}

#[test]
fn probes_and_essentials_work_in_every_profile_and_canaries_never_do() {
    let lists = parsed();
    let s = snapshot();
    for client in ["192.0.2.1", "192.0.2.2"] {
        for p in &lists.probes {
            assert_eq!(
                ask(&s, client, &p.name).0,
                Action::Resolve,
                "{client}: probe {} must resolve",
                p.name
            );
        }
        for g in &lists.essentials {
            for d in &g.domains {
                assert_eq!(
                    ask(&s, client, d).0,
                    Action::Resolve,
                    "{client}: essential {d}"
                );
            }
        }
        for c in &lists.canaries {
            assert_eq!(
                ask(&s, client, &c.name).0,
                Action::NxDomain,
                "{client}: canary {} must be NXDOMAIN",
                c.name
            );
        }
    }
    assert!(
        lists
            .canaries
            .iter()
            .any(|c| c.name == "use-application-dns.net")
    );
    assert!(lists.canaries.iter().any(|c| c.name == "mask.icloud.com"));
}

#[test]
fn quarantine_reaches_remediation_and_pops_up_the_portal() {
    let lists = parsed();
    let s = snapshot();
    for g in &lists.remediation {
        for d in &g.domains {
            assert_eq!(
                ask(&s, "192.0.2.66", d).0,
                Action::Resolve,
                "quarantined host must reach {d} ({})",
                g.id
            );
        }
    }
    for p in &lists.probes {
        let (action, _) = ask(&s, "192.0.2.66", &p.name);
        match p.quarantine {
            cleanpipe::policy::sources::ProbeQuarantine::Sinkhole => {
                assert_eq!(
                    action,
                    Action::Sinkhole(cleanpipe::policy::Page::Cleanup),
                    "{}",
                    p.name
                )
            }
            cleanpipe::policy::sources::ProbeQuarantine::Resolve => {
                assert_eq!(action, Action::Resolve, "{}", p.name)
            }
        }
    }
    assert_eq!(
        ask(&s, "192.0.2.66", "dns.msftncsi.com").0,
        Action::Resolve,
        "Windows' DNS probe gets its real answer"
    );
    assert_eq!(
        ask(&s, "192.0.2.66", "www.msftconnecttest.com").0,
        Action::Sinkhole(cleanpipe::policy::Page::Cleanup)
    );
    assert_eq!(
        ask(&s, "192.0.2.66", "www.kbc.be").0,
        Action::Sinkhole(cleanpipe::policy::Page::Cleanup),
        "banks are not remediation"
    );
}

#[test]
fn every_service_cites_the_vendor_page_its_names_come_from() {
    let lists = parsed();
    let date = |d: &str| {
        d.len() == 10
            && d.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            })
    };
    for (file, s) in &lists.services {
        assert!(!s.sources.is_empty(), "{file}: {} cites no source", s.id);
        for src in &s.sources {
            assert!(
                src.url.starts_with("https://") && src.url.len() > 12,
                "{file}: {}: source `{}` is not an https URL",
                s.id,
                src.url
            );
            assert!(
                date(&src.read) || src.read == "not-fetched",
                "{file}: {}: `read: {}` is neither a date (YYYY-MM-DD) nor not-fetched",
                s.id,
                src.read
            );
        }
    }
}

/// The labels after the last wildcard of a vendor pattern (`*.b.c`, `*cdn.b.c`, `a.*.b.c` →
/// `b.c`): a pattern is covered when that name is.
fn after_wildcard(host: &str) -> &str {
    match host.rfind('*') {
        None => host,
        Some(i) => host[i..].split_once('.').map_or("", |(_, rest)| rest),
    }
}

#[test]
fn the_allowlists_cover_ninety_percent_of_the_vendor_host_lists() {
    let s = snapshot();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/vendor-hosts");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/data/vendor-hosts")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "the vendor host lists are missing");
    let (mut total, mut covered) = (0usize, 0usize);
    let mut report = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        assert!(
            text.contains("# source: https://") && text.contains("# read: "),
            "{}: says where it comes from and when it was read",
            f.display()
        );
        let (mut n, mut ok, mut missing) = (0usize, 0usize, Vec::new());
        for line in text.lines() {
            let host = line.split('#').next().unwrap_or("").trim();
            if host.is_empty() {
                continue;
            }
            n += 1;
            let name = after_wildcard(host);
            // Covered: clean-pipe (the whole trusted zone plus essentials) resolves it.
            if !name.is_empty() && ask(&s, "192.0.2.1", name).0 == Action::Resolve {
                ok += 1;
            } else {
                missing.push(host.to_owned());
            }
        }
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_owned();
        let pct = 100.0 * ok as f64 / n.max(1) as f64;
        report.push(format!(
            "{name}: {ok}/{n} = {pct:.1} % (missing: {missing:?})"
        ));
        assert!(pct >= 90.0, "{name} below 90 %: {}", report.join("\n"));
        total += n;
        covered += ok;
    }
    let pct = 100.0 * covered as f64 / total as f64;
    println!(
        "{}\noverall {covered}/{total} = {pct:.1} %",
        report.join("\n")
    );
    assert!(pct >= 90.0, "overall coverage {pct:.1} % < 90 %");
}

#[test]
fn bypass_services_answer_nxdomain_for_kids_only() {
    let s = snapshot();
    // dns.google.com lies inside google.com, which kids reach (with safe search): the bypass
    // list must still win. The VPN's site would otherwise get the information page.
    for name in [
        "dns.google.com",
        "cloudflare-dns.com",
        "nordvpn.com",
        "www.nordvpn.com",
    ] {
        let (action, reason) = ask(&s, "192.0.2.2", name);
        assert_eq!(action, Action::NxDomain, "kids: {name}");
        assert!(
            matches!(reason, Reason::Bypass { .. } | Reason::Canary { .. }),
            "kids: {name}: {reason:?}"
        );
    }
    assert!(matches!(
        ask(&s, "192.0.2.2", "nordvpn.com").1,
        Reason::Bypass { .. }
    ));
    // clean-pipe keeps the Google name inside its Google services; nobody else is affected.
    assert_eq!(ask(&s, "192.0.2.1", "dns.google.com").0, Action::Resolve);
    assert_eq!(ask(&s, "192.0.2.9", "nordvpn.com").1, Reason::Normal);
}
