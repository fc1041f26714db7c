//! The cleanup page: the walled garden that sinkholed names lead to.
//!
//! Answers **any Host and any path** with the page for the requester's IP, looked up in the same
//! policy snapshot as DNS: the cleanup page for quarantined subscribers (what was seen, how to
//! remove it, free antivirus, the self-release button), "not in your trusted zone" for
//! trusted-zone customers, a neutral page for everyone else. No external resources, no
//! JavaScript, inline CSS; everything from files and feeds is HTML-escaped.
//!
//! Self-release: a POST with a per-client CSRF token lifts the quarantine for
//! `web.self_release_hours`, at most `web.self_release_max` times in 30 days, recorded in the
//! state database. A report newer than the release quarantines again (see `policy::decide`).
//!
//! Captive portals: the operating systems' probe URLs are redirected to the page so devices pop
//! it up, and `/captive-portal/api` answers the RFC 8908 Captive Portal API.
//!
//! HTTPS to a sinkholed name cannot show this page: the browser expects the real site's
//! certificate. See README "The cleanup page and HTTPS".

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::content::{Content, LANGUAGES, negotiate};
use crate::config::WebConfig;
use crate::policy::prefix::canonical_ip;
use crate::policy::{Blocked, Snapshot, Who, identify};
use crate::store::PolicyStore;

/// Seconds in the self-release window.
const WINDOW: i64 = 30 * 86_400;

/// Probe paths of the major operating systems and browsers.
const PROBE_PATHS: &[&str] = &[
    "/generate_204",
    "/gen_204",
    "/hotspot-detect.html",
    "/library/test/success.html",
    "/connecttest.txt",
    "/redirect",
    "/ncsi.txt",
    "/success.txt",
    "/canonical.html",
    "/check_network_status.txt",
];

/// Shared state of the page service.
#[derive(Clone)]
pub struct PageState {
    store: Arc<PolicyStore>,
    content: Arc<Content>,
    config: Arc<WebConfig>,
    portal_url: Arc<str>,
    csrf: moka::sync::Cache<IpAddr, Arc<str>>,
}

impl PageState {
    /// State over the policy store, texts and configuration.
    pub fn new(store: Arc<PolicyStore>, content: Content, config: WebConfig) -> Self {
        let portal_url: Arc<str> = match &config.portal_url {
            Some(u) => u.as_str().into(),
            None => match config.listen.first() {
                Some(a) if a.port() == 80 => format!("http://{}/", a.ip()).into(),
                Some(a) => format!("http://{a}/").into(),
                None => "/".into(),
            },
        };
        Self {
            store,
            content: Arc::new(content),
            config: Arc::new(config),
            portal_url,
            csrf: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }
}

/// The page router; serve it with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(state: PageState) -> Router {
    Router::new()
        .route("/captive-portal/api", get(captive_api))
        .route("/release", post(release))
        .fallback(page)
        .with_state(state)
}

/// What the page shows a visitor: the policy core's [`Who`], plus what only the state knows
/// (self-releases left).
enum Visitor {
    Quarantined { infection: u32, releases_left: u32 },
    Released { until: i64 },
    Trusted { profile: u16 },
    Normal,
}

/// The time for one request (read once, passed down).
fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Who the visitor is, asked of the policy core exactly as DNS asks it.
async fn visitor(s: &PageState, snap: &Snapshot, ip: IpAddr, now: i64) -> Visitor {
    match identify(snap, &snap.classify(ip), now) {
        Who::Quarantined { infection, .. } => {
            let used = match snap.infection(infection).map(|i| i.prefix) {
                Some(p) => {
                    let st = s.store.state().clone();
                    tokio::task::spawn_blocking(move || st.releases_since(p, now - WINDOW))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or(u32::MAX)
                }
                None => u32::MAX,
            };
            Visitor::Quarantined {
                infection,
                releases_left: s.config.self_release_max.saturating_sub(used),
            }
        }
        Who::SelfReleased { until, .. } => Visitor::Released { until },
        Who::Trusted { profile, .. } if snap.profiles.get(profile as usize).is_some() => {
            Visitor::Trusted { profile }
        }
        Who::Trusted { .. }
        | Who::NotServed
        | Who::Whitelisted { .. }
        | Who::Exempt
        | Who::Normal => Visitor::Normal,
    }
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A time on the page: the RFC 3339 date and time of day in UTC (`2026-11-20 08:00 UTC`), the
/// same in every language, so that nobody has to guess whether 03/04 is March or April.
fn when(t: i64, _lang: &str) -> String {
    chrono::DateTime::from_timestamp(t, 0).map_or_else(
        || t.to_string(),
        |d| d.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f4f6f8;color:#1a1a1a;line-height:1.5}\
main{max-width:46rem;margin:0 auto;padding:1rem 1.25rem 3rem;background:#fff}\
header{background:#0b3d66;color:#fff;padding:.75rem 1.25rem}header a{color:#fff}\
nav ul{list-style:none;padding:0;margin:0;display:flex;gap:1rem;flex-wrap:wrap}\
h1{font-size:1.6rem;line-height:1.25}h2{font-size:1.2rem;margin-top:2rem;border-bottom:2px solid #d0d7de}\
.notice{background:#fff4ce;border-left:6px solid #9a6700;padding:.75rem 1rem}\
.ok{background:#dafbe1;border-left:6px solid #1a7f37;padding:.75rem 1rem}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}dt{font-weight:600}dd{margin:0}\
a{color:#0550ae}button{font-size:1.05rem;padding:.6rem 1.2rem;background:#1a7f37;color:#fff;border:0;border-radius:6px;cursor:pointer}\
button:focus,a:focus,input:focus{outline:3px solid #fb8500;outline-offset:2px}\
label{display:block;margin:.75rem 0}footer{color:#57606a;font-size:.9rem;margin-top:2rem}";

struct Ctx<'a> {
    s: &'a PageState,
    lang: &'static str,
    path: String,
}

impl Ctx<'_> {
    fn t(&self, key: &str) -> String {
        esc(&self
            .s
            .content
            .text(self.lang, key, &[("isp", &self.s.config.isp_name)]))
    }

    fn ta(&self, key: &str, args: &[(&str, &str)]) -> String {
        let mut all: Vec<(&str, &str)> = vec![("isp", &self.s.config.isp_name)];
        all.extend_from_slice(args);
        esc(&self.s.content.text(self.lang, key, &all))
    }

    fn layout(&self, title: &str, body: &str) -> String {
        let mut nav = String::new();
        for l in LANGUAGES {
            let name = esc(&self.s.content.language(l).language_name);
            if *l == self.lang {
                let _ = write!(
                    nav,
                    "<li><strong aria-current=\"true\">{name}</strong></li>"
                );
            } else {
                let _ = write!(
                    nav,
                    "<li><a href=\"{}?lang={l}\" hreflang=\"{l}\" lang=\"{l}\">{name}</a></li>",
                    esc(&self.path)
                );
            }
        }
        format!(
            "<!DOCTYPE html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>{CSS}</style></head><body>\
<header><nav aria-label=\"{langlabel}\"><ul>{nav}</ul></nav></header>\
<main>{body}<footer>{footer}</footer></main></body></html>",
            lang = self.lang,
            langlabel = self.t("language_label"),
            footer = self.t("footer"),
        )
    }

    /// The "need help?" section; empty when no support contact is configured (`check`
    /// warns about that), never a "contact us:" followed by nothing.
    fn support(&self) -> String {
        let c = &self.s.config;
        if !c.has_support_contact() {
            return String::new();
        }
        let mut items = String::new();
        if let Some(u) = &c.support_url {
            let _ = write!(items, "<li><a href=\"{0}\">{0}</a></li>", esc(u));
        }
        if let Some(p) = &c.support_phone {
            let _ = write!(items, "<li><a href=\"tel:{0}\">{0}</a></li>", esc(p));
        }
        if let Some(e) = &c.support_email {
            let _ = write!(items, "<li><a href=\"mailto:{0}\">{0}</a></li>", esc(e));
        }
        format!(
            "<section aria-labelledby=\"support\"><h2 id=\"support\">{}</h2><p>{}</p><ul>{items}</ul></section>",
            self.t("support_heading"),
            self.t("support_text")
        )
    }
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// `?lang=` on any page.
#[derive(Deserialize, Default)]
struct LangQuery {
    lang: Option<String>,
}

fn lang_for(q: Option<&str>, headers: &HeaderMap) -> &'static str {
    negotiate(
        q,
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    )
}

fn csrf_token(s: &PageState, ip: IpAddr) -> Arc<str> {
    s.csrf.get_with(ip, || {
        let v: u128 = rand::random();
        format!("{v:032x}").into()
    })
}

fn quarantine_body(
    c: &Ctx<'_>,
    snap: &Snapshot,
    infection: u32,
    releases_left: u32,
    token: &str,
) -> String {
    let Some(i) = snap.infection(infection) else {
        return String::new();
    };
    let family = snap.string(i.family);
    let what = c.s.content.family_description(family, c.lang).unwrap_or("");
    let mut b = format!(
        "<h1>{}</h1><p>{}</p><p class=\"notice\"><strong>{}</strong></p>",
        c.t("quarantine_title"),
        c.t("quarantine_intro"),
        c.t("not_forever")
    );
    let _ = write!(
        b,
        "<section aria-labelledby=\"seen\"><h2 id=\"seen\">{}</h2><dl>\
<dt>{}</dt><dd>{}</dd><dt>{}</dt><dd>{}</dd><dt>{}</dt><dd>{}</dd><dt>{}</dt><dd>{}</dd>",
        c.t("seen_heading"),
        c.t("field_family"),
        esc(family),
        c.t("field_what"),
        esc(what),
        c.t("field_source"),
        esc(snap.string(i.source)),
        c.t("field_first_seen"),
        esc(&when(i.first_seen, c.lang)),
    );
    if let Some(t) = snap.ticket(infection) {
        let _ = write!(b, "<dt>{}</dt><dd>{}</dd>", c.t("field_ticket"), esc(t));
    }
    b.push_str("</dl>");
    let evidence = snap.evidence(infection);
    if !evidence.is_empty() {
        // Every botnet signature seen, the C2 name and when: what to look for when cleaning.
        let _ = write!(
            b,
            "<h3>{}</h3><ul id=\"detections\">",
            c.t("detections_heading")
        );
        for ev in evidence {
            let _ = write!(
                b,
                "<li>{}</li>",
                c.ta(
                    "detection_line",
                    &[
                        ("time", &when(ev.last_at, c.lang)),
                        ("name", &ev.qname),
                        ("family", &ev.family),
                        ("feed", &ev.feed),
                    ]
                )
            );
        }
        b.push_str("</ul>");
    }
    b.push_str("</section>");
    let _ = write!(
        b,
        "<section aria-labelledby=\"steps\"><h2 id=\"steps\">{}</h2><ol>",
        c.t("steps_heading")
    );
    for n in 1..=6 {
        let _ = write!(b, "<li>{}</li>", c.t(&format!("step_{n}")));
    }
    b.push_str("</ol></section>");
    let _ = write!(
        b,
        "<section aria-labelledby=\"av\"><h2 id=\"av\">{}</h2>",
        c.t("antivirus_heading")
    );
    for (audience, key) in [
        ("home", "antivirus_home"),
        ("business", "antivirus_business"),
    ] {
        let _ = write!(b, "<h3>{}</h3><ul>", c.t(key));
        for p in
            c.s.content
                .products
                .iter()
                .filter(|p| p.audience == audience)
        {
            let note = p
                .note
                .get(c.lang)
                .or_else(|| p.note.get("en"))
                .map_or("", |s| s.as_str());
            let _ = write!(
                b,
                "<li><a href=\"{}\">{}</a> ({}) — {}</li>",
                esc(&p.url),
                esc(&p.name),
                esc(&p.vendor),
                esc(note)
            );
        }
        b.push_str("</ul>");
    }
    b.push_str("</section>");
    let _ = write!(
        b,
        "<section aria-labelledby=\"release\"><h2 id=\"release\">{}</h2>",
        c.t("release_heading")
    );
    if releases_left > 0 {
        let hours = c.s.config.self_release_hours.to_string();
        let left = releases_left.to_string();
        let _ = write!(
            b,
            "<p>{}</p><form method=\"post\" action=\"/release\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"lang\" value=\"{}\">\
<label><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> {}</label>\
<button type=\"submit\" id=\"release-button\">{}</button></form><p>{}</p>",
            c.ta("release_text", &[("hours", &hours)]),
            esc(token),
            c.lang,
            c.t("release_confirm"),
            c.t("release_button"),
            c.ta("releases_left", &[("n", &left)]),
        );
    } else {
        let _ = write!(
            b,
            "<p class=\"notice\" id=\"out-of-releases\">{}</p>",
            c.t("out_of_releases")
        );
    }
    b.push_str("</section>");
    b.push_str(&c.support());
    let _ = write!(b, "<p><small>{}</small></p>", c.t("https_note"));
    b
}

fn released_body(c: &Ctx<'_>, until: i64) -> String {
    format!(
        "<h1>{}</h1><p class=\"ok\" id=\"released\">{}</p>{}",
        c.t("release_done_title"),
        c.ta("release_done_text", &[("until", &when(until, c.lang))]),
        c.support()
    )
}

fn trusted_body(c: &Ctx<'_>, snap: &Snapshot, profile: u16) -> String {
    let Some(p) = snap.profiles.get(profile as usize) else {
        return String::new();
    };
    let mut list = String::new();
    let mut services: Vec<&(String, String, String)> = p
        .services
        .iter()
        .filter_map(|i| snap.services.get(*i as usize))
        .collect();
    services.sort_by(|a, b| (&a.2, &a.1).cmp(&(&b.2, &b.1)));
    for (_, name, category) in services {
        let _ = write!(
            list,
            "<li>{} <small>({})</small></li>",
            esc(name),
            esc(category)
        );
    }
    format!(
        "<h1>{}</h1><p>{}</p><h2>{}</h2><ul>{list}</ul><p>{}</p>",
        c.t("trusted_title"),
        c.ta("trusted_text", &[("profile", &p.name)]),
        c.t("trusted_list_heading"),
        c.t("trusted_change")
    )
}

async fn page(
    State(s): State<PageState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<LangQuery>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let ip = canonical_ip(peer.ip());
    let snap = s.store.snapshot();
    let v = visitor(&s, &snap, ip, now()).await;
    if matches!(v, Visitor::Quarantined { .. }) && PROBE_PATHS.contains(&uri.path()) {
        let mut r = StatusCode::FOUND.into_response();
        if let Ok(loc) = HeaderValue::from_str(&s.portal_url) {
            r.headers_mut().insert(header::LOCATION, loc);
        }
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return r;
    }
    let c = Ctx {
        s: &s,
        lang: lang_for(q.lang.as_deref(), &headers),
        path: uri.path().to_owned(),
    };
    let (title, body) = match v {
        Visitor::Quarantined {
            infection,
            releases_left,
        } => {
            let token = csrf_token(&s, ip);
            (
                c.t("quarantine_title"),
                quarantine_body(&c, &snap, infection, releases_left, &token),
            )
        }
        Visitor::Released { until } => (c.t("release_done_title"), released_body(&c, until)),
        Visitor::Trusted { profile } => {
            let info_page = snap
                .profiles
                .get(profile as usize)
                .is_some_and(|p| p.blocked == Blocked::InfoPage);
            if info_page {
                (c.t("trusted_title"), trusted_body(&c, &snap, profile))
            } else {
                (
                    c.t("neutral_title"),
                    format!(
                        "<h1>{}</h1><p>{}</p>",
                        c.t("neutral_title"),
                        c.t("neutral_text")
                    ),
                )
            }
        }
        Visitor::Normal => (
            c.t("neutral_title"),
            format!(
                "<h1>{}</h1><p>{}</p>",
                c.t("neutral_title"),
                c.t("neutral_text")
            ),
        ),
    };
    html(StatusCode::OK, c.layout(&title, &body))
}

/// The self-release form.
#[derive(Deserialize)]
struct ReleaseForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    lang: Option<String>,
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn release(
    State(s): State<PageState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<ReleaseForm>,
) -> Response {
    let ip = canonical_ip(peer.ip());
    let c = Ctx {
        s: &s,
        lang: lang_for(f.lang.as_deref(), &headers),
        path: "/".into(),
    };
    let expected = s.csrf.get(&ip);
    if !expected.is_some_and(|t| same(t.as_bytes(), f.csrf.as_bytes())) {
        let body = format!(
            "<h1>{}</h1><p class=\"notice\" id=\"csrf-error\">{}</p>",
            c.t("csrf_error"),
            c.t("csrf_error")
        );
        return html(StatusCode::FORBIDDEN, c.layout(&c.t("csrf_error"), &body));
    }
    let snap = s.store.snapshot();
    let t = now();
    let (infection, releases_left) = match visitor(&s, &snap, ip, t).await {
        Visitor::Quarantined {
            infection,
            releases_left,
        } => (infection, releases_left),
        _ => {
            let mut r = StatusCode::SEE_OTHER.into_response();
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/"));
            return r;
        }
    };
    if !matches!(f.confirm.as_str(), "yes" | "on") {
        let token = csrf_token(&s, ip);
        return html(
            StatusCode::BAD_REQUEST,
            c.layout(
                &c.t("quarantine_title"),
                &quarantine_body(&c, &snap, infection, releases_left, &token),
            ),
        );
    }
    let Some((prefix, first_seen)) = snap.infection(infection).map(|i| (i.prefix, i.first_seen))
    else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if first_seen > t {
        // A release counts only for reports made before it (a newer report quarantines
        // again), so a report dated in the future cannot be released: say so instead of
        // reporting a success DNS would not honour.
        let body = format!(
            "<h1>{}</h1><p class=\"notice\" id=\"release-impossible\">{}</p>{}",
            c.t("quarantine_title"),
            c.t("out_of_releases"),
            c.support()
        );
        return html(
            StatusCode::CONFLICT,
            c.layout(&c.t("quarantine_title"), &body),
        );
    }
    let until = t + i64::from(s.config.self_release_hours) * 3600;
    let max = s.config.self_release_max;
    let st = s.store.state().clone();
    let recorded = tokio::task::spawn_blocking(move || {
        st.record_release(prefix, ip, t, until, t - WINDOW, max)
    })
    .await;
    match recorded {
        Ok(Ok(Some(_))) => {
            s.csrf.invalidate(&ip);
            let store = s.store.clone();
            let _ = tokio::task::spawn_blocking(move || store.reload()).await;
            metrics::counter!(crate::metrics::SELF_RELEASES).increment(1);
            html(
                StatusCode::OK,
                c.layout(&c.t("release_done_title"), &released_body(&c, until)),
            )
        }
        Ok(Ok(None)) => {
            let body = format!(
                "<h1>{}</h1><p class=\"notice\" id=\"out-of-releases\">{}</p>{}",
                c.t("quarantine_title"),
                c.t("out_of_releases"),
                c.support()
            );
            html(
                StatusCode::TOO_MANY_REQUESTS,
                c.layout(&c.t("quarantine_title"), &body),
            )
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "recording a self-release failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "self-release task failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn captive_api(
    State(s): State<PageState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let ip = canonical_ip(peer.ip());
    let snap = s.store.snapshot();
    let t = now();
    let body = match visitor(&s, &snap, ip, t).await {
        Visitor::Quarantined { .. } => {
            serde_json::json!({ "captive": true, "user-portal-url": &*s.portal_url })
        }
        Visitor::Released { until } => serde_json::json!({
            "captive": false,
            "user-portal-url": &*s.portal_url,
            "seconds-remaining": (until - t).max(0),
        }),
        _ => serde_json::json!({ "captive": false }),
    };
    let mut r = (StatusCode::OK, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/captive+json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn escapes_everything_that_matters() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
