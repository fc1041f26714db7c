//! Texts of the pages, kept in files translators can edit: `web/i18n/<lang>.yaml` (one file per
//! language, same keys as `en.yaml`), `web/malware.yaml` (what each malware family does) and
//! `web/antivirus.yaml` (free antivirus products). Built into the binary; `web.content_dir`
//! replaces them with the operator's own copies. Every language must have every key of English.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

const BUILTIN: &[(&str, &str)] = &[
    ("i18n/en.yaml", include_str!("../../web/i18n/en.yaml")),
    ("i18n/nl.yaml", include_str!("../../web/i18n/nl.yaml")),
    ("i18n/fr.yaml", include_str!("../../web/i18n/fr.yaml")),
    ("i18n/de.yaml", include_str!("../../web/i18n/de.yaml")),
    ("malware.yaml", include_str!("../../web/malware.yaml")),
    ("antivirus.yaml", include_str!("../../web/antivirus.yaml")),
];

/// Languages offered, in switcher order.
pub const LANGUAGES: &[&str] = &["en", "nl", "fr", "de"];

/// Content that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ContentError {
    file: String,
    message: String,
}

/// One language's texts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Language {
    /// Code (`en`).
    pub lang: String,
    /// Its own name (`Nederlands`).
    pub language_name: String,
    /// Texts by key.
    pub texts: HashMap<String, String>,
}

/// What a malware family does.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    /// Lowercase id.
    pub id: String,
    /// Other spellings.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// One sentence per language.
    pub what: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Families {
    families: Vec<Family>,
}

/// A free antivirus product.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    /// Product name.
    pub name: String,
    /// Vendor.
    pub vendor: String,
    /// Download or information page.
    pub url: String,
    /// `home` or `business`.
    pub audience: String,
    /// One line per language.
    #[serde(default)]
    pub note: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Products {
    products: Vec<Product>,
}

/// Everything the pages say.
#[derive(Debug, Clone)]
pub struct Content {
    languages: Vec<Language>,
    families: Vec<Family>,
    /// Antivirus products.
    pub products: Vec<Product>,
}

fn parse<T: for<'de> Deserialize<'de>>(file: &str, text: &str) -> Result<T, ContentError> {
    serde_norway::from_str(text).map_err(|e| ContentError {
        file: file.to_owned(),
        message: e.to_string(),
    })
}

impl Content {
    /// The built-in texts.
    pub fn builtin() -> Result<Self, ContentError> {
        Self::from_files(|name| {
            BUILTIN
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| (*t).to_owned())
                .ok_or_else(|| format!("{name} is not built in"))
        })
    }

    /// Texts from `dir` (same layout as `web/` in the repository).
    pub fn from_dir(dir: &Path) -> Result<Self, ContentError> {
        Self::from_files(|name| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| format!("{}: {e}", dir.join(name).display()))
        })
    }

    fn from_files(read: impl Fn(&str) -> Result<String, String>) -> Result<Self, ContentError> {
        let load = |name: &str| {
            read(name).map_err(|message| ContentError {
                file: name.to_owned(),
                message,
            })
        };
        let mut languages = Vec::new();
        for code in LANGUAGES {
            let file = format!("i18n/{code}.yaml");
            let l: Language = parse(&file, &load(&file)?)?;
            if l.lang != *code {
                return Err(ContentError {
                    file,
                    message: format!("lang is `{}`, expected `{code}`", l.lang),
                });
            }
            languages.push(l);
        }
        let english: Vec<String> = languages[0].texts.keys().cloned().collect();
        for l in &languages[1..] {
            for k in &english {
                if !l.texts.contains_key(k) {
                    return Err(ContentError {
                        file: format!("i18n/{}.yaml", l.lang),
                        message: format!("missing text `{k}`"),
                    });
                }
            }
        }
        let families = parse::<Families>("malware.yaml", &load("malware.yaml")?)?.families;
        let products = parse::<Products>("antivirus.yaml", &load("antivirus.yaml")?)?.products;
        Ok(Self {
            languages,
            families,
            products,
        })
    }

    /// A language by code (English when unknown).
    pub fn language(&self, code: &str) -> &Language {
        self.languages
            .iter()
            .find(|l| l.lang == code)
            .unwrap_or(&self.languages[0])
    }

    /// Every language.
    pub fn languages(&self) -> &[Language] {
        &self.languages
    }

    /// A text in `lang` with `{placeholders}` filled (English, then the key, when missing).
    pub fn text(&self, lang: &str, key: &str, args: &[(&str, &str)]) -> String {
        let l = self.language(lang);
        let raw = l
            .texts
            .get(key)
            .or_else(|| self.languages[0].texts.get(key))
            .map_or(key, |s| s.as_str());
        let mut out = raw.to_owned();
        for (name, value) in args {
            out = out.replace(&format!("{{{name}}}"), value);
        }
        out
    }

    /// What a malware family does, in `lang` (the generic text when the family is unknown).
    pub fn family_description(&self, family: &str, lang: &str) -> Option<&str> {
        let f = family.trim().to_ascii_lowercase();
        let norm = |s: &str| {
            s.chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
        };
        let nf = norm(&f);
        let found = self
            .families
            .iter()
            .find(|x| norm(&x.id) == nf || x.aliases.iter().any(|a| norm(a) == nf))
            .or_else(|| self.families.iter().find(|x| x.id == "generic"))?;
        found
            .what
            .get(lang)
            .or_else(|| found.what.get("en"))
            .map(|s| s.as_str())
    }
}

/// The language for a request: `?lang=` if offered, else the best `Accept-Language` match, else
/// English.
pub fn negotiate(query_lang: Option<&str>, accept_language: Option<&str>) -> &'static str {
    if let Some(q) = query_lang
        && let Some(l) = LANGUAGES.iter().find(|l| **l == q)
    {
        return l;
    }
    let mut best: Option<(f32, &'static str)> = None;
    for part in accept_language.unwrap_or("").split(',') {
        let mut it = part.split(';');
        let tag = it.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = it
            .find_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|v| v.parse::<f32>().ok())
            })
            .unwrap_or(1.0);
        let primary = tag.split('-').next().unwrap_or("");
        if let Some(l) = LANGUAGES.iter().find(|l| **l == primary)
            && best.is_none_or(|(bq, _)| q > bq)
        {
            best = Some((q, l));
        }
    }
    best.map_or("en", |(_, l)| l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_content_is_complete_in_every_language() {
        let c = Content::builtin().expect("built-in texts must load");
        for l in LANGUAGES {
            assert_eq!(c.language(l).lang, *l);
            assert!(!c.text(l, "quarantine_title", &[]).is_empty());
        }
        assert!(
            c.text("nl", "release_text", &[("hours", "24")])
                .contains("24")
        );
        assert!(c.family_description("Mirai", "fr").is_some());
        assert!(
            c.family_description("Totally-Unknown-Family", "de")
                .is_some(),
            "generic fallback"
        );
        assert!(c.products.iter().any(|p| p.audience == "home"));
        assert!(c.products.iter().any(|p| p.audience == "business"));
    }

    #[test]
    fn accept_language_negotiation() {
        assert_eq!(negotiate(None, Some("nl-BE,nl;q=0.9,en;q=0.8")), "nl");
        assert_eq!(negotiate(None, Some("es-ES, fr;q=0.5, de;q=0.7")), "de");
        assert_eq!(negotiate(None, Some("es")), "en");
        assert_eq!(negotiate(None, None), "en");
        assert_eq!(negotiate(Some("fr"), Some("nl")), "fr", "the switcher wins");
        assert_eq!(negotiate(Some("xx"), Some("de")), "de");
    }
}
