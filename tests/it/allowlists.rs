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
        assert!(
            !p.services.is_empty(),
            "profile {} resolves to no service",
            p.name
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
