//! What a household changes in its trusted zone, and when: its own additions and removed
//! services (per enrolment), and weekly schedules (`schedules.yaml`).
//!
//! The same checks serve the compiler (files) and the admin API (before anything is written), so
//! an entry the API accepted always compiles.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::names::normalise;
use super::sources::{Allowlists, PeriodDef, SchedulesFile};
use super::{Household, Period, Schedule, Snapshot};

/// Default for `policy.household_max_names`.
pub const DEFAULT_MAX_NAMES: usize = 50;

/// Checks and normalises a name a household adds. Refused: wildcards (a name covers its
/// subtree already), addresses, top-level domains and public suffixes (`com`, `co.uk`,
/// `github.io`: everything under them belongs to unrelated owners).
pub fn household_name(name: &str) -> Result<String, String> {
    if name.contains('*') {
        return Err(format!(
            "`{name}`: no wildcards; a name already covers everything under it"
        ));
    }
    let n = normalise(name).map_err(|e| format!("`{name}`: {e}"))?;
    if n.parse::<IpAddr>().is_ok() {
        return Err(format!("`{n}` is an address; add the site's name"));
    }
    if !n.contains('.') {
        return Err(format!(
            "`{n}` is a top-level domain; add the site's own name (e.g. portal.school.example)"
        ));
    }
    if psl::suffix(n.as_bytes()).is_some_and(|s| s.as_bytes() == n.as_bytes()) {
        return Err(format!(
            "`{n}` is a public suffix: the names under it belong to unrelated owners"
        ));
    }
    Ok(n)
}

/// Which allowlisted names each service brings, for removals.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    /// Per service index: its `domains` and `shared` names, normalised.
    names: Vec<Vec<String>>,
    /// Name → the services that list it.
    listers: HashMap<String, Vec<u32>>,
}

impl Catalog {
    /// From the parsed allowlists (services in the order of [`Snapshot::services`]).
    pub fn new(lists: &Allowlists) -> Self {
        let mut c = Self::default();
        for (i, (_, s)) in lists.services.iter().enumerate() {
            let names: Vec<String> = s
                .domains
                .iter()
                .chain(&s.shared)
                .filter_map(|d| normalise(d).ok())
                .collect();
            for n in &names {
                c.listers.entry(n.clone()).or_default().push(i as u32);
            }
            c.names.push(names);
        }
        c
    }

    /// The names removing `removed` takes away, each with the profiles (bit mask) in which no
    /// kept member service still lists it.
    fn removed_names(&self, removed: &[u32], profiles: &[super::Profile]) -> Vec<(Box<[u8]>, u64)> {
        let set: HashSet<u32> = removed.iter().copied().collect();
        let mut out: Vec<(Box<[u8]>, u64)> = Vec::new();
        for &si in removed {
            for n in self.names.get(si as usize).into_iter().flatten() {
                if out.iter().any(|(o, _)| **o == *n.as_bytes()) {
                    continue;
                }
                let listers = self.listers.get(n).map_or(&[][..], |l| l.as_slice());
                let mut mask = 0u64;
                for (pi, p) in profiles.iter().enumerate().take(64) {
                    let mut members = listers.iter().filter(|s| p.services.contains(s));
                    let mut any = false;
                    if members.all(|s| {
                        any = true;
                        set.contains(s)
                    }) && any
                    {
                        mask |= 1 << pi;
                    }
                }
                if mask != 0 {
                    out.push((n.as_bytes().into(), mask));
                }
            }
        }
        out
    }
}

/// A household's settings as written (file entry or API call).
#[derive(Debug, Clone, Copy)]
pub struct HouseholdDef<'a> {
    /// Extra allowed names.
    pub allow: &'a [String],
    /// Removed services or categories.
    pub remove: &'a [String],
    /// Own schedule.
    pub schedule: Option<&'a str>,
}

/// Checks a household's settings against the snapshot's services, categories and schedules;
/// every problem, in words. `max_names`: `policy.household_max_names`.
pub fn check(snap: &Snapshot, h: HouseholdDef<'_>, max_names: usize) -> Vec<String> {
    resolve(snap, h, max_names).err().unwrap_or_default()
}

/// The compiled settings: normalised additions, removed service indexes, schedule index.
type Resolved = (Vec<Box<[u8]>>, Vec<u32>, Option<u16>);

fn resolve(
    snap: &Snapshot,
    h: HouseholdDef<'_>,
    max_names: usize,
) -> Result<Resolved, Vec<String>> {
    let mut errors = Vec::new();
    if h.allow.len() > max_names {
        errors.push(format!(
            "{} added names, at most {max_names} (policy.household_max_names)",
            h.allow.len()
        ));
    }
    let mut allow: Vec<Box<[u8]>> = Vec::new();
    for n in h.allow {
        match household_name(n) {
            Ok(n) if !allow.iter().any(|a| **a == *n.as_bytes()) => allow.push(n.as_bytes().into()),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    let mut removed: Vec<u32> = Vec::new();
    for r in h.remove {
        let by_id = snap.services.iter().position(|(id, _, _)| id == r);
        let by_category: Vec<u32> = snap
            .services
            .iter()
            .enumerate()
            .filter(|(_, (_, _, c))| c == r)
            .map(|(i, _)| i as u32)
            .collect();
        match (by_id, by_category.is_empty()) {
            (Some(i), _) => removed.push(i as u32),
            (None, false) => removed.extend(by_category),
            (None, true) => errors.push(format!(
                "cannot remove `{r}`: no service or category of that name (`cleanpipe allowlist services` lists them)"
            )),
        }
    }
    removed.sort_unstable();
    removed.dedup();
    let schedule = match h.schedule {
        None => None,
        Some(id) => match snap.schedules.iter().position(|s| s.id == id) {
            Some(i) => Some(i as u16),
            None => {
                errors.push(format!(
                    "unknown schedule `{id}` (schedules.yaml defines: {})",
                    snap.schedules
                        .iter()
                        .map(|s| s.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                None
            }
        },
    };
    if errors.is_empty() {
        Ok((allow, removed, schedule))
    } else {
        Err(errors)
    }
}

/// An enrolment's compiled household (`None` when it changes nothing) and schedule index.
pub type Built = (Option<Box<Household>>, Option<u16>);

/// The compiled household (`None` when it changes nothing) and schedule of an enrolment.
pub fn build(
    snap: &Snapshot,
    catalog: &Catalog,
    h: HouseholdDef<'_>,
    max_names: usize,
) -> Result<Built, Vec<String>> {
    let (allow, removed, schedule) = resolve(snap, h, max_names)?;
    let household = (!allow.is_empty() || !removed.is_empty()).then(|| {
        Box::new(Household {
            removed_names: catalog.removed_names(&removed, &snap.profiles).into(),
            allow: allow.into(),
            removed: removed.into(),
        })
    });
    Ok((household, schedule))
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn days_mask(days: &[String]) -> Result<u8, String> {
    let mut mask = 0u8;
    for d in days {
        mask |= match d.to_ascii_lowercase().as_str() {
            "daily" => 0x7f,
            "weekdays" => 0x1f,
            "weekend" => 0x60,
            other => match DAYS.iter().position(|x| other.starts_with(x)) {
                Some(i) if other.len() == 3 || DAYS_LONG[i] == other => 1 << i,
                _ => {
                    return Err(format!(
                        "unknown day `{d}` (mon … sun, weekdays, weekend, daily)"
                    ));
                }
            },
        };
    }
    if mask == 0 {
        return Err("`days` is empty".into());
    }
    Ok(mask)
}

const DAYS_LONG: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// `HH:MM` or `HH:MM:SS` → seconds after midnight; `24:00` is the end of the day.
fn time_of_day(t: &str) -> Result<u32, String> {
    let parts: Vec<&str> = t.trim().split(':').collect();
    let num = |s: &str, max: u32| -> Option<u32> {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
            .filter(|v| *v <= max)
    };
    let parsed = match parts.as_slice() {
        [h, m] => num(h, 24).zip(num(m, 59)).map(|(h, m)| (h, m, 0)),
        [h, m, s] => num(h, 24)
            .zip(num(m, 59))
            .zip(num(s, 59))
            .map(|((h, m), s)| (h, m, s)),
        _ => None,
    };
    match parsed {
        Some((24, 0, 0)) => Ok(86_400),
        Some((h, m, s)) if h < 24 => Ok(h * 3600 + m * 60 + s),
        _ => Err(format!("`{t}` is not a time of day (HH:MM or HH:MM:SS)")),
    }
}

fn period(p: &PeriodDef, profile: Option<u16>) -> Result<Period, String> {
    let days = days_mask(&p.days)?;
    let from = time_of_day(&p.from)?;
    let to = time_of_day(&p.to)?;
    if from == to {
        return Err(format!("period `{}` starts and ends at {}", p.name, p.from));
    }
    let profile = profile.ok_or_else(|| format!("unknown profile `{}`", p.profile))?;
    Ok(Period {
        name: p.name.clone(),
        days,
        from,
        to,
        profile,
    })
}

/// Compiles `schedules.yaml` into the snapshot (schedules, and the profiles that follow one);
/// every problem as `(message)` for the file.
pub fn compile_schedules(snap: &mut Snapshot, f: &SchedulesFile) -> Vec<String> {
    let mut errors = Vec::new();
    let zone = |name: &str| {
        jiff::tz::TimeZone::get(name).map_err(|e| {
            format!("time zone `{name}`: {e} (use an IANA name such as Europe/Brussels)")
        })
    };
    let default_tz = match zone(&f.time_zone) {
        Ok(tz) => Some(tz),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    for def in &f.schedules {
        if snap.schedules.iter().any(|s| s.id == def.id) {
            errors.push(format!("schedule `{}` is defined twice", def.id));
            continue;
        }
        let tz = match &def.time_zone {
            Some(name) => zone(name).map(|tz| (name.clone(), tz)),
            None => default_tz
                .clone()
                .map(|tz| (f.time_zone.clone(), tz))
                .ok_or_else(String::new),
        };
        let mut periods = Vec::new();
        for p in &def.periods {
            match period(p, snap.profile_index(&p.profile)) {
                Ok(p) => periods.push(p),
                Err(e) => errors.push(format!("schedule `{}`, period `{}`: {e}", def.id, p.name)),
            }
        }
        if def.periods.is_empty() {
            errors.push(format!("schedule `{}` has no periods", def.id));
        }
        match tz {
            Ok((time_zone, tz)) => snap.schedules.push(Schedule {
                id: def.id.clone(),
                time_zone,
                tz,
                periods,
            }),
            Err(e) if !e.is_empty() => errors.push(format!("schedule `{}`: {e}", def.id)),
            Err(_) => {}
        }
    }
    for (profile, schedule) in &f.profiles {
        let si = snap.schedules.iter().position(|s| s.id == *schedule);
        match (snap.profile_index(profile), si) {
            (Some(p), Some(si)) => {
                if let Some(p) = snap.profiles.get_mut(p as usize) {
                    p.schedule = Some(si as u16);
                }
            }
            (None, _) => errors.push(format!("profiles: unknown profile `{profile}`")),
            (_, None) => errors.push(format!(
                "profiles: profile `{profile}` follows unknown schedule `{schedule}`"
            )),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_household_cannot_add() {
        for bad in [
            "com",
            "*",
            "*.example.org",
            "co.uk",
            "github.io",
            "192.0.2.1",
            "",
            "a..b",
        ] {
            assert!(household_name(bad).is_err(), "{bad} must be refused");
        }
        assert_eq!(
            household_name("Portal.School.Example.").as_deref(),
            Ok("portal.school.example")
        );
        assert_eq!(household_name("club.co.uk").as_deref(), Ok("club.co.uk"));
    }

    #[test]
    fn times_and_days_parse_strictly() {
        assert_eq!(time_of_day("08:30"), Ok(30_600));
        assert_eq!(time_of_day("23:59:59"), Ok(86_399));
        assert_eq!(time_of_day("24:00"), Ok(86_400));
        for bad in ["8:30", "25:00", "12:60", "24:01", "noon", "12:00:00:00"] {
            assert!(time_of_day(bad).is_err(), "{bad}");
        }
        assert_eq!(days_mask(&["weekdays".into()]), Ok(0x1f));
        assert_eq!(days_mask(&["sat".into(), "Sunday".into()]), Ok(0x60));
        assert!(days_mask(&["funday".into()]).is_err());
        assert!(days_mask(&["monkey".into()]).is_err());
    }
}
