//! Response Policy Zones (RPZ): the threat-feed format of BIND, Unbound, PowerDNS and Knot.
//!
//! Supported triggers: QNAME (`name` and `*.name`, relative to the zone origin) and
//! `rpz-client-ip` (`<prefix-length>.<reversed address>.rpz-client-ip`, IPv6 with `zz` for `::`).
//! Supported actions: NXDOMAIN (`CNAME .`), NODATA (`CNAME *.`), PASSTHRU (`CNAME rpz-passthru.`),
//! DROP (`CNAME rpz-drop.`), TCP-only (`CNAME rpz-tcp-only.`) and local data (A, AAAA, TXT, or a
//! CNAME to another name such as the walled garden). `rpz-ip`, `rpz-nsdname` and `rpz-nsip`
//! triggers are counted and ignored. A `TXT "family=<name>"` at a trigger (or at the apex, for the
//! whole zone) names the malware family for botnet feeds.
//!
//! The parser is a small line-based zone-file reader (`$ORIGIN`, `$TTL`, comments, parentheses,
//! omitted owner/TTL/class) written for speed on million-line feeds; every malformed record is
//! reported with its line.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::names::{NameTable, QName, normalise, validate};
use super::prefix::PrefixMap;
use super::sources::PolicyError;

/// What a trigger does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpzAction {
    /// Answer NXDOMAIN.
    NxDomain,
    /// Answer NOERROR with no records.
    NoData,
    /// Stop RPZ processing; answer normally.
    Passthru,
    /// Send no answer.
    Drop,
    /// Over UDP answer with TC=1 so the client retries over TCP; over TCP answer normally.
    TcpOnly,
    /// Answer with the zone's local data `i`.
    LocalData(u32),
}

/// A local-data record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalRecord {
    /// IPv4 address.
    A(Ipv4Addr),
    /// IPv6 address.
    Aaaa(Ipv6Addr),
    /// Text.
    Txt(Box<str>),
    /// Alias (e.g. the walled garden's name).
    Cname(Box<str>),
}

/// One trigger's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// What to do.
    pub action: RpzAction,
    /// Index into [`RpzZone::families`], `u32::MAX` for none.
    pub family: u32,
    /// Line in the zone file (0 for transferred zones).
    pub line: u32,
}

/// What matched in a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The query name (or a wildcard covering it).
    Qname,
    /// The client address.
    ClientIp,
}

/// A compiled RPZ zone.
#[derive(Debug, Default)]
pub struct RpzZone {
    /// Origin (lowercase, no trailing dot).
    pub origin: String,
    /// SOA serial (0 when the zone has no SOA).
    pub serial: u32,
    exact: NameTable<Rule>,
    wildcard: NameTable<Rule>,
    client_ip: PrefixMap<Rule>,
    /// Local data sets.
    pub local: Vec<Vec<LocalRecord>>,
    /// Family names (interned).
    pub families: Vec<Box<str>>,
    /// `family=` at the apex, if any.
    pub zone_family: Option<Box<str>>,
    /// Triggers of unsupported kinds that were skipped.
    pub ignored: usize,
}

impl RpzZone {
    /// A zone with no triggers (a transferred feed before its first transfer).
    pub fn empty(origin: &str) -> Self {
        Self {
            origin: origin.trim_end_matches('.').to_ascii_lowercase(),
            ..Self::default()
        }
    }

    /// Number of QNAME and client-IP triggers.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len() + self.client_ip.len()
    }

    /// True when the zone has no trigger.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every `rpz-client-ip` trigger and its rule.
    pub fn client_triggers(&self) -> impl Iterator<Item = (IpNet, &Rule)> {
        self.client_ip.iter()
    }

    /// The rule for a client address, if any.
    pub fn match_client(&self, ip: IpAddr) -> Option<Rule> {
        self.client_ip.longest_match(ip).map(|(_, r)| *r)
    }

    /// The rule for a query name: an exact trigger, else the closest wildcard (`*.example.com`
    /// covers names below `example.com`, not `example.com` itself).
    pub fn match_qname(&self, q: &QName) -> Option<Rule> {
        if let Some(r) = self
            .exact
            .get(q.as_bytes())
            .filter(|r| r.action != METADATA)
        {
            return Some(*r);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        q.suffixes()
            .skip(1)
            .find_map(|s| self.wildcard.get(s).filter(|r| r.action != METADATA))
            .copied()
    }

    /// The family name of a rule (the zone's when the rule has none).
    pub fn family(&self, r: &Rule) -> Option<&str> {
        self.families
            .get(r.family as usize)
            .map(|s| &**s)
            .or(self.zone_family.as_deref())
    }
}

/// Reads `"rpz-client-ip"` owner labels (without that suffix): `32.1.2.0.192` → 192.0.2.1/32,
/// `48.zz.db8.2001` → 2001:db8::/48.
fn client_ip_trigger(labels: &str) -> Result<IpNet, String> {
    let parts: Vec<&str> = labels.split('.').collect();
    let (len, addr) = parts.split_first().ok_or("empty rpz-client-ip trigger")?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("bad prefix length `{len}`"))?;
    let rev: Vec<&str> = addr.iter().rev().copied().collect();
    let ip: IpAddr = if rev.len() == 4 && rev.iter().all(|p| p.parse::<u8>().is_ok()) {
        IpAddr::V4(rev.join(".").parse().map_err(|_| "bad IPv4 address")?)
    } else {
        let text = rev.join(":").replace("zz", "");
        let text = if text.starts_with(':') && !text.starts_with("::") {
            format!(":{text}")
        } else {
            text
        };
        let text = if text.ends_with(':') && !text.ends_with("::") {
            format!("{text}:")
        } else {
            text
        };
        IpAddr::V6(
            text.parse()
                .map_err(|_| format!("bad IPv6 address in `{labels}`"))?,
        )
    };
    let net = IpNet::new(ip, len).map_err(|_| format!("prefix length {len} too long"))?;
    if net.trunc() != net {
        return Err(format!("{net} has host bits set"));
    }
    Ok(net)
}

/// Splits zone-file text into logical records: `(line, owner omitted, tokens)`, joining
/// parentheses and dropping comments. Tokens borrow from the text; a quoted string is one token
/// with its quotes.
fn records(text: &str) -> impl Iterator<Item = (u32, bool, Vec<&str>, bool)> + '_ {
    let mut lines = text.lines().enumerate();
    std::iter::from_fn(move || {
        loop {
            let (i, first) = lines.next()?;
            let starts_blank = first.starts_with([' ', '\t']);
            let mut tokens = Vec::with_capacity(4);
            let mut depth = 0i32;
            let mut line = first;
            loop {
                tokenize(line, &mut tokens, &mut depth);
                if depth <= 0 {
                    break;
                }
                match lines.next() {
                    Some((_, l)) => line = l,
                    None => break,
                }
            }
            if !tokens.is_empty() {
                // `depth != 0`: a parenthesis opened and never closed (or closed twice).
                return Some((i as u32 + 1, starts_blank, tokens, depth != 0));
            }
        }
    })
}

fn tokenize<'a>(line: &'a str, out: &mut Vec<&'a str>, depth: &mut i32) {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b';' => return,
            b'(' => {
                *depth += 1;
                i += 1;
            }
            b')' => {
                *depth -= 1;
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(b.len());
                // An escape may have skipped into a multi-byte character: end on a boundary.
                while !line.is_char_boundary(i) {
                    i += 1;
                }
                out.push(&line[start..i]);
            }
            _ => {
                let start = i;
                while i < b.len()
                    && !b[i].is_ascii_whitespace()
                    && !matches!(b[i], b';' | b'(' | b')' | b'"')
                {
                    i += 1;
                }
                out.push(&line[start..i]);
            }
        }
    }
}

fn is_class(t: &str) -> bool {
    matches!(t.to_ascii_uppercase().as_str(), "IN" | "CH" | "HS" | "CS")
}

/// The text of a TXT token: quotes removed and escapes decoded (`\"`, `\\`, `\DDD`, `\X`).
/// An opening quote without its closing quote is an error, not text.
fn unquote(t: &str) -> Result<String, String> {
    let inner = match t.strip_prefix('"') {
        Some(rest) => {
            let closed = rest.len() - rest.trim_end_matches('"').len();
            // The last quote must not itself be escaped (`"abc\"` is unterminated).
            let escapes = rest[..rest.len() - closed.min(1)]
                .bytes()
                .rev()
                .take_while(|b| *b == b'\\')
                .count();
            if closed == 0 || escapes % 2 == 1 {
                return Err("unterminated quoted string".into());
            }
            &rest[..rest.len() - 1]
        }
        None => t,
    };
    let mut out = Vec::with_capacity(inner.len());
    let b = inner.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            let digits = &b[i + 1..b.len().min(i + 4)];
            if digits.len() == 3 && digits.iter().all(u8::is_ascii_digit) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
                out.push(u8::try_from(v).map_err(|_| format!("escape \\{v} is above 255"))?);
                i += 4;
            } else {
                out.push(b[i + 1]);
                i += 2;
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "TXT data is not valid UTF-8".into())
}

/// A trigger while parsing: its line, action, local data and family.
#[derive(Debug, Clone, Copy)]
struct Pending {
    line: u32,
    action: Option<RpzAction>,
    local: u32,
    family: u32,
    broken: bool,
}

impl Pending {
    fn new(line: u32) -> Self {
        Self {
            line,
            action: None,
            local: u32::MAX,
            family: u32::MAX,
            broken: false,
        }
    }
}

/// The error for a file whose zone name is known from nowhere.
pub const NO_ORIGIN: &str = "the zone's name is not known: set `zone:` for this feed in the configuration (or add `$ORIGIN` to the file)";

/// Parses an RPZ zone. `origin` is the zone's name (from configuration or the transfer); when
/// `None`, the first `$ORIGIN` or SOA owner is used.
pub fn parse(file: &str, text: &str, origin: Option<&str>) -> Result<RpzZone, Vec<PolicyError>> {
    let mut p = Parser::new(file, text, origin);
    for (line, blank_owner, tokens, unbalanced) in records(text) {
        let flow = if unbalanced {
            p.err(line, "unbalanced parentheses".into());
            Flow::Next
        } else if tokens[0].starts_with('$') {
            p.directive(line, &tokens)
        } else {
            p.record(line, blank_owner, &tokens)
        };
        if flow == Flow::Stop {
            return Err(p.errors);
        }
    }
    p.finish()
}

/// Whether parsing goes on after a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Next,
    /// A problem that makes every following line wrong (no zone name): stop, one error.
    Stop,
}

/// The state of one parse.
struct Parser<'f> {
    file: &'f str,
    zone: RpzZone,
    errors: Vec<PolicyError>,
    /// The zone's name, once known.
    zone_origin: Option<String>,
    /// What relative names are relative to (`$ORIGIN`).
    current_origin: String,
    /// The last owner (blank owners repeat it).
    owner: String,
    family_index: rustc_hash::FxHashMap<String, u32>,
    exact: NameTable<Pending>,
    wildcard: NameTable<Pending>,
    client: rustc_hash::FxHashMap<String, Pending>,
}

/// Which table a trigger lives in.
#[derive(Clone, Copy)]
enum Slot {
    Exact,
    Wildcard,
    Client,
}

impl<'f> Parser<'f> {
    fn new(file: &'f str, text: &str, origin: Option<&str>) -> Self {
        let zone_origin = origin.map(|o| o.trim_end_matches('.').to_ascii_lowercase());
        let mut exact = NameTable::default();
        // A feed is about one trigger per line: size the table once (a million-name feed
        // otherwise spends a sixth of its load time rehashing).
        let lines = text.bytes().filter(|&b| b == b'\n').count();
        exact.reserve(lines, text.len() / 2);
        Self {
            file,
            zone: RpzZone::default(),
            errors: Vec::new(),
            current_origin: zone_origin.clone().unwrap_or_default(),
            zone_origin,
            owner: String::new(),
            family_index: Default::default(),
            exact,
            wildcard: NameTable::default(),
            client: Default::default(),
        }
    }

    /// An error at `line` (at most 100 are kept).
    fn err(&mut self, line: u32, m: String) {
        if self.errors.len() < 100 {
            self.errors
                .push(PolicyError::at(self.file, line as usize, m));
        }
    }

    /// `$ORIGIN`, `$TTL`, `$INCLUDE`.
    fn directive(&mut self, line: u32, tokens: &[&str]) -> Flow {
        if tokens[0].eq_ignore_ascii_case("$ORIGIN") {
            match tokens.get(1) {
                Some(o) => {
                    self.current_origin = absolute(o, &self.current_origin);
                    if self.zone_origin.is_none() {
                        self.zone_origin = Some(self.current_origin.clone());
                    }
                }
                None => self.err(line, "$ORIGIN needs a name".into()),
            }
        } else if tokens[0].eq_ignore_ascii_case("$INCLUDE") {
            // Followed by no RPZ implementation we serve beside; a feed is one file (or one
            // transfer), so an include is an error rather than silently missing triggers.
            self.err(
                line,
                "$INCLUDE is not supported: a feed is a single file (merge the included file into it)"
                    .into(),
            );
        }
        Flow::Next // $TTL: nothing to do
    }

    /// One resource record.
    fn record(&mut self, line: u32, blank_owner: bool, tokens: &[&str]) -> Flow {
        let mut t = tokens.iter().copied();
        if !blank_owner {
            let o = t.next().unwrap_or_default();
            set_absolute(&mut self.owner, o, &self.current_origin);
        }
        // [ttl] [class] | [class] [ttl]
        let Some(rtype) = t
            .by_ref()
            .find(|tok| !(tok.bytes().all(|b| b.is_ascii_digit()) || is_class(tok)))
        else {
            self.err(line, "record without a type".into());
            return Flow::Next;
        };
        let data: Vec<&str> = t.collect();
        if rtype.eq_ignore_ascii_case("SOA") {
            return self.soa(line, &data);
        }
        let Some(origin) = self.zone_origin.as_deref() else {
            self.errors
                .push(PolicyError::at(self.file, line as usize, NO_ORIGIN));
            return Flow::Stop;
        };
        let rel = if self.owner == origin {
            String::new()
        } else if let Some(r) = self
            .owner
            .strip_suffix(origin)
            .and_then(|r| r.strip_suffix('.'))
        {
            r.to_owned()
        } else {
            let m = format!("`{}` is outside the zone `{origin}`", self.owner);
            self.err(line, m);
            return Flow::Next;
        };
        if rel.is_empty() {
            self.apex(line, rtype, &data);
            return Flow::Next;
        }
        let slot = if rel.ends_with(".rpz-client-ip") {
            Slot::Client
        } else if rel.ends_with(".rpz-ip")
            || rel.ends_with(".rpz-nsdname")
            || rel.ends_with(".rpz-nsip")
        {
            self.zone.ignored += 1;
            return Flow::Next;
        } else if rel.starts_with("*.") {
            Slot::Wildcard
        } else {
            Slot::Exact
        };
        self.trigger(line, slot, &rel, rtype, &data);
        Flow::Next
    }

    /// The SOA: the zone's name when nothing named it yet, and its serial.
    fn soa(&mut self, line: u32, data: &[&str]) -> Flow {
        if self.zone_origin.is_none() {
            if self.owner.is_empty() {
                // `@ SOA ...` with neither `$ORIGIN` nor a configured zone: every name would be
                // "outside the zone". Say what is missing, once.
                self.errors
                    .push(PolicyError::at(self.file, line as usize, NO_ORIGIN));
                return Flow::Stop;
            }
            self.zone_origin = Some(self.owner.clone());
        }
        if self.current_origin.is_empty() {
            self.current_origin = self.owner.clone();
        }
        match data.get(2).and_then(|s| s.parse::<u32>().ok()) {
            Some(serial) => self.zone.serial = serial,
            None => self.err(line, "SOA without a serial".into()),
        }
        Flow::Next
    }

    /// A record at the apex: SOA/NS are zone plumbing; a TXT `family=` names the zone's family.
    fn apex(&mut self, line: u32, rtype: &str, data: &[&str]) {
        if rtype.eq_ignore_ascii_case("TXT") {
            match txt(data) {
                Ok(text) => {
                    if let Some(f) = text.strip_prefix("family=") {
                        self.zone.zone_family = Some(f.trim().into());
                    }
                }
                Err(e) => self.err(line, format!("TXT: {e}")),
            }
        }
    }

    /// A record at a trigger: its action, local data or family.
    fn trigger(&mut self, line: u32, slot: Slot, rel: &str, rtype: &str, data: &[&str]) {
        let first = data.first().copied().unwrap_or("");
        // What the record says, decided before the trigger's entry is borrowed.
        let what: Result<Option<Said>, String> = match rtype.to_ascii_uppercase().as_str() {
            "CNAME" => match first.to_ascii_lowercase().as_str() {
                "." => Ok(Some(Said::Action(RpzAction::NxDomain))),
                "*." => Ok(Some(Said::Action(RpzAction::NoData))),
                "rpz-passthru." => Ok(Some(Said::Action(RpzAction::Passthru))),
                "rpz-drop." => Ok(Some(Said::Action(RpzAction::Drop))),
                "rpz-tcp-only." => Ok(Some(Said::Action(RpzAction::TcpOnly))),
                "" => Err("CNAME without a target".into()),
                target => normalise(&absolute(target, &self.current_origin))
                    .map(|n| Some(Said::Local(LocalRecord::Cname(n.into()))))
                    .map_err(|e| format!("CNAME target: {e}")),
            },
            "A" => first
                .parse()
                .map(|a| Some(Said::Local(LocalRecord::A(a))))
                .map_err(|_| format!("bad IPv4 address `{first}`")),
            "AAAA" => first
                .parse()
                .map(|a| Some(Said::Local(LocalRecord::Aaaa(a))))
                .map_err(|_| format!("bad IPv6 address `{first}`")),
            "TXT" => txt(data)
                .map(|text| {
                    Some(match text.strip_prefix("family=") {
                        Some(f) => Said::Family(f.trim().to_owned()),
                        None => Said::Local(LocalRecord::Txt(text.into())),
                    })
                })
                .map_err(|e| format!("TXT: {e}")),
            "NS" | "RRSIG" | "NSEC" | "NSEC3" | "DNSKEY" | "DS" => Ok(None),
            other => Err(format!("unsupported RPZ record type {other}")),
        };
        let family = match &what {
            Ok(Some(Said::Family(f))) => Some(self.family(f)),
            _ => None,
        };
        let problem = {
            let Some(p) = self.entry(line, slot, rel) else {
                return;
            };
            match what {
                Ok(Some(Said::Action(a))) => {
                    p.action = Some(a);
                    None
                }
                Ok(Some(Said::Local(r))) => Some(Ok((p.local, r))),
                Ok(Some(Said::Family(_))) => {
                    p.family = family.unwrap_or(u32::MAX);
                    None
                }
                Ok(None) => None,
                Err(m) => {
                    p.broken = true;
                    Some(Err(m))
                }
            }
        };
        match problem {
            Some(Ok((local, r))) => {
                let local = if local == u32::MAX {
                    let i = self.zone.local.len() as u32;
                    self.zone.local.push(Vec::with_capacity(1));
                    if let Some(p) = self.entry(line, slot, rel) {
                        p.local = i;
                    }
                    i
                } else {
                    local
                };
                if let Some(v) = self.zone.local.get_mut(local as usize) {
                    v.push(r);
                }
            }
            Some(Err(m)) => self.err(line, m),
            None => {}
        }
    }

    /// The interned index of a family name.
    fn family(&mut self, f: &str) -> u32 {
        let next = self.zone.families.len() as u32;
        let i = *self.family_index.entry(f.to_owned()).or_insert(next);
        if i == next {
            self.zone.families.push(f.into());
        }
        i
    }

    /// The pending entry of a trigger, created at its first record (`None` for an invalid
    /// name, reported).
    fn entry(&mut self, line: u32, slot: Slot, rel: &str) -> Option<&mut Pending> {
        let (table, name) = match slot {
            Slot::Client => {
                return Some(
                    self.client
                        .entry(rel.to_owned())
                        .or_insert_with(|| Pending::new(line)),
                );
            }
            Slot::Wildcard => (&mut self.wildcard, rel.strip_prefix("*.").unwrap_or(rel)),
            Slot::Exact => (&mut self.exact, rel),
        };
        if table.get(name.as_bytes()).is_none()
            && let Err(e) = validate(name)
        {
            if self.errors.len() < 100 {
                self.errors.push(PolicyError::at(
                    self.file,
                    line as usize,
                    format!("trigger: {e}"),
                ));
            }
            return None;
        }
        table.entry_or(name.as_bytes(), || Pending::new(line))
    }

    /// Every trigger checked, the tables compiled.
    fn finish(mut self) -> Result<RpzZone, Vec<PolicyError>> {
        let Some(origin) = self.zone_origin.take() else {
            self.errors.push(PolicyError::at(
                self.file,
                0,
                "no zone origin: add $ORIGIN or an SOA record",
            ));
            return Err(self.errors);
        };
        self.zone.origin = origin;
        // Every trigger needs exactly one kind of answer.
        let mut problems = Vec::new();
        let mut check = |name: &str, p: &Pending| {
            if p.broken {
                return; // already reported
            }
            match (p.action, p.local != u32::MAX) {
                (Some(_), true) => problems.push((
                    p.line,
                    format!("`{name}` mixes a policy action with local data"),
                )),
                (None, false) if p.family == u32::MAX => {
                    problems.push((p.line, format!("`{name}` has no action")))
                }
                _ => {}
            }
        };
        for (name, p) in self.exact.iter().chain(self.wildcard.iter()) {
            check(&String::from_utf8_lossy(name), p);
        }
        let client = std::mem::take(&mut self.client);
        let mut bad_ips = Vec::new();
        for (name, p) in &client {
            check(name, p);
            match client_ip_trigger(name.trim_end_matches(".rpz-client-ip")) {
                Ok(net) => {
                    self.zone.client_ip.insert(net, to_rule(*p));
                }
                Err(e) => bad_ips.push((p.line, format!("rpz-client-ip trigger `{name}`: {e}"))),
            }
        }
        for (line, m) in problems.into_iter().chain(bad_ips) {
            self.err(line, m);
        }
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        // Entries with only a family and no action are metadata, never matched.
        let mut zone = self.zone;
        zone.exact = self.exact.map_values(to_rule);
        zone.wildcard = self.wildcard.map_values(to_rule);
        zone.exact.shrink_to_fit();
        zone.wildcard.shrink_to_fit();
        zone.local.shrink_to_fit();
        Ok(zone)
    }
}

/// What one record at a trigger says.
enum Said {
    Action(RpzAction),
    Local(LocalRecord),
    Family(String),
}

/// TXT data: its character strings, unquoted and joined.
fn txt(data: &[&str]) -> Result<String, String> {
    data.iter()
        .map(|t| unquote(t))
        .collect::<Result<Vec<_>, _>>()
        .map(|parts| parts.concat())
}

/// The "action" of an owner that only carries metadata (a `TXT "family=..."` without a
/// trigger action): stored so the table needs no second pass, never matched.
const METADATA: RpzAction = RpzAction::LocalData(u32::MAX);

fn to_rule(p: Pending) -> Rule {
    Rule {
        action: match (p.action, p.local) {
            (Some(a), _) => a,
            (None, u32::MAX) => METADATA,
            (None, l) => RpzAction::LocalData(l),
        },
        family: p.family,
        line: p.line,
    }
}

/// Writes `name` made absolute against `origin` into `out` (lowercase, no trailing dot).
fn set_absolute(out: &mut String, name: &str, origin: &str) {
    out.clear();
    if name == "@" {
        out.push_str(origin);
        return;
    }
    match name.strip_suffix('.') {
        Some(abs) => out.push_str(abs),
        None => {
            out.push_str(name);
            if !origin.is_empty() {
                out.push('.');
                out.push_str(origin);
            }
        }
    }
    out.make_ascii_lowercase();
}

/// A name made absolute (lowercase, no trailing dot) against `origin`.
fn absolute(name: &str, origin: &str) -> String {
    if name == "@" {
        return origin.to_owned();
    }
    match name.strip_suffix('.') {
        Some(abs) => abs.to_ascii_lowercase(),
        None if origin.is_empty() => name.to_ascii_lowercase(),
        None => format!("{}.{origin}", name.to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONE: &str = "$TTL 300
@ SOA ns.feed.example. hostmaster.feed.example. ( 2026112501 3600 600
      86400 300 ) ; multi-line SOA
  NS ns.feed.example.
@ TXT \"family=GenericBotnet\"
nx.example          CNAME .
nodata.example      CNAME *.
*.wild.example      CNAME .
ok.wild.example     CNAME rpz-passthru.
drop.example        CNAME rpz-drop.
tcp.example         CNAME rpz-tcp-only.
garden.example      CNAME walled-garden.isp.example.
local.example       A 192.0.2.80
local.example       AAAA 2001:db8::80
c2.example          CNAME .
c2.example          TXT \"family=Emotet\"
32.66.2.0.192.rpz-client-ip  CNAME .
48.zz.db8.2001.rpz-client-ip CNAME rpz-drop.
24.0.2.0.192.rpz-ip CNAME .
";

    fn q(s: &str) -> QName {
        QName::new(s).expect("name")
    }

    #[test]
    fn every_trigger_and_action() {
        let z = parse("feed.rpz", ZONE, Some("rpz.feed.example")).expect("valid zone");
        assert_eq!(z.serial, 2026112501);
        assert_eq!(z.ignored, 1, "rpz-ip is counted and skipped");
        let act = |n: &str| z.match_qname(&q(n)).map(|r| r.action);
        assert_eq!(act("nx.example"), Some(RpzAction::NxDomain));
        assert_eq!(act("NX.Example."), Some(RpzAction::NxDomain));
        assert_eq!(
            act("www.nx.example"),
            None,
            "an exact trigger does not cover subdomains"
        );
        assert_eq!(act("nodata.example"), Some(RpzAction::NoData));
        assert_eq!(act("a.b.wild.example"), Some(RpzAction::NxDomain));
        assert_eq!(
            act("wild.example"),
            None,
            "a wildcard does not cover its apex"
        );
        assert_eq!(
            act("ok.wild.example"),
            Some(RpzAction::Passthru),
            "exact beats wildcard"
        );
        assert_eq!(act("drop.example"), Some(RpzAction::Drop));
        assert_eq!(act("tcp.example"), Some(RpzAction::TcpOnly));
        let Some(RpzAction::LocalData(i)) = act("garden.example") else {
            panic!("local data")
        };
        assert_eq!(
            z.local[i as usize],
            vec![LocalRecord::Cname("walled-garden.isp.example".into())]
        );
        let Some(RpzAction::LocalData(i)) = act("local.example") else {
            panic!("local data")
        };
        assert_eq!(z.local[i as usize].len(), 2);
        let c2 = z.match_qname(&q("c2.example")).expect("c2 listed");
        assert_eq!(z.family(&c2), Some("Emotet"));
        let nx = z.match_qname(&q("nx.example")).expect("listed");
        assert_eq!(z.family(&nx), Some("GenericBotnet"), "zone-level family");
        assert_eq!(
            z.match_client("192.0.2.66".parse().expect("ip"))
                .map(|r| r.action),
            Some(RpzAction::NxDomain)
        );
        assert_eq!(z.match_client("192.0.2.67".parse().expect("ip")), None);
        assert_eq!(
            z.match_client("2001:db8:0:1::5".parse().expect("ip"))
                .map(|r| r.action),
            Some(RpzAction::Drop)
        );
        assert_eq!(z.len(), 11);
    }

    #[test]
    fn origin_from_soa_and_absolute_owners() {
        let text = "rpz.example. 300 IN SOA ns hostmaster 7 1 1 1 1\nbad.example.rpz.example. 300 IN CNAME .\nother 300 CNAME .\n";
        let z = parse("z", text, None).expect("valid");
        assert_eq!(z.origin, "rpz.example");
        assert!(z.match_qname(&q("bad.example")).is_some());
        assert!(z.match_qname(&q("other")).is_some());
    }

    #[test]
    fn malformed_records_are_reported_with_lines() {
        let text = "$ORIGIN rpz.example.\n@ SOA ns hm 1 1 1 1 1\na.example A 999.1.1.1\nb.example CNAME . \nb.example A 192.0.2.1\n8.1.2.3.4.5.rpz-client-ip CNAME .\nc.example.other. CNAME .\nd.example MX 10 mail\n";
        let errs = parse("feed.rpz", text, None).expect_err("four errors");
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert!(lines.contains(&3), "{errs:?}");
        assert!(lines.contains(&4), "mixed action and data: {errs:?}");
        assert!(lines.contains(&6), "bad client ip: {errs:?}");
        assert!(lines.contains(&7), "outside the zone: {errs:?}");
        assert!(lines.contains(&8), "unsupported type: {errs:?}");
        assert!(errs.iter().all(|e| e.file == "feed.rpz"));
    }

    #[test]
    fn family_only_owner_is_metadata_not_a_trigger() {
        let text = "$ORIGIN rpz.example.\n@ SOA ns hm 1 1 1 1 1\nnote.example TXT \"family=Mirai\"\nbad.example CNAME .\n";
        let z = parse("z", text, None).expect("valid");
        assert_eq!(z.match_qname(&q("note.example")), None);
        assert!(z.match_qname(&q("bad.example")).is_some());
    }

    #[test]
    fn hostile_text_is_reported_by_line_or_decoded() {
        // An escape before a multi-byte character decodes to the character.
        let z = parse("fuzz", "$ORIGIN x.\na TXT \"\\é\"\n", None).expect("valid escape");
        assert_eq!(z.local, vec![vec![LocalRecord::Txt("é".into())]]);
        // Two character strings are one text.
        let z = parse("fuzz", "$ORIGIN x.\na TXT \"fam\" \"ily\\\"s\"\n", None).expect("valid");
        assert_eq!(z.local, vec![vec![LocalRecord::Txt("family\"s".into())]]);
        let cases: [(&str, usize, &str); 6] = [
            ("$ORIGIN x.\na TXT \"unterminated é\n", 2, "unterminated"),
            (
                "$ORIGIN x.\na TXT \"ends in an escape\\\"\n",
                2,
                "unterminated",
            ),
            ("$ORIGIN x.\n( ( ( a CNAME .\n", 2, "unbalanced"),
            ("\u{0}\u{1}$ORIGIN\n@ SOA\n", 1, "without a type"),
            ("$ORIGIN x.\n\"\\", 2, "without a type"),
            ("$ORIGIN x.\n$INCLUDE other.rpz\na CNAME .\n", 2, "$INCLUDE"),
        ];
        for (text, line, says) in cases {
            let errs = parse("fuzz", text, None).expect_err(text);
            assert!(
                errs.iter()
                    .any(|e| e.line == line && e.message.contains(says)),
                "{text:?} must be reported at line {line} with `{says}`: {errs:?}"
            );
        }
    }

    #[test]
    fn a_zone_without_a_name_is_one_error_that_says_what_to_set() {
        let text = "$TTL 300\n@ IN SOA localhost. root.localhost. 1 3600 600 86400 300\n  IN NS localhost.\nc2.malware-c2.org CNAME .\nc3.malware-c2.org CNAME .\n";
        let errs = parse("botnet.rpz", text, None).expect_err("no origin");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].message.contains("set `zone:`"), "{errs:?}");
        let z = parse("botnet.rpz", text, Some("botnet.rpz")).expect("with zone: it loads");
        assert!(z.match_qname(&q("c3.malware-c2.org")).is_some());
        let text = "c2.malware-c2.org CNAME .\nc3.malware-c2.org CNAME .\n";
        let errs = parse("botnet.rpz", text, None).expect_err("no origin, no SOA");
        assert_eq!(errs.len(), 1, "{errs:?}");
    }

    #[test]
    fn client_ip_labels() {
        assert_eq!(
            client_ip_trigger("32.1.2.0.192").map(|n| n.to_string()),
            Ok("192.0.2.1/32".into())
        );
        assert_eq!(
            client_ip_trigger("24.0.2.0.192").map(|n| n.to_string()),
            Ok("192.0.2.0/24".into())
        );
        assert_eq!(
            client_ip_trigger("128.1.zz.db8.2001").map(|n| n.to_string()),
            Ok("2001:db8::1/128".into())
        );
        assert_eq!(
            client_ip_trigger("56.zz.5600.1234.db8.2001").map(|n| n.to_string()),
            Ok("2001:db8:1234:5600::/56".into())
        );
        assert!(client_ip_trigger("33.1.2.0.192").is_err());
        assert!(client_ip_trigger("24.1.2.0.192").is_err(), "host bits");
    }
}
