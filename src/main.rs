//! The `cleanpipe` command: serve, check, explain, and admin calls.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use cleanpipe::config::Config;
use cleanpipe::policy::Question;
use cleanpipe::policy::explain::explain;
use cleanpipe::state::SqliteStore;
use cleanpipe::store::{PolicyStore, ReloadError};

/// cleanpipe: a protective DNS resolver for ISPs.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// Configuration file. Default: the embedded quick-start configuration (paths relative to
    /// the current directory).
    #[arg(long, short, env = "CLEANPIPE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Print the admin API's JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Who you are, for the audit log. Default: your login name.
    #[arg(long, env = "CLEANPIPE_ACTOR", global = true)]
    actor: Option<String>,
}

impl ConfigArg {
    /// The operator recorded in the audit log: `--actor`, else the login name (the user behind
    /// sudo first).
    fn actor(&self) -> String {
        self.actor
            .clone()
            .or_else(|| {
                ["SUDO_USER", "USER", "LOGNAME"]
                    .iter()
                    .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
            })
            .unwrap_or_else(|| "cli".into())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the resolver.
    Serve(ConfigArg),
    /// Validate the configuration and the whole policy; print every error; exit non-zero on error.
    Check(ConfigArg),
    /// Print the decision for CLIENT asking QNAME (QTYPE, default A), and why.
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// Client address.
        client: IpAddr,
        /// Query name.
        qname: String,
        /// Query type.
        #[arg(default_value = "A")]
        qtype: String,
    },
    /// The curated allowlists.
    Allowlist {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        what: AllowlistCmd,
    },
    /// Show the running service's status (admin API).
    Status(ConfigArg),
    /// The latest changes: when, who, what (admin API).
    Audit {
        #[command(flatten)]
        config: ConfigArg,
        /// Entries to show (newest first).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Exit 0 when the running service is ready (`GET /ready`), 1 otherwise: for health checks.
    Ready(ConfigArg),
    /// Set or clear global trusted-only mode (admin API).
    Mode {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        what: ModeCmd,
    },
    /// Flag a subscriber as infected (admin API).
    Flag {
        #[command(flatten)]
        config: ConfigArg,
        /// Address or prefix.
        prefix: String,
        /// Malware family or signature.
        #[arg(long)]
        family: String,
        /// Ticket reference.
        #[arg(long)]
        ticket: Option<String>,
        /// Accept a prefix shorter than policy.min_prefix_v4/v6 (a whole network; audited).
        #[arg(long)]
        force: bool,
    },
    /// Lift a subscriber's infection flag (admin API).
    Unflag {
        #[command(flatten)]
        config: ConfigArg,
        /// Address or prefix.
        prefix: String,
        /// Why (audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Enrol a customer in a trusted-zone profile, or replace its enrolment (admin API).
    Enrol {
        #[command(flatten)]
        config: ConfigArg,
        /// Address or prefix.
        prefix: String,
        /// Profile (e.g. clean-pipe, kids).
        profile: String,
        /// Accept a prefix shorter than policy.min_prefix_v4/v6 (a whole network; audited).
        #[arg(long)]
        force: bool,
        /// A name the household adds (with everything under it); repeatable.
        #[arg(long = "allow", value_name = "NAME")]
        allow: Vec<String>,
        /// A service or category the household removes; repeatable.
        #[arg(long = "remove", value_name = "SERVICE")]
        remove: Vec<String>,
        /// A schedule from schedules.yaml for this enrolment.
        #[arg(long)]
        schedule: Option<String>,
    },
    /// Show or change a household's own additions, removed services and schedule (admin API).
    Household {
        #[command(flatten)]
        config: ConfigArg,
        /// The enrolment's address or prefix.
        prefix: String,
        /// Add a name (with everything under it); repeatable.
        #[arg(long = "allow", value_name = "NAME")]
        allow: Vec<String>,
        /// Take back an added name; repeatable.
        #[arg(long = "disallow", value_name = "NAME")]
        disallow: Vec<String>,
        /// Remove a service or category; repeatable.
        #[arg(long = "remove", value_name = "SERVICE")]
        remove: Vec<String>,
        /// Give back a removed service or category; repeatable.
        #[arg(long = "restore", value_name = "SERVICE")]
        restore: Vec<String>,
        /// Follow this schedule ("" to follow the profile's again).
        #[arg(long)]
        schedule: Option<String>,
    },
    /// Organisation alerts (admin API).
    Alerts {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        what: AlertsCmd,
    },
    /// Give a revoked organisation its whitelisting back (admin API).
    Reinstate {
        #[command(flatten)]
        config: ConfigArg,
        /// Organisation id.
        org: String,
        /// Why (required, audit log).
        #[arg(long)]
        reason: String,
    },
    /// Copy the state database (admin changes, alerts, audit log) to FILE, safely while the
    /// service runs. Restore: stop the service, put the copy at `state.path`, start it.
    Backup {
        #[command(flatten)]
        config: ConfigArg,
        /// Where to write the copy (must not exist).
        file: PathBuf,
    },
    /// Remove a customer's enrolment (admin API).
    Unenrol {
        #[command(flatten)]
        config: ConfigArg,
        /// Address or prefix.
        prefix: String,
    },
}

#[derive(Subcommand)]
enum AllowlistCmd {
    /// One line per service: id, category, domain count, name.
    List,
    /// Profiles and the number of services in each.
    Profiles,
    /// The names trusted-zone clients were denied, most denied first, with the allowed service
    /// asked just before (a hint that the name is one of its dependencies). Per profile, never
    /// per client (admin API).
    Misses {
        /// Only this profile.
        #[arg(long)]
        profile: Option<String>,
        /// From this time on: RFC 3339, or back from now (90m, 24h, 7d). Default: 7d.
        #[arg(long)]
        since: Option<String>,
        /// Lines to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum AlertsCmd {
    /// List alerts.
    List {
        /// Only this organisation.
        #[arg(long)]
        org: Option<String>,
        /// Only this state (open, acknowledged, resolved, overdue).
        #[arg(long)]
        state: Option<String>,
    },
    /// Acknowledge an alert (the organisation is working on it).
    Ack {
        /// Alert id.
        id: i64,
        /// Note for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Mark an alert resolved (the host was cleaned).
    Resolve {
        /// Alert id.
        id: i64,
        /// Note for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Reopen a resolved or overdue alert.
    Reopen {
        /// Alert id.
        id: i64,
        /// Note for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum ModeCmd {
    /// Everyone (except exempt networks) gets only the trusted zone.
    TrustedOnly {
        /// Why (required, audit log).
        #[arg(long)]
        reason: String,
        /// RFC 3339 time at which it ends by itself.
        #[arg(long)]
        expires: Option<String>,
        /// A network never restricted (repeatable). Added to the exemptions of mode.yaml,
        /// which stay in force.
        #[arg(long = "exempt", value_name = "PREFIX")]
        exempt: Vec<String>,
        /// The --exempt networks replace the exemptions of mode.yaml instead of adding to
        /// them (recorded in the audit log). With no --exempt: nobody is exempt.
        #[arg(long)]
        replace_exemptions: bool,
    },
    /// Back to normal (also overrides mode.yaml until cleared).
    Normal {
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Remove the admin setting: mode.yaml (or normal) applies again.
    Clear {
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

fn load_config(arg: &ConfigArg) -> Result<Config> {
    Ok(match &arg.config {
        Some(p) => Config::from_path(p)?,
        None => Config::embedded(&std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")))?,
    })
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never in files or the journal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

fn serve(arg: &ConfigArg) -> Result<()> {
    let config = load_config(arg)?;
    init_logging(&config);
    use metrics_exporter_prometheus::Matcher;
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(cleanpipe::metrics::RESPONSE_SECONDS.into()),
            cleanpipe::metrics::LATENCY_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(cleanpipe::metrics::UPSTREAM_RTT.into()),
                cleanpipe::metrics::LATENCY_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(cleanpipe::metrics::RELOAD_SECONDS.into()),
                cleanpipe::metrics::RELOAD_BUCKETS,
            )
        })
        .context("histogram buckets")?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).context("installing the metrics recorder")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("control")
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    rt.block_on(cleanpipe::server::serve(
        config,
        Some(handle),
        shutdown_signal(),
    ))?;
    Ok(())
}

fn backup(arg: &ConfigArg, to: &std::path::Path) -> Result<()> {
    let config = load_config(arg)?;
    let from = &config.state.path;
    if !from.exists() {
        bail!(
            "{} does not exist: nothing to back up (is state.path in {} right?)",
            from.display(),
            arg.config
                .as_deref()
                .map_or("the configuration".into(), |p| p.display().to_string())
        );
    }
    if to.exists() {
        bail!("{} exists already: give a new file name", to.display());
    }
    SqliteStore::backup(from, to)?;
    println!(
        "backed up {} to {} (schema version {})",
        from.display(),
        to.display(),
        SqliteStore::schema_version()
    );
    Ok(())
}

fn offline_store(config: &Config) -> Result<PolicyStore, ReloadError> {
    // `check` and `explain` read the admin overrides from the state database when it exists,
    // from a private copy: never creating, writing or migrating the one a service uses.
    let state = if config.state.path.exists() {
        SqliteStore::open_copy(&config.state.path)?
    } else {
        SqliteStore::in_memory()?
    };
    PolicyStore::open(
        config,
        std::sync::Arc::new(state),
        cleanpipe::xfr::load_saved(config),
    )
}

fn check(arg: &ConfigArg) -> Result<ExitCode> {
    let config = match load_config(arg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Err(e) = cleanpipe::resolve::Resolver::from_config(
        &config,
        tokio_handle_for_check()?.handle().clone(),
    ) {
        eprintln!("{e}");
        return Ok(ExitCode::FAILURE);
    }
    let content = match &config.web.content_dir {
        Some(dir) => cleanpipe::web::content::Content::from_dir(dir),
        None => cleanpipe::web::content::Content::builtin(),
    };
    if let Err(e) = content {
        eprintln!("web.content_dir: {e}");
        return Ok(ExitCode::FAILURE);
    }
    for w in cleanpipe::server::warnings(&config) {
        eprintln!("warning: {w}");
    }
    match offline_store(&config) {
        Ok(store) => {
            let s = store.snapshot();
            let c = s.counts();
            println!(
                "ok: {} infected, {} enrolments, {} organisations, {} profiles, {} services, {} allowlisted names, {} feed triggers, mode {:?}",
                c.infected,
                c.enrolments,
                c.organisations,
                c.profiles,
                c.services,
                c.allowlisted_names,
                c.feed_triggers,
                s.mode.mode
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(ReloadError::Invalid(errs)) => {
            // The same message on many lines (a broken feed) is said once, with its lines.
            for e in cleanpipe::policy::sources::summarise(&errs) {
                eprintln!("{e}");
            }
            eprintln!("{} error(s)", errs.len());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn tokio_handle_for_check() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn explain_cmd(arg: &ConfigArg, client: IpAddr, qname: &str, qtype: &str) -> Result<()> {
    let config = load_config(arg)?;
    let store = offline_store(&config)?;
    let qtype = qtype
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| anyhow::anyhow!("unknown query type `{qtype}`"))?;
    let q = Question::new(qname, qtype).context("query name too long")?;
    let e = explain(
        &store.snapshot(),
        client,
        &q,
        chrono::Utc::now().timestamp(),
    );
    if arg.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(());
    }
    println!("decision: {}", e.action);
    println!("reason:   {}", e.reason);
    if let Some(ede) = &e.ede {
        println!("ede:      {ede}");
    }
    for d in &e.details {
        println!("  - {d}");
    }
    Ok(())
}

fn allowlist(arg: &ConfigArg, what: &AllowlistCmd) -> Result<()> {
    if let AllowlistCmd::Misses {
        profile,
        since,
        limit,
    } = what
    {
        return misses(arg, profile.as_deref(), since.as_deref(), *limit, arg.json);
    }
    let config = load_config(arg)?;
    let sources = cleanpipe::policy::SourceSet::read(None, &config.policy.allowlists)?;
    let mut lists = cleanpipe::policy::sources::Allowlists::default();
    for (rel, display, text) in &sources.allowlist_files {
        lists.add_file(rel, display, text)?;
    }
    match what {
        AllowlistCmd::List => {
            println!("{:<24} {:<20} {:>7}  name", "id", "category", "domains");
            for (_, s) in &lists.services {
                println!(
                    "{:<24} {:<20} {:>7}  {}",
                    s.id,
                    s.category,
                    s.domains.len() + s.shared.len(),
                    s.name
                );
            }
            println!(
                "{} services, allowlists version {}",
                lists.services.len(),
                lists.meta.version
            );
        }
        AllowlistCmd::Misses { .. } => {}
        AllowlistCmd::Profiles => {
            let store = offline_store(&config)?;
            for p in &store.snapshot().profiles {
                println!(
                    "{:<16} {:>4} services  blocked: {:?}  safe search: {}  {}",
                    p.name,
                    p.services.len(),
                    p.blocked,
                    p.safe_search,
                    p.description
                );
            }
        }
    }
    Ok(())
}

fn admin_call(
    arg: &ConfigArg,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<()> {
    let text = admin_request(arg, method, path, body)?;
    if arg.json || method == "GET" {
        println!("{}", text.trim_end());
    } else {
        // A change: say what is in force now, briefly.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        match v["generation"].as_u64() {
            Some(g) => println!("done: policy generation {g} is serving"),
            None => println!("{}", text.trim_end()),
        }
    }
    Ok(())
}

/// One admin API call; the answer's body, or an error with the API's message.
fn admin_request(
    arg: &ConfigArg,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<String> {
    let config = load_config(arg)?;
    let addr = config.admin.listen.context(
        "admin.listen is null in this configuration: the admin API is off, so this command cannot reach the service",
    )?;
    let token = config.admin_token();
    let auth = token.as_deref().map(|t| format!("Bearer {t}"));
    let actor = arg.actor();
    let mut headers: Vec<(&str, &str)> = vec![("X-Cleanpipe-Actor", &actor)];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    let r = cleanpipe::web::client::request(addr, None, method, path, &headers, &body)
        .with_context(|| {
            format!(
                "cannot reach the admin API at {addr}: is `cleanpipe serve` running with this configuration ({})?",
                arg.config
                    .as_deref()
                    .map_or("the embedded default; pass --config".into(), |p| p.display().to_string())
            )
        })?;
    let message = || {
        serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| r.body.trim().to_owned())
    };
    match r.status {
        200..=299 => Ok(r.body),
        401 if token.is_none() => bail!(
            "the admin API needs a token: set admin.token in the configuration or CLEANPIPE_ADMIN_TOKEN in the environment"
        ),
        401 => bail!(
            "the admin API refused the token: check admin.token (or CLEANPIPE_ADMIN_TOKEN) against the running service's configuration"
        ),
        403 => bail!("{} (use a token with that scope)", message()),
        code @ 400..=499 => bail!("{} (HTTP {code})", message()),
        code => bail!(
            "the service failed: {} (HTTP {code}); its log says more (journalctl -u cleanpipe)",
            message()
        ),
    }
}

/// A GET whose answer is printed as text by `render`, or as JSON with `--json`.
fn admin_show(arg: &ConfigArg, path: &str, render: fn(&serde_json::Value) -> String) -> Result<()> {
    let body = admin_request(arg, "GET", path, None)?;
    if arg.json {
        println!("{}", body.trim_end());
        return Ok(());
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).context("the admin API answered something that is not JSON")?;
    print!("{}", render(&v));
    Ok(())
}

/// `cleanpipe allowlist misses`: a table of the most denied names.
fn misses(
    arg: &ConfigArg,
    profile: Option<&str>,
    since: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<()> {
    let mut q = vec![format!("limit={limit}")];
    if let Some(p) = profile {
        q.push(format!("profile={}", encode(p)));
    }
    if let Some(s) = since {
        q.push(format!("since={}", encode(s)));
    }
    let text = admin_request(arg, "GET", &format!("/v1/misses?{}", q.join("&")), None)?;
    if json {
        println!("{}", text.trim_end());
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let rows = v["misses"].as_array().cloned().unwrap_or_default();
    println!(
        "Names trusted-zone clients were denied since {}{}:",
        v["since"].as_str().unwrap_or("?"),
        profile
            .map(|p| format!(" (profile {p})"))
            .unwrap_or_default()
    );
    if rows.is_empty() {
        println!("  none");
        return Ok(());
    }
    println!(
        "{:>8}  {:<16} {:<44} asked just before (within {} s)",
        "denials", "profile", "name", v["hint_window_secs"]
    );
    for r in rows {
        let hint = match r["hint"].as_str() {
            Some(h) => format!("{h} ({} of {})", r["hint_count"], r["count"]),
            None => "-".into(),
        };
        println!(
            "{:>8}  {:<16} {:<44} {hint}",
            r["count"],
            r["profile"].as_str().unwrap_or("?"),
            r["name"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Serve(c) => serve(c).map(|_| ExitCode::SUCCESS),
        Command::Backup { config, file } => backup(config, file).map(|_| ExitCode::SUCCESS),
        Command::Check(c) => check(c),
        Command::Explain { config, client, qname, qtype } => explain_cmd(config, *client, qname, qtype).map(|_| ExitCode::SUCCESS),
        Command::Allowlist { config, what } => allowlist(config, what).map(|_| ExitCode::SUCCESS),
        Command::Status(c) => admin_show(c, "/v1/status", cleanpipe::report::status).map(|_| ExitCode::SUCCESS),
        Command::Audit { config, limit } => admin_show(config, &format!("/v1/audit?limit={limit}"), cleanpipe::report::audit).map(|_| ExitCode::SUCCESS),
        Command::Ready(c) => admin_call(c, "GET", "/ready", None).map(|_| ExitCode::SUCCESS),
        Command::Mode { config, what } => match what {
            ModeCmd::TrustedOnly { reason, expires, exempt, replace_exemptions } => {
                let mut body = serde_json::json!({"mode": "trusted-only", "reason": reason, "expires": expires, "replace_exempt": replace_exemptions});
                if !exempt.is_empty() {
                    body["exempt"] = serde_json::json!(exempt);
                }
                admin_call(config, "PUT", "/v1/mode", Some(body))
            }
            ModeCmd::Normal { reason } => admin_call(config, "PUT", "/v1/mode", Some(serde_json::json!({"mode": "normal", "reason": reason}))),
            ModeCmd::Clear { reason } => admin_call(config, "DELETE", &format!("/v1/mode?reason={}", encode(reason)), None),
        }
        .map(|_| ExitCode::SUCCESS),
        Command::Flag { config, prefix, family, ticket, force } => admin_call(
            config,
            "POST",
            "/v1/infected",
            Some(serde_json::json!({"prefix": prefix, "family": family, "ticket": ticket, "force": force})),
        )
        .map(|_| ExitCode::SUCCESS),
        Command::Unflag { config, prefix, reason } => admin_call(
            config,
            "DELETE",
            &format!("/v1/infected?prefix={}&reason={}", encode(prefix), encode(reason)),
            None,
        )
        .map(|_| ExitCode::SUCCESS),
        Command::Enrol { config, prefix, profile, force, allow, remove, schedule } => admin_call(
            config,
            "POST",
            "/v1/enrolments",
            Some(serde_json::json!({"prefix": prefix, "profile": profile, "force": force, "allow": allow, "remove": remove, "schedule": schedule})),
        )
        .map(|_| ExitCode::SUCCESS),
        Command::Household { config, prefix, allow, disallow, remove, restore, schedule } => {
            if allow.is_empty() && disallow.is_empty() && remove.is_empty() && restore.is_empty() && schedule.is_none() {
                admin_call(config, "GET", &format!("/v1/enrolments?prefix={}", encode(prefix)), None)
            } else {
                admin_call(
                    config,
                    "PATCH",
                    "/v1/enrolments",
                    Some(serde_json::json!({"prefix": prefix, "allow": allow, "disallow": disallow, "remove": remove, "restore": restore, "schedule": schedule})),
                )
            }
            .map(|_| ExitCode::SUCCESS)
        }
        Command::Alerts { config, what } => match what {
            AlertsCmd::List { org, state } => {
                let mut q = Vec::new();
                if let Some(o) = org {
                    q.push(format!("org={}", encode(o)));
                }
                if let Some(s) = state {
                    q.push(format!("state={}", encode(s)));
                }
                admin_show(config, &format!("/v1/alerts?{}", q.join("&")), cleanpipe::report::alerts)
            }
            AlertsCmd::Ack { id, reason } => admin_call(config, "POST", &format!("/v1/alerts/{id}/acknowledge"), Some(serde_json::json!({"reason": reason}))),
            AlertsCmd::Resolve { id, reason } => admin_call(config, "POST", &format!("/v1/alerts/{id}/resolve"), Some(serde_json::json!({"reason": reason}))),
            AlertsCmd::Reopen { id, reason } => admin_call(config, "POST", &format!("/v1/alerts/{id}/reopen"), Some(serde_json::json!({"reason": reason}))),
        }
        .map(|_| ExitCode::SUCCESS),
        Command::Reinstate { config, org, reason } => {
            admin_call(config, "POST", &format!("/v1/organisations/{}/reinstate", encode(org)), Some(serde_json::json!({"reason": reason}))).map(|_| ExitCode::SUCCESS)
        }
        Command::Unenrol { config, prefix } => {
            admin_call(config, "DELETE", &format!("/v1/enrolments?prefix={}", encode(prefix)), None).map(|_| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Our errors already include their cause in their message: print each cause once.
            let mut text = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !text.contains(&c) {
                    text = format!("{text}: {c}");
                }
            }
            eprintln!("error: {text}");
            ExitCode::FAILURE
        }
    }
}
