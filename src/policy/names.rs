//! Domain-name sets with exact and whole-subtree matching.
//!
//! Names are stored lowercase without the trailing dot. A lookup walks the query name from the
//! full name towards the root (`a.b.example.com`, `b.example.com`, `example.com`, `com`), one hash
//! probe per label, so the cost depends on the query's depth, never on the set's size.

use rustc_hash::FxHashMap;

/// The longest DNS name in presentation form without the trailing dot.
const MAX_NAME: usize = 254;

/// A query name normalised for matching: lowercase ASCII, no trailing dot, on the stack.
#[derive(Clone)]
pub struct QName {
    buf: [u8; MAX_NAME],
    len: u8,
}

impl QName {
    /// Normalises presentation text (`WWW.Example.COM.` → `www.example.com`). Returns `None` for
    /// names longer than DNS allows.
    pub fn new(text: &str) -> Option<Self> {
        let t = text.strip_suffix('.').unwrap_or(text);
        if t.len() > MAX_NAME {
            return None;
        }
        let mut q = Self {
            buf: [0; MAX_NAME],
            len: t.len() as u8,
        };
        for (d, s) in q.buf.iter_mut().zip(t.bytes()) {
            *d = s.to_ascii_lowercase();
        }
        Some(q)
    }

    /// Builds from wire labels (as from `hickory_proto::rr::Name::iter`).
    pub fn from_labels<'a>(labels: impl Iterator<Item = &'a [u8]>) -> Option<Self> {
        let mut q = Self {
            buf: [0; MAX_NAME],
            len: 0,
        };
        let mut at = 0usize;
        for label in labels {
            if at > 0 {
                *q.buf.get_mut(at)? = b'.';
                at += 1;
            }
            let dst = q.buf.get_mut(at..at + label.len())?;
            for (d, s) in dst.iter_mut().zip(label) {
                *d = s.to_ascii_lowercase();
            }
            at += label.len();
        }
        q.len = at as u8;
        Some(q)
    }

    /// The normalised bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// The normalised name as text (lossy for non-ASCII labels); `.` for the root.
    pub fn to_text(&self) -> String {
        if self.len == 0 {
            ".".to_owned()
        } else {
            String::from_utf8_lossy(self.as_bytes()).into_owned()
        }
    }

    /// The name and each of its ancestors, longest first (`a.b.c`, `b.c`, `c`).
    pub fn suffixes(&self) -> impl Iterator<Item = &[u8]> {
        let b = self.as_bytes();
        let starts = std::iter::once(0).chain(
            b.iter()
                .enumerate()
                .filter(|(_, c)| **c == b'.')
                .map(|(i, _)| i + 1),
        );
        starts.filter(move |_| !b.is_empty()).map(move |s| &b[s..])
    }
}

impl std::fmt::Debug for QName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_text())
    }
}

/// Checks and normalises a name written in a policy or allowlist file.
pub fn normalise(name: &str) -> Result<String, String> {
    let n = name
        .trim()
        .strip_suffix('.')
        .unwrap_or(name.trim())
        .to_ascii_lowercase();
    if n.is_empty() {
        return Err("empty name".into());
    }
    validate(&n).map(|()| n)
}

/// A set of names mapped to values, matched exactly or by subtree.
#[derive(Debug, Clone)]
pub struct NameMap<V> {
    map: FxHashMap<Box<[u8]>, V>,
}

impl<V> Default for NameMap<V> {
    fn default() -> Self {
        Self {
            map: FxHashMap::default(),
        }
    }
}

impl<V> NameMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The entry for a normalised name, created with `default` if missing.
    pub fn entry_or(&mut self, name: &str, default: impl FnOnce() -> V) -> &mut V {
        self.map
            .entry(name.as_bytes().into())
            .or_insert_with(default)
    }

    /// Inserts a normalised name; returns the value it replaces.
    pub fn insert(&mut self, name: &str, value: V) -> Option<V> {
        self.map.insert(name.as_bytes().into(), value)
    }

    /// The value of exactly this normalised name, given as bytes.
    pub fn map_get(&self, name: &[u8]) -> Option<&V> {
        self.map.get(name)
    }

    /// The value of exactly this name.
    pub fn get_exact(&self, q: &QName) -> Option<&V> {
        self.map.get(q.as_bytes())
    }

    /// The value of the closest enclosing name (the name itself, else its nearest ancestor).
    pub fn closest<'a>(&'a self, q: &'a QName) -> Option<(&'a [u8], &'a V)> {
        if self.map.is_empty() {
            return None;
        }
        q.suffixes().find_map(|s| self.map.get(s).map(|v| (s, v)))
    }

    /// Every ancestor entry of `q` (including `q`), closest first.
    pub fn ancestors<'a>(&'a self, q: &'a QName) -> impl Iterator<Item = (&'a [u8], &'a V)> + 'a {
        let empty = self.map.is_empty();
        q.suffixes()
            .filter(move |_| !empty)
            .filter_map(move |s| self.map.get(s).map(|v| (s, v)))
    }

    /// Every name and value.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &V)> {
        self.map.iter().map(|(k, v)| (&**k, v))
    }
}

/// A compact exact-name table for very large sets (a million feed names): every name is stored
/// once in one byte arena, values in a dense vector, and the hash index holds only 32-bit entry
/// numbers. About a third of the memory of a map with one heap string per name.
#[derive(Debug, Clone)]
pub struct NameTable<V> {
    arena: Vec<u8>,
    entries: Vec<(u32, u8, V)>,
    index: hashbrown::HashTable<u32>,
}

impl<V> Default for NameTable<V> {
    fn default() -> Self {
        Self {
            arena: Vec::new(),
            entries: Vec::new(),
            index: hashbrown::HashTable::new(),
        }
    }
}

fn fx(name: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(name);
    h.finish()
}

impl<V> NameTable<V> {
    /// Number of names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn name(&self, i: u32) -> &[u8] {
        let (off, len, _) = &self.entries[i as usize];
        &self.arena[*off as usize..*off as usize + *len as usize]
    }

    /// The value of exactly this normalised name.
    pub fn get(&self, name: &[u8]) -> Option<&V> {
        if self.entries.is_empty() {
            return None;
        }
        let i = self.index.find(fx(name), |&i| self.name(i) == name)?;
        self.entries.get(*i as usize).map(|e| &e.2)
    }

    /// The value of `name`, inserted with `default()` first if missing. Names longer than 255
    /// bytes cannot be valid DNS names and are rejected with `None`.
    pub fn entry_or(&mut self, name: &[u8], default: impl FnOnce() -> V) -> Option<&mut V> {
        let len = u8::try_from(name.len()).ok()?;
        let h = fx(name);
        let found = {
            let (arena, entries) = (&self.arena, &self.entries);
            self.index
                .find(h, |&i| {
                    let (off, l, _) = &entries[i as usize];
                    &arena[*off as usize..*off as usize + *l as usize] == name
                })
                .copied()
        };
        let i = match found {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.entries.len()).ok()?;
                let off = u32::try_from(self.arena.len()).ok()?;
                self.arena.extend_from_slice(name);
                self.entries.push((off, len, default()));
                let (arena, entries) = (&self.arena, &self.entries);
                self.index.insert_unique(h, i, |&j| {
                    let (off, l, _) = &entries[j as usize];
                    fx(&arena[*off as usize..*off as usize + *l as usize])
                });
                i
            }
        };
        self.entries.get_mut(i as usize).map(|e| &mut e.2)
    }

    /// Every name and value, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &V)> {
        self.entries
            .iter()
            .map(|(off, len, v)| (&self.arena[*off as usize..*off as usize + *len as usize], v))
    }

    /// The same names with converted values (the index is kept as is).
    pub fn map_values<W>(self, mut f: impl FnMut(V) -> W) -> NameTable<W> {
        NameTable {
            arena: self.arena,
            entries: self
                .entries
                .into_iter()
                .map(|(o, l, v)| (o, l, f(v)))
                .collect(),
            index: self.index,
        }
    }

    /// Makes room for `names` more names of about `bytes` bytes in all (a bulk load that knows
    /// its size grows the table once instead of rehashing it at every doubling).
    pub fn reserve(&mut self, names: usize, bytes: usize) {
        self.arena.reserve(bytes);
        self.entries.reserve(names);
        let (arena, entries) = (&self.arena, &self.entries);
        self.index.reserve(names, |&j| {
            let (off, l, _) = &entries[j as usize];
            fx(&arena[*off as usize..*off as usize + *l as usize])
        });
    }

    /// Releases spare capacity after a bulk load.
    pub fn shrink_to_fit(&mut self) {
        self.arena.shrink_to_fit();
        self.entries.shrink_to_fit();
        let (arena, entries) = (&self.arena, &self.entries);
        self.index.shrink_to_fit(|&j| {
            let (off, l, _) = &entries[j as usize];
            fx(&arena[*off as usize..*off as usize + *l as usize])
        });
    }
}

/// Checks a lowercase name without the trailing dot: at most 253 characters, labels of 1 to 63
/// letters, digits, `-` (not first or last) and `_`.
pub fn validate(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!("`{name}` is longer than 253 characters or empty"));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        if !ok {
            return Err(format!(
                "`{name}` is not a valid DNS name (label `{label}`)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> QName {
        QName::new(s).expect("test name must fit")
    }

    #[test]
    fn normalises_case_and_trailing_dot() {
        assert_eq!(q("WWW.Example.COM.").as_bytes(), b"www.example.com");
        assert_eq!(q(".").as_bytes(), b"");
        assert_eq!(q(".").to_text(), ".");
    }

    #[test]
    fn suffixes_walk_to_the_top_label() {
        let n = q("a.b.example.com");
        let s: Vec<_> = n.suffixes().collect();
        assert_eq!(
            s,
            vec![
                &b"a.b.example.com"[..],
                b"b.example.com",
                b"example.com",
                b"com"
            ]
        );
        assert_eq!(q(".").suffixes().count(), 0);
    }

    #[test]
    fn subtree_and_exact_matching() {
        let mut m = NameMap::new();
        m.insert("example.com", 1);
        m.insert("deep.sub.example.com", 2);
        assert_eq!(m.closest(&q("example.com")).map(|x| *x.1), Some(1));
        assert_eq!(m.closest(&q("WWW.EXAMPLE.COM.")).map(|x| *x.1), Some(1));
        assert_eq!(
            m.closest(&q("x.deep.sub.example.com")).map(|x| *x.1),
            Some(2)
        );
        assert_eq!(
            m.closest(&q("notexample.com")),
            None,
            "no partial-label match"
        );
        assert_eq!(m.closest(&q("example.com.evil.net")), None);
        assert_eq!(m.get_exact(&q("www.example.com")), None);
        assert_eq!(m.ancestors(&q("x.deep.sub.example.com")).count(), 2);
    }

    #[test]
    fn from_labels_matches_text_form() {
        let labels: [&[u8]; 3] = [b"WwW", b"Example", b"org"];
        let n = QName::from_labels(labels.into_iter()).expect("fits");
        assert_eq!(n.as_bytes(), b"www.example.org");
    }

    #[test]
    fn name_table_stores_each_name_once() {
        let mut t: NameTable<u32> = NameTable::default();
        *t.entry_or(b"a.example", || 0).expect("fits") += 1;
        *t.entry_or(b"b.example", || 10).expect("fits") += 1;
        *t.entry_or(b"a.example", || 0).expect("fits") += 1;
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(b"a.example"), Some(&2));
        assert_eq!(t.get(b"b.example"), Some(&11));
        assert_eq!(t.get(b"c.example"), None);
        let t = t.map_values(|v| v * 2);
        assert_eq!(t.get(b"b.example"), Some(&22));
        assert!(
            NameTable::<()>::default()
                .entry_or(&[b'a'; 300], || ())
                .is_none()
        );
    }

    #[test]
    fn validates_names() {
        assert_eq!(normalise("Example.COM.").as_deref(), Ok("example.com"));
        assert!(normalise("bad..name").is_err());
        assert!(normalise("-bad.com").is_err());
        assert!(normalise("http://x.com").is_err());
        assert!(normalise("").is_err());
        assert!(normalise(&"a".repeat(64)).is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn label() -> impl Strategy<Value = String> {
        prop_oneof![Just("a"), Just("b"), Just("ex"), Just("com"), Just("x-y")]
            .prop_map(String::from)
    }

    fn name() -> impl Strategy<Value = String> {
        proptest::collection::vec(label(), 1..5).prop_map(|l| l.join("."))
    }

    proptest! {
        #[test]
        fn subtree_matching_agrees_with_a_naive_suffix_test(
            listed in proptest::collection::vec(name(), 0..20),
            asked in proptest::collection::vec(name(), 1..20),
            upper in any::<bool>(),
        ) {
            let mut map = NameMap::new();
            for (i, n) in listed.iter().enumerate() {
                map.insert(n, i);
            }
            for a in &asked {
                let text = if upper { a.to_ascii_uppercase() + "." } else { a.clone() };
                let q = QName::new(&text).expect("short name");
                // Naive: a listed name matches when it is the name or a whole-label suffix.
                let mut expected: Vec<&str> = listed
                    .iter()
                    .filter(|l| a == *l || a.ends_with(&format!(".{l}")))
                    .map(String::as_str)
                    .collect();
                expected.sort_by_key(|l| std::cmp::Reverse(l.len()));
                expected.dedup();
                let got: Vec<String> = map
                    .ancestors(&q)
                    .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
                    .collect();
                prop_assert_eq!(got, expected, "asked {}", a);
            }
        }
    }
}
