//! Table tests: every precedence row, IPv4 and IPv6, subtree matching and case.

use std::net::IpAddr;

use hickory_proto::rr::RecordType;

use super::*;
use crate::policy::compile::{Overrides, compile};
use crate::policy::fixture;
use crate::policy::sources::{Mode, ModeFile, Prefix};

const NOW: i64 = 1_795_000_000; // 2026-11-17

fn snapshot_with(extra: &[(&str, &str)], overrides: &Overrides) -> Snapshot {
    compile(&fixture::sources(extra), overrides, &fixture::options())
        .unwrap_or_else(|e| panic!("fixture policy must compile: {e:?}"))
}

fn snapshot() -> Snapshot {
    snapshot_with(&[], &Overrides::default())
}

fn ask(s: &Snapshot, client: &str, name: &str, qtype: RecordType, now: i64) -> Decision {
    let ip: IpAddr = client.parse().expect("test client address must parse");
    let q = Question::new(name, qtype).expect("test name must be valid");
    decide(s, &s.classify(ip), &q, now)
}

fn a(s: &Snapshot, client: &str, name: &str) -> Decision {
    ask(s, client, name, RecordType::A, NOW)
}

#[test]
fn row1_clients_outside_allowed_networks_are_refused() {
    let s = snapshot();
    for client in ["8.8.8.8", "2a00:1450::1", "10.1.2.3"] {
        let d = a(&s, client, "example.org");
        assert_eq!(d.action, Action::Refuse, "{client} must be refused");
        assert_eq!(d.reason, Reason::NotServed);
        assert_eq!(d.reason.ede().map(|e| e.0), Some(18));
    }
}

#[test]
fn row2_quarantine_sinkholes_everything_but_remediation() {
    let s = snapshot();
    for client in ["192.0.2.66", "2001:db8:66:66ff::1234"] {
        let d = a(&s, client, "random-name.example.net");
        assert_eq!(d.action, Action::Sinkhole(Page::Cleanup), "{client}");
        assert!(matches!(
            d.reason,
            Reason::Quarantined {
                revoked_org: None,
                ..
            }
        ));
        assert_eq!(d.reason.ede().map(|e| e.0), Some(15));
        // Remediation names resolve, whole subtree, any case, trailing dot.
        for name in [
            "antivirus.example",
            "DL.AntiVirus.Example.",
            "update.os.example",
        ] {
            let d = a(&s, client, name);
            assert_eq!(
                d.action,
                Action::Resolve,
                "{client} {name} must resolve for cleanup"
            );
            assert!(matches!(d.reason, Reason::Remediation { .. }));
        }
        // A trusted service is not remediation.
        assert_eq!(
            a(&s, client, "bank.example").action,
            Action::Sinkhole(Page::Cleanup)
        );
    }
    // The IPv6 /56 covers the whole delegation but not the neighbour /56.
    assert_eq!(
        a(&s, "2001:db8:66:6700::1", "x.example").action,
        Action::Resolve
    );
}

#[test]
fn row2_probes_pop_up_the_portal_but_dns_probe_resolves() {
    let s = snapshot();
    let d = a(&s, "192.0.2.66", "captive.os.example");
    assert_eq!(d.action, Action::Sinkhole(Page::Cleanup));
    let d = a(&s, "192.0.2.66", "dns.probe.example");
    assert_eq!(d.action, Action::Resolve);
}

#[test]
fn row2_other_query_types_are_sinkholed_too() {
    let s = snapshot();
    let d = ask(&s, "192.0.2.66", "mail.example.net", RecordType::MX, NOW);
    assert_eq!(d.action, Action::Sinkhole(Page::Cleanup));
}

#[test]
fn row2_infected_host_of_revoked_organisation_is_quarantined() {
    let s = snapshot();
    let d = a(&s, "198.51.100.66", "example.net");
    assert_eq!(d.action, Action::Sinkhole(Page::Cleanup));
    let org = s
        .organisations
        .iter()
        .position(|o| o.id == "lazy-corp")
        .map(|i| i as u32);
    assert!(matches!(d.reason, Reason::Quarantined { revoked_org, .. } if revoked_org == org));
}

#[test]
fn row2_quarantine_wins_over_enrolment() {
    let s = snapshot();
    let d = a(&s, "192.0.2.77", "school.example");
    assert_eq!(
        d.action,
        Action::Sinkhole(Page::Cleanup),
        "infected kids-profile host sees the cleanup page"
    );
}

#[test]
fn row3_infected_host_in_good_organisation_alerts_and_resolves() {
    let s = snapshot();
    let d = a(&s, "203.0.113.66", "example.net");
    assert_eq!(d.action, Action::Alert);
    assert!(matches!(d.reason, Reason::OrganisationAlert { .. }));
    // A clean host in the same organisation is simply served.
    assert_eq!(a(&s, "203.0.113.67", "example.net").reason, Reason::Normal);
}

#[test]
fn row4_enrolled_clean_pipe() {
    let s = snapshot();
    let c = "192.0.2.20";
    for name in [
        "bank.example",
        "WWW.Bank.Example.",
        "login.sso.example",
        "school.example",
        "time.example",
        "captive.os.example",
    ] {
        let d = a(&s, c, name);
        assert_eq!(
            d.action,
            Action::Resolve,
            "{name} is in the clean-pipe zone"
        );
        assert!(matches!(
            d.reason,
            Reason::TrustedAllowed { global: false, .. }
        ));
    }
    let d = a(&s, c, "random.example.net");
    assert_eq!(d.action, Action::NxDomain);
    assert_eq!(
        d.reason.ede().map(|e| e.0),
        Some(17),
        "opted-in customers get EDE 17 Filtered"
    );
    assert_eq!(
        a(&s, c, "notbank.example").action,
        Action::NxDomain,
        "no partial-label match"
    );
    let d = a(&s, c, "use-application-dns.net");
    assert_eq!((d.action, d.reason.label()), (Action::NxDomain, "canary"));
    // clean-pipe has no safe search: google.com resolves as itself.
    assert_eq!(a(&s, c, "www.google.com").action, Action::Resolve);
}

#[test]
fn row4_enrolled_kids_over_ipv6_get_safe_search_and_info_page() {
    let s = snapshot();
    let c = "2001:db8:20:20ab::5";
    let d = a(&s, c, "www.google.com");
    let Action::Rewrite(t) = d.action else {
        panic!("kids must get safe search, got {d:?}")
    };
    assert_eq!(
        s.rewrite_targets[t as usize].1,
        "forcesafesearch.google.com"
    );
    assert_eq!(
        a(&s, c, "maps.google.com").action,
        Action::Resolve,
        "rest of google.com stays allowed"
    );
    assert_eq!(a(&s, c, "school.example").action, Action::Resolve);
    let d = a(&s, c, "bank.example");
    assert_eq!(
        d.action,
        Action::Sinkhole(Page::Info),
        "banking is not in the kids profile"
    );
    assert_eq!(d.reason.ede().map(|e| e.0), Some(17));
}

#[test]
fn row4_global_trusted_only_mode() {
    let mode = "mode: trusted-only\nset_by: noc\nreason: worldwide worm\nexpires: 2026-12-01T00:00:00Z\nexempt: [192.0.2.250/32]\n";
    let s = snapshot_with(&[("mode.yaml", mode)], &Overrides::default());
    let d = a(&s, "192.0.2.1", "random.example.net");
    assert_eq!(d.action, Action::NxDomain);
    assert!(matches!(
        d.reason,
        Reason::TrustedBlocked { global: true, .. }
    ));
    assert_eq!(
        d.reason.ede().map(|e| e.0),
        Some(15),
        "global mode is EDE 15 Blocked"
    );
    assert_eq!(a(&s, "192.0.2.1", "bank.example").action, Action::Resolve);
    assert_eq!(
        a(&s, "2001:db8:1::1", "random.example.net").action,
        Action::NxDomain
    );
    // Exempt infrastructure is served normally, and the decision says why.
    let exempt = a(&s, "192.0.2.250", "random.example.net");
    assert_eq!(
        (exempt.action, exempt.reason),
        (Action::Resolve, Reason::Exempt)
    );
    // Enrolled kids keep their stricter profile.
    assert_eq!(
        a(&s, "2001:db8:20:2000::1", "bank.example").action,
        Action::Sinkhole(Page::Info)
    );
    // Quarantine still comes first.
    assert_eq!(
        a(&s, "192.0.2.66", "bank.example").action,
        Action::Sinkhole(Page::Cleanup)
    );
    // After expiry everyone is back to normal.
    let after = 1_796_083_200 + 1; // 2026-12-01T00:00:01Z
    assert_eq!(
        ask(&s, "192.0.2.1", "random.example.net", RecordType::A, after).reason,
        Reason::Normal
    );
}

#[test]
fn row5_everyone_else_resolves_normally() {
    let s = snapshot();
    for client in ["192.0.2.1", "2001:db8:1::1", "127.0.0.1"] {
        let d = a(&s, client, "anything.example.org");
        assert_eq!(
            (d.action, d.reason),
            (Action::Resolve, Reason::Normal),
            "{client}"
        );
    }
}

#[test]
fn admin_overrides_merge_over_files() {
    let mut o = Overrides::default();
    // Unflag a file entry (reported before the clear), flag a new one, change the mode.
    o.cleared
        .push(("192.0.2.66/32".parse().expect("net"), 1_796_000_000)); // after the report
    o.infected.push(crate::policy::sources::InfectedEntry {
        prefix: "192.0.2.1".parse::<Prefix>().expect("prefix"),
        family: "Manual".into(),
        source: "abuse-desk".into(),
        first_seen: chrono::DateTime::from_timestamp(NOW, 0).expect("time"),
        ticket: None,
        force: false,
    });
    o.mode = Some(crate::policy::ModeOverride {
        mode: ModeFile {
            mode: Mode::TrustedOnly,
            set_by: "noc".into(),
            reason: "test".into(),
            set_at: None,
            expires: None,
            exempt: vec![],
        },
        replace_exempt: false,
    });
    let s = snapshot_with(&[], &o);
    assert!(matches!(
        a(&s, "192.0.2.66", "example.net").reason,
        Reason::TrustedBlocked { global: true, .. }
    ));
    assert_eq!(
        a(&s, "192.0.2.1", "example.net").action,
        Action::Sinkhole(Page::Cleanup)
    );
    assert_eq!(s.mode.source, "admin-api");
}

#[test]
fn semantic_errors_name_file_and_line() {
    let bad = "enrolments:\n  - prefix: 192.0.2.30\n    profile: clean-pipe\n    enabled_by: x\n    enabled_at: 2026-11-01T10:00:00Z\n  - prefix: 192.0.2.31\n    profile: kidz\n    enabled_by: x\n    enabled_at: 2026-11-01T10:00:00Z\n  - prefix: 192.0.2.30\n    profile: kids\n    enabled_by: x\n    enabled_at: 2026-11-01T10:00:00Z\n";
    let errs = compile(
        &fixture::sources(&[("enrolments-2.yaml", bad)]),
        &Overrides::default(),
        &fixture::options(),
    )
    .expect_err("unknown profile and duplicate must fail");
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(
        text.iter()
            .any(|e| e.starts_with("enrolments-2.yaml:6:") && e.contains("kidz")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|e| e.starts_with("enrolments-2.yaml:10:") && e.contains("twice")),
        "{text:?}"
    );
}

#[test]
fn duplicate_owned_domain_across_services_is_rejected() {
    let mut src = fixture::sources(&[]);
    src.allowlist_files.push((
        "services/more.yaml".into(),
        "allowlists/services/more.yaml".into(),
        "services:\n  - id: bank2\n    name: B\n    category: banking\n    description: d\n    domains: [bank.example]\n".into(),
    ));
    let errs = compile(&src, &Overrides::default(), &fixture::options()).expect_err("duplicate");
    assert!(
        errs.iter().any(|e| e.message.contains("bank.example")),
        "{errs:?}"
    );
}

#[test]
fn row2_self_release_lifts_quarantine_until_it_ends_or_a_newer_report() {
    let mut o = Overrides::default();
    // 192.0.2.66 was reported 2026-11-20T08:00Z (1_795_161_600) and released on 2026-11-21T09:00Z
    // for a day.
    let at = 1_795_251_600;
    o.released
        .push(("192.0.2.66/32".parse().expect("net"), at, at + 86_400));
    let s = snapshot_with(&[], &o);
    let d = ask(&s, "192.0.2.66", "example.net", RecordType::A, at + 60);
    assert_eq!(d.action, Action::Resolve);
    assert!(matches!(d.reason, Reason::SelfReleased { until, .. } if until == at + 86_400));
    let d = ask(&s, "192.0.2.66", "example.net", RecordType::A, at + 86_400);
    assert_eq!(
        d.action,
        Action::Sinkhole(Page::Cleanup),
        "the release has ended"
    );
    // A release made before the report does not cover it.
    let mut o = Overrides::default();
    o.released.push((
        "192.0.2.66/32".parse().expect("net"),
        1_795_000_000,
        1_796_000_000,
    ));
    let s = snapshot_with(&[], &o);
    assert_eq!(
        ask(
            &s,
            "192.0.2.66",
            "example.net",
            RecordType::A,
            1_795_300_000
        )
        .action,
        Action::Sinkhole(Page::Cleanup)
    );
}

#[test]
fn bypass_services_are_nxdomain_in_the_profiles_listed_only() {
    let s = snapshot();
    let kids = "2001:db8:20:2000::1";
    for name in ["dns.google.com", "a.doh.example"] {
        let d = a(&s, kids, name);
        assert_eq!(d.action, Action::NxDomain, "kids: {name}");
        assert!(matches!(d.reason, Reason::Bypass { .. }), "{:?}", d.reason);
        assert_eq!(d.reason.ede().map(|e| e.0), Some(17));
    }
    // The rest of google.com stays as it was for kids (safe search), and clean-pipe keeps
    // dns.google.com: it lies inside google.com and the list names kids only.
    assert!(matches!(
        a(&s, kids, "www.google.com").action,
        Action::Rewrite(_)
    ));
    assert_eq!(
        a(&s, "192.0.2.20", "dns.google.com").action,
        Action::Resolve
    );
    assert_eq!(a(&s, "192.0.2.1", "doh.example").reason, Reason::Normal);
}

const HOUSEHOLDS: &str = "enrolments:\n  - prefix: 192.0.2.30\n    profile: kids\n    enabled_by: portal\n    enabled_at: 2026-11-01T10:00:00Z\n    allow: [portal.club.example, Homework.Example.]\n    remove: [school]\n  - prefix: 192.0.2.32\n    profile: kids\n    enabled_by: portal\n    enabled_at: 2026-11-01T10:00:00Z\n    remove: [search]\n";

#[test]
fn a_household_adds_names_and_removes_services_for_itself_only() {
    let s = snapshot_with(
        &[("enrolments-households.yaml", HOUSEHOLDS)],
        &Overrides::default(),
    );
    let home = "192.0.2.30";
    for name in [
        "portal.club.example",
        "www.portal.club.example",
        "homework.example",
    ] {
        let d = a(&s, home, name);
        assert_eq!(d.action, Action::Resolve, "{name}");
        assert!(
            matches!(d.reason, Reason::HouseholdAllowed { .. }),
            "{name}: {:?}",
            d.reason
        );
    }
    // Only what was added: the parent domain stays outside.
    assert_eq!(
        a(&s, home, "club.example").action,
        Action::Sinkhole(Page::Info)
    );
    // The removed school service is gone, with the login it shared with nobody else in kids.
    for name in ["school.example", "www.school.example", "sso.example"] {
        let d = a(&s, home, name);
        assert!(
            matches!(d.reason, Reason::TrustedBlocked { .. }),
            "{name}: {:?}",
            d.reason
        );
    }
    // Another kids household keeps school and gets none of these additions.
    let kids = "2001:db8:20:2000::1";
    assert_eq!(a(&s, kids, "school.example").action, Action::Resolve);
    assert_eq!(a(&s, kids, "sso.example").action, Action::Resolve);
    assert_eq!(
        a(&s, kids, "portal.club.example").action,
        Action::Sinkhole(Page::Info)
    );
    // Removing a category removes its services, and their safe-search aliases with them.
    let no_search = "192.0.2.32";
    for name in ["google.com", "www.google.com", "maps.google.com"] {
        let d = a(&s, no_search, name);
        assert!(
            matches!(d.reason, Reason::TrustedBlocked { .. }),
            "{name}: {:?}",
            d.reason
        );
    }
    assert_eq!(a(&s, no_search, "school.example").action, Action::Resolve);
    // Canaries and bypass services win over a household's additions.
    let with_bypass = HOUSEHOLDS.replace("Homework.Example.", "doh.example");
    let s = snapshot_with(
        &[("enrolments-households.yaml", &with_bypass)],
        &Overrides::default(),
    );
    assert!(matches!(
        a(&s, home, "doh.example").reason,
        Reason::Bypass { .. }
    ));
}

#[test]
fn household_entries_that_would_open_the_zone_are_refused_with_their_line() {
    for (bad, says) in [
        ("allow: [com]", "top-level domain"),
        ("allow: [\"*\"]", "wildcards"),
        ("allow: [co.uk]", "public suffix"),
        ("remove: [gambling]", "cannot remove `gambling`"),
        ("schedule: nights", "unknown schedule `nights`"),
    ] {
        let text = format!(
            "enrolments:\n  - prefix: 192.0.2.30\n    profile: kids\n    enabled_by: portal\n    enabled_at: 2026-11-01T10:00:00Z\n    {bad}\n"
        );
        let errs = compile(
            &fixture::sources(&[("enrolments-households.yaml", &text)]),
            &Overrides::default(),
            &fixture::options(),
        )
        .expect_err(bad);
        let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            all.iter()
                .any(|e| e.contains(says) && e.contains("enrolments-households.yaml:2")),
            "{bad}: {all:?}"
        );
    }
    let many: Vec<String> = (0..51).map(|i| format!("site{i}.example")).collect();
    let text = format!(
        "enrolments:\n  - prefix: 192.0.2.30\n    profile: kids\n    enabled_by: portal\n    enabled_at: 2026-11-01T10:00:00Z\n    allow: [{}]\n",
        many.join(", ")
    );
    let errs = compile(
        &fixture::sources(&[("enrolments-households.yaml", &text)]),
        &Overrides::default(),
        &fixture::options(),
    )
    .expect_err("51 names");
    assert!(
        errs.iter().any(|e| e.to_string().contains("at most 50")),
        "{errs:?}"
    );
}

const SCHEDULES: &str = "time_zone: Europe/Brussels\nschedules:\n  - id: school-nights\n    periods:\n      - {name: school, days: [weekdays], from: \"08:30\", to: \"15:30\", profile: kids}\n      - {name: night, days: [sun, mon, tue, wed, thu], from: \"21:00\", to: \"07:00\", profile: kids}\n";

fn who(s: &Snapshot, client: &str, now: i64) -> Who {
    identify(s, &s.classify(client.parse().expect("ip")), now)
}

#[test]
fn a_schedule_changes_the_profile_by_local_time_and_weekday() {
    let enrol = "enrolments:\n  - prefix: 192.0.2.31\n    profile: clean-pipe\n    enabled_by: portal\n    enabled_at: 2026-11-01T10:00:00Z\n    schedule: school-nights\n";
    let s = snapshot_with(
        &[("schedules.yaml", SCHEDULES), ("enrolments-31.yaml", enrol)],
        &Overrides::default(),
    );
    let client = "192.0.2.31";
    let kids = s.profile_index("kids").expect("kids");
    let clean = s.profile_index("clean-pipe").expect("clean-pipe");
    // (local time, Europe/Brussels; expected profile; expected period)
    for (now, what, profile, period) in [
        (1_794_992_400, "Wed 10:00", kids, Some(0)),
        (1_795_012_199, "Wed 15:29:59", kids, Some(0)),
        (1_795_012_200, "Wed 15:30", clean, None),
        (1_795_035_600, "Wed 22:00", kids, Some(1)),
        (
            1_795_067_999,
            "Thu 06:59:59 (night from Wednesday)",
            kids,
            Some(1),
        ),
        (1_795_068_000, "Thu 07:00", clean, None),
        (1_795_251_600, "Sat 10:00", clean, None),
        (
            1_795_323_600,
            "Sun 06:00 (Saturday night is free)",
            clean,
            None,
        ),
        (1_795_410_000, "Mon 06:00 (Sunday night)", kids, Some(1)),
        (
            1_782_888_300,
            "Wed 1 July 08:45 CEST (summer time)",
            kids,
            Some(0),
        ),
    ] {
        match who(&s, client, now) {
            Who::Trusted {
                profile: p,
                period: got,
                global: false,
            } => {
                assert_eq!(p, profile, "{what}");
                assert_eq!(got.map(|g| g.period), period, "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
        let bank = ask(&s, client, "bank.example", RecordType::A, now).action;
        let want = if profile == kids {
            Action::Sinkhole(Page::Info)
        } else {
            Action::Resolve
        };
        assert_eq!(bank, want, "{what}: bank.example");
    }
    // A profile's schedule applies to every enrolment in it that has none of its own.
    let by_profile = format!("{SCHEDULES}profiles:\n  clean-pipe: school-nights\n");
    let s = snapshot_with(&[("schedules.yaml", &by_profile)], &Overrides::default());
    assert!(matches!(
        who(&s, "192.0.2.20", 1_794_992_400),
        Who::Trusted { profile, period: Some(_), .. } if profile == kids
    ));
    assert!(matches!(
        who(&s, "192.0.2.20", 1_795_251_600),
        Who::Trusted { profile, period: None, .. } if profile == clean
    ));
}

#[test]
fn broken_schedules_are_refused_with_what_is_wrong() {
    for (bad, says) in [
        (
            SCHEDULES.replace("Europe/Brussels", "Europe/Atlantis"),
            "time zone `Europe/Atlantis`",
        ),
        (
            SCHEDULES.replace("\"08:30\"", "\"8h30\""),
            "not a time of day",
        ),
        (SCHEDULES.replace("[weekdays]", "[someday]"), "unknown day"),
        (
            SCHEDULES.replace("profile: kids}", "profile: teens}"),
            "unknown profile `teens`",
        ),
        (
            format!("{SCHEDULES}profiles:\n  kids: weekends\n"),
            "unknown schedule `weekends`",
        ),
    ] {
        let errs = compile(
            &fixture::sources(&[("schedules.yaml", &bad)]),
            &Overrides::default(),
            &fixture::options(),
        )
        .expect_err(says);
        assert!(
            errs.iter()
                .any(|e| e.to_string().contains(says) && e.to_string().contains("schedules.yaml")),
            "{says}: {errs:?}"
        );
    }
}
