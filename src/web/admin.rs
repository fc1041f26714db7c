//! The admin HTTP API. Bound to loopback by default; every `/v1/` call needs
//! `Authorization: Bearer <token>` (401 otherwise, and always 401 when no token is configured).
//! `/ready` and `/metrics` are open for probes and scrapers.
//!
//! Changes are written to the state database first, then the policy is recompiled; the response
//! arrives once the new snapshot serves, so "200 OK" means "in force now".

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Extension;
use axum::Json;
use axum::Router;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use chrono::{DateTime, Utc};
use hickory_proto::rr::RecordType;
use serde::Deserialize;
use serde_json::json;

use crate::config::{ApiToken, Scope};
use crate::policy::explain::explain;
use crate::policy::household::{self, HouseholdDef};
use crate::policy::sources::{EnrolmentEntry, InfectedEntry, Mode, ModeFile, Prefix};
use crate::policy::{ModeOverride, Question};
use crate::store::PolicyStore;

/// Shared state of the admin API.
#[derive(Clone)]
pub struct AdminState {
    /// The policy.
    pub store: Arc<PolicyStore>,
    /// Bearer tokens and their scopes; none refuses every `/v1/` call.
    pub tokens: Arc<[ApiToken]>,
    /// Set once sockets are bound and the first policy serves.
    pub ready: Arc<AtomicBool>,
    /// Prometheus renderer.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The alerting engine (its clock and state).
    pub alerts: Option<Arc<crate::alerts::AlertEngine>>,
    /// The trusted zone's denial counts not yet saved.
    pub misses: Option<Arc<crate::misses::Misses>>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    let v1 = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/reload", post(reload))
        .route("/v1/mode", put(set_mode).delete(clear_mode))
        .route("/v1/infected", post(flag).delete(unflag))
        .route(
            "/v1/enrolments",
            get(show_enrolment)
                .post(enrol)
                .patch(edit_household)
                .delete(unenrol),
        )
        .route("/v1/explain", get(explain_query))
        .route("/v1/misses", get(list_misses))
        .route("/v1/audit", get(audit))
        .route("/v1/alerts", get(list_alerts))
        .route("/v1/alerts/{id}/{action}", post(alert_action))
        .route("/v1/organisations/{id}/reinstate", post(reinstate))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .merge(v1)
        .with_state(state)
}

/// Who made a call, for the audit log: `X-Cleanpipe-Actor` (default `admin-api`) and, for any
/// token but `admin`, the token's name (`alice [token customer-portal]`).
#[derive(Clone)]
struct Actor(String);

/// The scopes that may make a call (`admin` always may). `None`: unknown route (404 follows).
fn scopes_for(method: &Method, path: &str) -> Option<&'static [Scope]> {
    use Scope::*;
    const READ: &[Scope] = &[ReadOnly, Noc, AbuseDesk];
    let read = *method == Method::GET;
    Some(match path {
        "/v1/status" | "/v1/audit" | "/v1/alerts" | "/v1/explain" => READ,
        "/v1/enrolments" if read => &[Provisioning, ReadOnly, Noc, AbuseDesk],
        "/v1/enrolments" => &[Provisioning],
        "/v1/misses" => &[ReadOnly, Noc],
        "/v1/reload" | "/v1/mode" => &[Noc],
        "/v1/infected" | "/v1/alerts/{id}/{action}" | "/v1/organisations/{id}/reinstate" => {
            &[AbuseDesk]
        }
        _ => return None,
    })
}

/// Rejects `/v1/` calls without a known bearer token (401) or outside the token's scopes (403)
/// before any body is read.
async fn require_token(State(s): State<AdminState>, mut req: Request, next: Next) -> Response {
    let token = match authorise(&s, req.headers()) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_owned(), |m| m.as_str().to_owned());
    let allowed = token.scopes.contains(&Scope::Admin)
        || scopes_for(req.method(), &path)
            .is_some_and(|need| need.iter().any(|n| token.scopes.contains(n)));
    if !allowed {
        metrics::counter!(crate::metrics::ADMIN_FORBIDDEN).increment(1);
        return ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "token `{}` (scopes: {}) may not {} {path}",
                token.name,
                token
                    .scopes
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                req.method()
            ),
        )
        .into_response();
    }
    let who = req
        .headers()
        .get("x-cleanpipe-actor")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 100 && !s.chars().any(char::is_control))
        .unwrap_or("admin-api");
    let actor = if token.name == "admin" {
        who.to_owned()
    } else {
        format!("{who} [token {}]", token.name)
    };
    req.extensions_mut().insert(Actor(actor));
    next.run(req).await
}

/// Errors answered as JSON `{ "error": ... }`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult = Result<Json<serde_json::Value>, ApiError>;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token the bearer header names (every token is compared, in constant time each).
fn authorise<'a>(state: &'a AdminState, headers: &HeaderMap) -> Result<&'a ApiToken, ApiError> {
    let unauthorised = || {
        ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        )
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorised)?;
    let given = given.trim().as_bytes();
    state
        .tokens
        .iter()
        .fold(None, |found, t| {
            if same(given, t.secret.as_bytes()) {
                Some(t)
            } else {
                found
            }
        })
        .ok_or_else(unauthorised)
}

async fn reload_now(store: &Arc<PolicyStore>) -> Result<u64, ApiError> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.reload())
        .await
        .map_err(internal)?
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::state::StateError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(internal)?
        .map_err(internal)
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn render_metrics(State(s): State<AdminState>) -> impl IntoResponse {
    match &s.metrics {
        Some(h) => (StatusCode::OK, h.render()),
        None => (StatusCode::NOT_FOUND, String::new()),
    }
}

async fn status(State(s): State<AdminState>) -> ApiResult {
    let snap = s.store.snapshot();
    let now = Utc::now().timestamp();
    let st = s.store.state().clone();
    let window = i64::from(s.store.strike_window_days()) * 86_400;
    let (strikes, pending) =
        blocking(move || Ok((st.strikes(now - window)?, st.pending_deliveries()?))).await?;
    Ok(Json(json!({
        "generation": snap.generation,
        "pending_deliveries": pending,
        "reload": s.store.status(),
        "counts": snap.counts(),
        "mode": snap.mode,
        "trusted_only_in_force": snap.mode.trusted_only_at(now),
        "allowlist_version": snap.allowlist_version,
        "feeds": feeds_status(&s.store, &snap, now),
        "profiles": snap.profiles.iter().map(|p| &p.name).collect::<Vec<_>>(),
        "organisations": snap.organisations.iter().map(|o| json!({
            "id": o.id, "name": o.name, "standing": o.standing, "grace_hours": o.grace_hours,
            "strikes": strikes.iter().find(|(id, _)| *id == o.id).map_or(0, |(_, n)| *n),
        })).collect::<Vec<_>>(),
    })))
}

/// Every configured feed: where it comes from, the serial and size of the copy in force, and
/// for transferred feeds how fresh it is.
fn feeds_status(
    store: &PolicyStore,
    snap: &crate::policy::Snapshot,
    now: i64,
) -> Vec<serde_json::Value> {
    store
        .feed_configs()
        .iter()
        .map(|f| {
            let zone = snap.feeds.iter().find(|z| z.name == f.name);
            let mut v = json!({
                "name": f.name,
                "source": zone.map(|z| z.source.as_str()),
                "serial": zone.map(|z| z.zone.serial),
                "triggers": zone.map(|z| z.zone.len()),
            });
            if f.primary.is_some() {
                let t = store.transferred(&f.name);
                let age = t.as_ref().map(|t| now - t.confirmed_at);
                v["copy"] = json!(t.as_ref().map_or("none yet", |t| t.origin));
                v["confirmed_at"] = json!(t.as_ref().map(|t| rfc3339(t.confirmed_at)));
                v["age_secs"] = json!(age);
                v["max_age_hours"] = json!(f.max_age_hours);
                v["stale"] = json!(age.is_some_and(|a| a as f64 > f.max_age_hours * 3600.0));
            }
            v
        })
        .collect()
}

use crate::timefmt::rfc3339;

async fn reload(State(s): State<AdminState>) -> ApiResult {
    let generation = reload_now(&s.store).await?;
    Ok(Json(json!({ "generation": generation })))
}

/// Body of `PUT /v1/mode`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeBody {
    mode: Mode,
    reason: String,
    #[serde(default)]
    expires: Option<DateTime<Utc>>,
    /// Networks to exempt; added to those of `mode.yaml` unless `replace_exempt`.
    #[serde(default)]
    exempt: Option<Vec<Prefix>>,
    /// The given `exempt` list replaces the exemptions of `mode.yaml` (audited as such).
    #[serde(default)]
    replace_exempt: bool,
}

async fn set_mode(
    State(s): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Json(b): Json<ModeBody>,
) -> ApiResult {
    if b.reason.trim().is_empty() {
        return Err(bad("a reason is required"));
    }
    // The exemptions of mode.yaml always stay in force unless the caller replaces them
    // explicitly. Without a new list, an earlier override's networks (and its choice to
    // replace) carry over.
    let (exempt, replace_exempt) = match (b.exempt, b.replace_exempt) {
        (Some(e), replace) => (e, replace),
        (None, true) => (Vec::new(), true),
        (None, false) => s
            .store
            .state()
            .overrides()
            .map_err(internal)?
            .mode
            .map(|m| (m.mode.exempt, m.replace_exempt))
            .unwrap_or_default(),
    };
    let m = ModeOverride {
        mode: ModeFile {
            mode: b.mode,
            set_by: actor.clone(),
            reason: b.reason,
            set_at: Some(Utc::now()),
            expires: b.expires,
            exempt,
        },
        replace_exempt,
    };
    let st = s.store.state().clone();
    blocking(move || st.set_mode(&m, &actor)).await?;
    let generation = reload_now(&s.store).await?;
    Ok(Json(
        json!({ "generation": generation, "mode": s.store.snapshot().mode }),
    ))
}

/// `?reason=` of delete calls.
#[derive(Deserialize)]
struct ReasonQuery {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
}

async fn clear_mode(
    State(s): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Query(q): Query<ReasonQuery>,
) -> ApiResult {
    let st = s.store.state().clone();
    let reason = q.reason.unwrap_or_default();
    blocking(move || st.clear_mode(&actor, &reason)).await?;
    let generation = reload_now(&s.store).await?;
    Ok(Json(
        json!({ "generation": generation, "mode": s.store.snapshot().mode }),
    ))
}

/// Body of `POST /v1/infected`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagBody {
    prefix: Prefix,
    family: String,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    ticket: Option<String>,
    #[serde(default)]
    first_seen: Option<DateTime<Utc>>,
    /// Accept a prefix shorter than the configured minimum (recorded in the audit log).
    #[serde(default)]
    force: bool,
}

async fn flag(
    State(s): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Json(b): Json<FlagBody>,
) -> ApiResult {
    if b.family.trim().is_empty() {
        return Err(bad("family is required"));
    }
    refuse_short(&s, b.prefix, b.force, "infected subscriber")?;
    let e = InfectedEntry {
        prefix: b.prefix,
        family: b.family,
        source: b.source.unwrap_or_else(|| actor.clone()),
        first_seen: b.first_seen.unwrap_or_else(Utc::now),
        ticket: b.ticket,
        force: b.force,
    };
    let st = s.store.state().clone();
    blocking(move || st.flag(&e, &actor)).await?;
    let generation = reload_now(&s.store).await?;
    Ok(Json(json!({ "generation": generation })))
}

/// 400 for a prefix shorter than `policy.min_prefix_*` without `force` (a `/0` would quarantine
/// or restrict every subscriber).
fn refuse_short(s: &AdminState, p: Prefix, force: bool, what: &str) -> Result<(), ApiError> {
    match crate::policy::compile::too_short(p.0, force, s.store.min_prefix(), what) {
        Some(m) => Err(bad(m)),
        None => Ok(()),
    }
}

fn query_prefix(q: &ReasonQuery) -> Result<Prefix, ApiError> {
    q.prefix
        .as_deref()
        .ok_or_else(|| bad("?prefix= is required"))?
        .parse()
        .map_err(bad)
}

async fn unflag(
    State(s): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Query(q): Query<ReasonQuery>,
) -> ApiResult {
    let p = query_prefix(&q)?;
    let st = s.store.state().clone();
    let reason = q.reason.unwrap_or_default();
    blocking(move || st.unflag(p.0, Utc::now().timestamp(), &actor, &reason)).await?;
    let generation = reload_now(&s.store).await?;
    Ok(Json(json!({ "generation": generation })))
}

/// Body of `POST /v1/enrolments`: creates or replaces an enrolment.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolBody {
    prefix: Prefix,
    profile: String,
    /// Accept a prefix shorter than the configured minimum (recorded in the audit log).
    #[serde(default)]
    force: bool,
    /// The household's extra allowed names.
    #[serde(default)]
    allow: Vec<String>,
    /// Services or categories the household removed.
    #[serde(default)]
    remove: Vec<String>,
    /// The enrolment's own schedule.
    #[serde(default)]
    schedule: Option<String>,
}

async fn enrol(
    State(s): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Json(b): Json<EnrolBody>,
) -> ApiResult {
    refuse_short(&s, b.prefix, b.force, "enrolment")?;
    let e = EnrolmentEntry {
        prefix: b.prefix,
        profile: b.profile,
        enabled_by: actor.clone(),
        enabled_at: Utc::now(),
        force: b.force,
        allow: b.allow,
        remove: b.remove,
        schedule: b.schedule.filter(|s| !s.is_empty()),
    };
    save_enrolment(&s, e, actor).await
}

/// Checks an enrolment against the serving policy (profile, household names, services,
/// schedule), so that nothing the API accepts can break a reload; then writes and applies it.
async fn save_enrolment(s: &AdminState, mut e: EnrolmentEntry, actor: String) -> ApiResult {
    let snap = s.store.snapshot();
    let mut problems = Vec::new();
    if snap.profile_index(&e.profile).is_none() {
        let known: Vec<_> = snap.profiles.iter().map(|p| p.name.as_str()).collect();
        problems.push(format!(
            "unknown profile `{}` (known: {})",
            e.profile,
            known.join(", ")
        ));
    }
    let def = HouseholdDef {
        allow: &e.allow,
        remove: &e.remove,
        schedule: e.schedule.as_deref(),
    };
    problems.extend(household::check(&snap, def, s.store.household_max_names()));
    if !problems.is_empty() {
        return Err(bad(problems.join("; ")));
    }
    // Stored as they are matched: normalised, each once.
    let mut allow: Vec<String> = Vec::new();
    for n in e
        .allow
        .iter()
        .filter_map(|n| household::household_name(n).ok())
    {
        if !allow.contains(&n) {
            allow.push(n);
        }
    }
    e.allow = allow;
    let prefix = e.prefix;
    let st = s.store.state().clone();
    blocking(move || st.enrol(&e, &actor)).await?;
    let generation = reload_now(&s.store).await?;
    let snap = s.store.snapshot();
    let entry = snap
        .enrolled
        .exact(prefix.0)
        .map(|e| snap.enrolment_entry(e));
    Ok(Json(
        json!({ "generation": generation, "enrolment": entry }),
    ))
}

/// `?prefix=` of `GET /v1/enrolments`.
#[derive(Deserialize)]
struct PrefixQuery {
    prefix: Prefix,
}

/// One enrolment as in force: profile, household, schedule and the profile in force now.
async fn show_enrolment(State(s): State<AdminState>, Query(q): Query<PrefixQuery>) -> ApiResult {
    let snap = s.store.snapshot();
    let Some(e) = snap.enrolled.exact(q.prefix.0) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{} is not enrolled", q.prefix),
        ));
    };
    let now = Utc::now().timestamp();
    let view = snap.classify(q.prefix.0.network());
    let (in_force, period) = match crate::policy::identify(&snap, &view, now) {
        crate::policy::Who::Trusted {
            profile, period, ..
        } => (
            snap.profiles.get(profile as usize).map(|p| p.name.clone()),
            period.and_then(|p| snap.period_name(p)),
        ),
        _ => (None, None),
    };
    Ok(Json(json!({
        "enrolment": snap.enrolment_entry(e),
        "origin": snap.enrolled.origin_text(e.origin),
        "profile_now": in_force,
        "period_now": period,
    })))
}

/// Body of `PATCH /v1/enrolments`: changes to a household's additions, removals and schedule.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HouseholdBody {
    prefix: Prefix,
    /// Names to add.
    #[serde(default)]
    allow: Vec<String>,
    /// Added names to take back.
    #[serde(default)]
    disallow: Vec<String>,
    /// Services or categories to remove.
    #[serde(default)]
    remove: Vec<String>,
    /// Removed services or categories to give back.
    #[serde(default)]
    restore: Vec<String>,
    /// A schedule to follow; `""` to follow the profile's again.
    #[serde(default)]
    schedule: Option<String>,
}

async fn edit_household(
    State(s): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Json(b): Json<HouseholdBody>,
) -> ApiResult {
    let snap = s.store.snapshot();
    let Some(current) = snap.enrolled.exact(b.prefix.0) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{} is not enrolled: enrol it first (POST)", b.prefix),
        ));
    };
    let mut e = snap.enrolment_entry(current);
    e.force =
        crate::policy::compile::too_short(b.prefix.0, false, s.store.min_prefix(), "").is_some();
    let norm = |n: &str| household::household_name(n).unwrap_or_else(|_| n.to_owned());
    for n in &b.allow {
        if !e.allow.iter().any(|a| *a == norm(n)) {
            e.allow.push(n.clone());
        }
    }
    e.allow
        .retain(|a| !b.disallow.iter().any(|d| norm(d) == *a));
    // Categories are kept as the services they expand to, so a restore may name either.
    let expand = |r: &str| -> Vec<String> {
        let ids: Vec<String> = snap
            .services
            .iter()
            .filter(|(id, _, c)| id == r || c == r)
            .map(|(id, _, _)| id.clone())
            .collect();
        if ids.is_empty() {
            vec![r.to_owned()]
        } else {
            ids
        }
    };
    for r in b.remove.iter().flat_map(|r| expand(r)) {
        if !e.remove.contains(&r) {
            e.remove.push(r);
        }
    }
    let restored: Vec<String> = b.restore.iter().flat_map(|r| expand(r)).collect();
    e.remove.retain(|r| !restored.contains(r));
    if let Some(sched) = b.schedule {
        e.schedule = (!sched.is_empty()).then_some(sched);
    }
    drop(snap);
    save_enrolment(&s, e, actor).await
}

async fn unenrol(
    State(s): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Query(q): Query<ReasonQuery>,
) -> ApiResult {
    let p = query_prefix(&q)?;
    let st = s.store.state().clone();
    blocking(move || st.unenrol(p.0, Utc::now().timestamp(), &actor)).await?;
    let generation = reload_now(&s.store).await?;
    Ok(Json(json!({ "generation": generation })))
}

/// `?client=&name=&type=` of explain.
#[derive(Deserialize)]
struct ExplainQuery {
    client: IpAddr,
    name: String,
    #[serde(default, rename = "type")]
    qtype: Option<String>,
}

async fn explain_query(State(s): State<AdminState>, Query(q): Query<ExplainQuery>) -> ApiResult {
    let qtype = match q.qtype.as_deref() {
        None => RecordType::A,
        Some(t) => t
            .to_ascii_uppercase()
            .parse()
            .map_err(|_| bad(format!("unknown type `{t}`")))?,
    };
    let question = Question::new(&q.name, qtype).ok_or_else(|| bad("name too long"))?;
    let snap = s.store.snapshot();
    Ok(Json(
        serde_json::to_value(explain(&snap, q.client, &question, Utc::now().timestamp()))
            .map_err(internal)?,
    ))
}

/// `?limit=` of the audit log.
#[derive(Deserialize)]
struct LimitQuery {
    #[serde(default)]
    limit: Option<usize>,
}

async fn audit(State(s): State<AdminState>, Query(q): Query<LimitQuery>) -> ApiResult {
    let st = s.store.state().clone();
    let limit = q.limit.unwrap_or(200).clamp(1, 10_000);
    let rows = blocking(move || st.audit_log(limit)).await?;
    Ok(Json(json!(rows
        .into_iter()
        .map(|(at, actor, action, detail)| json!({"at": rfc3339(at), "actor": actor, "action": action, "detail": detail}))
        .collect::<Vec<_>>())))
}

/// `?profile=&since=&limit=` of the misses report.
#[derive(Deserialize)]
struct MissesQuery {
    #[serde(default)]
    profile: Option<String>,
    /// RFC 3339 time or a duration back from now (`24h`, `7d`, `90m`). Default: 7 days.
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// Parses `since` of the misses report: RFC 3339, or `N` + `m`/`h`/`d` back from `now`.
fn parse_since(text: &str, now: i64) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.timestamp());
    }
    let (n, unit) = t.split_at(t.len().saturating_sub(1));
    let secs = match unit {
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    match n.parse::<i64>() {
        Ok(n) if secs > 0 && (0..=3650 * 86_400 / secs).contains(&n) => Ok(now - n * secs),
        _ => Err(format!(
            "since `{text}`: give an RFC 3339 time (2026-12-01T00:00:00Z) or a duration such as 90m, 24h, 7d"
        )),
    }
}

/// The names trusted-zone clients were denied, most denied first, with the hinted service.
/// Saves what is still in memory first, so the report is current.
async fn list_misses(State(s): State<AdminState>, Query(q): Query<MissesQuery>) -> ApiResult {
    let now = Utc::now().timestamp();
    let since = match q.since.as_deref() {
        Some(t) => parse_since(t, now).map_err(bad)?,
        None => now - 7 * 86_400,
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let st = s.store.state().clone();
    let misses = s.misses.clone();
    let profile = q.profile.clone();
    let rows = blocking(move || {
        if let Some(m) = &misses {
            m.flush(&*st, now)?;
        }
        st.misses(profile.as_deref(), since)
    })
    .await?;
    Ok(Json(json!({
        "since": rfc3339(since),
        "profile": q.profile,
        "hint_window_secs": crate::misses::HINT_SECS,
        "misses": crate::misses::report(&rows, limit),
    })))
}

/// `?org=&state=` of the alert list.
#[derive(Deserialize)]
struct AlertFilter {
    #[serde(default)]
    org: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

async fn list_alerts(State(s): State<AdminState>, Query(f): Query<AlertFilter>) -> ApiResult {
    let st = s.store.state().clone();
    let rows = blocking(move || st.alerts(f.org.as_deref(), f.state.as_deref())).await?;
    Ok(Json(json!(rows)))
}

/// Body of lifecycle calls.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: String,
}

async fn alert_action(
    State(s): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path((id, action)): Path<(i64, String)>,
    body: Option<Json<ReasonBody>>,
) -> ApiResult {
    let reason = body.map(|b| b.0.reason).unwrap_or_default();
    let (from, to): (&'static [&'static str], &'static str) = match action.as_str() {
        "acknowledge" => (&["open"], "acknowledged"),
        "resolve" => (&["open", "acknowledged", "overdue"], "resolved"),
        "reopen" => (&["resolved", "overdue"], "open"),
        other => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("unknown action `{other}` (acknowledge, resolve, reopen)"),
            ));
        }
    };
    let now = s
        .alerts
        .as_ref()
        .map_or_else(|| Utc::now().timestamp(), |a| a.now());
    let st = s.store.state().clone();
    let moved = blocking(move || st.transition(id, from, to, &actor, &reason, now)).await?;
    if !moved {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("alert #{id} does not exist or cannot be {to} from its state"),
        ));
    }
    if to == "resolved" {
        metrics::counter!(crate::metrics::ALERTS_RESOLVED).increment(1);
    }
    let st = s.store.state().clone();
    let row = blocking(move || st.alert(id)).await?;
    Ok(Json(json!(row)))
}

async fn reinstate(
    State(s): State<AdminState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(org): Path<String>,
    Json(b): Json<ReasonBody>,
) -> ApiResult {
    if b.reason.trim().is_empty() {
        return Err(bad("a reason is required to reinstate an organisation"));
    }
    let now = s
        .alerts
        .as_ref()
        .map_or_else(|| Utc::now().timestamp(), |a| a.now());
    let st = s.store.state().clone();
    let o = org.clone();
    let done = blocking(move || st.reinstate(&o, &actor, &b.reason, now)).await?;
    if !done {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("organisation `{org}` is not revoked"),
        ));
    }
    let generation = reload_now(&s.store).await?;
    Ok(Json(
        json!({ "generation": generation, "organisation": org, "standing": "good" }),
    ))
}
