//! Alert e-mails: the events of the alert outbox rendered as plain-text messages in the
//! organisation's language and sent through the ISP's SMTP relay (STARTTLS or TLS, with
//! authentication), by lettre. Delivery is at-least-once like webhooks: each message carries a
//! Message-ID derived from the outbox entry, so a repeated send is recognisable.

use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;

use crate::config::{SmtpConfig, SmtpSecurity};

/// A setting of `alerts.smtp` that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// `from` is not an address.
    #[error("alerts.smtp.from `{0}`: not an e-mail address ({1})")]
    From(String, String),
    /// A file could not be read.
    #[error("alerts.smtp: {0}: {1}")]
    File(String, std::io::Error),
    /// The TLS settings.
    #[error("alerts.smtp: TLS: {0}")]
    Tls(String),
}

/// Sends alert e-mails.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// The relay of `alerts.smtp`.
    pub fn from_config(c: &SmtpConfig) -> Result<Self, MailError> {
        let from: Mailbox = c.from.parse().map_err(|e: lettre::address::AddressError| {
            MailError::From(c.from.clone(), e.to_string())
        })?;
        let mut tls = TlsParameters::builder(c.server.clone());
        if let Some(ca) = &c.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| MailError::File(ca.display().to_string(), e))?;
            let cert = Certificate::from_pem(&pem).map_err(|e| MailError::Tls(e.to_string()))?;
            tls = tls.add_root_certificate(cert);
        }
        let tls = tls.build().map_err(|e| MailError::Tls(e.to_string()))?;
        let (mode, port) = match c.security {
            SmtpSecurity::Starttls => (Tls::Required(tls), 587),
            SmtpSecurity::Tls => (Tls::Wrapper(tls), 465),
            SmtpSecurity::None => (Tls::None, 25),
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(c.server.clone())
            .port(c.port.unwrap_or(port))
            .tls(mode)
            .timeout(Some(Duration::from_secs(c.timeout_secs.max(1))));
        if let Some(user) = &c.username {
            let password = match (&c.password, &c.password_file) {
                (_, Some(f)) => std::fs::read_to_string(f)
                    .map_err(|e| MailError::File(f.display().to_string(), e))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
                (Some(p), None) => p.clone(),
                (None, None) => String::new(),
            };
            b = b.credentials(Credentials::new(user.clone(), password));
        }
        Ok(Self {
            transport: b.build(),
            from,
        })
    }

    /// Sends one outbox entry (`body`: its JSON event) to `to` in `lang`.
    pub async fn send(&self, to: &str, lang: &str, body: &str, key: &str) -> Result<(), String> {
        let event: Value = serde_json::from_str(body).map_err(|e| format!("outbox body: {e}"))?;
        let (subject, text) = render(lang, &event);
        let to: Mailbox = to.parse().map_err(|e| format!("recipient {to}: {e}"))?;
        let domain = self.from.email.domain().to_owned();
        let msg = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(format!("<{key}@{domain}>")))
            .header(ContentType::TEXT_PLAIN)
            .body(text)
            .map_err(|e| format!("building the message: {e}"))?;
        self.transport
            .send(msg)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP: {e}"))
    }
}

/// The languages alert e-mails are written in; others fall back to English.
pub const LANGUAGES: [&str; 4] = ["en", "nl", "fr", "de"];

struct Texts {
    opened: &'static str,
    reminder: &'static str,
    revoked: &'static str,
    other: &'static str,
    host: &'static str,
    signature: &'static str,
    first_seen: &'static str,
    deadline: &'static str,
    alert: &'static str,
    what_to_do: &'static str,
}

const EN: Texts = Texts {
    opened: "Infected host in {org}: clean it up before {deadline}",
    reminder: "Reminder: infected host in {org}, deadline {deadline}",
    revoked: "{org} missed a cleanup deadline: whitelisting revoked",
    other: "cleanpipe alert for {org}",
    host: "Host",
    signature: "Infection",
    first_seen: "First seen",
    deadline: "Deadline",
    alert: "Alert",
    what_to_do: "What to do: find the machine with this address, take it off the network, remove the malware (reinstall if in doubt), change the passwords used on it, then tell us so we can close the alert. Until the deadline the host is not blocked, because your organisation is whitelisted; if it is still reported infected after the deadline, your organisation loses its whitelisting and its infected hosts are quarantined like any subscriber's.",
};

const NL: Texts = Texts {
    opened: "Besmette computer bij {org}: opkuisen vóór {deadline}",
    reminder: "Herinnering: besmette computer bij {org}, uiterste datum {deadline}",
    revoked: "{org} heeft een uiterste datum gemist: whitelisting ingetrokken",
    other: "cleanpipe-melding voor {org}",
    host: "Computer",
    signature: "Besmetting",
    first_seen: "Eerst gezien",
    deadline: "Uiterste datum",
    alert: "Melding",
    what_to_do: "Wat te doen: zoek de machine met dit adres, haal ze van het netwerk, verwijder de malware (herinstalleer bij twijfel), wijzig de wachtwoorden die erop gebruikt werden en laat het ons weten zodat we de melding kunnen sluiten. Tot de uiterste datum wordt de computer niet geblokkeerd, omdat uw organisatie op de whitelist staat; is ze daarna nog besmet, dan verliest uw organisatie die status en worden haar besmette computers in quarantaine geplaatst zoals bij elke klant.",
};

const FR: Texts = Texts {
    opened: "Machine infectée chez {org} : à nettoyer avant le {deadline}",
    reminder: "Rappel : machine infectée chez {org}, échéance le {deadline}",
    revoked: "{org} a dépassé une échéance de nettoyage : liste blanche retirée",
    other: "Alerte cleanpipe pour {org}",
    host: "Machine",
    signature: "Infection",
    first_seen: "Vue pour la première fois",
    deadline: "Échéance",
    alert: "Alerte",
    what_to_do: "Que faire : identifiez la machine qui utilise cette adresse, déconnectez-la du réseau, supprimez le logiciel malveillant (réinstallez en cas de doute), changez les mots de passe utilisés sur cette machine, puis prévenez-nous pour que nous clôturions l'alerte. Jusqu'à l'échéance, la machine n'est pas bloquée car votre organisation est sur liste blanche ; si elle est encore signalée infectée après l'échéance, votre organisation perd ce statut et ses machines infectées sont mises en quarantaine comme celles de tout abonné.",
};

const DE: Texts = Texts {
    opened: "Infizierter Rechner bei {org}: bereinigen bis {deadline}",
    reminder: "Erinnerung: infizierter Rechner bei {org}, Frist {deadline}",
    revoked: "{org} hat eine Bereinigungsfrist versäumt: Whitelisting entzogen",
    other: "cleanpipe-Meldung für {org}",
    host: "Rechner",
    signature: "Infektion",
    first_seen: "Zuerst gesehen",
    deadline: "Frist",
    alert: "Meldung",
    what_to_do: "Was zu tun ist: Finden Sie den Rechner mit dieser Adresse, trennen Sie ihn vom Netz, entfernen Sie die Schadsoftware (im Zweifel neu installieren), ändern Sie die darauf verwendeten Passwörter und melden Sie uns die Bereinigung, damit wir die Meldung schließen. Bis zur Frist wird der Rechner nicht gesperrt, weil Ihre Organisation auf der Whitelist steht; wird er danach noch als infiziert gemeldet, verliert Ihre Organisation diesen Status und ihre infizierten Rechner werden wie bei jedem Kunden in Quarantäne gesetzt.",
};

fn texts(lang: &str) -> &'static Texts {
    match lang {
        "nl" => &NL,
        "fr" => &FR,
        "de" => &DE,
        _ => &EN,
    }
}

/// Subject and plain-text body of an outbox event (the JSON the webhooks receive).
pub fn render(lang: &str, event: &Value) -> (String, String) {
    let t = texts(lang);
    let a = &event["alert"];
    let s = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let org = a["organisation"]["name"]
        .as_str()
        .or_else(|| a["organisation"]["id"].as_str())
        .unwrap_or("?")
        .to_owned();
    let deadline = s(&a["deadline"]);
    let template = match event["event"].as_str() {
        Some("alert.opened") => t.opened,
        Some("alert.reminder") => t.reminder,
        Some("organisation.revoked") => t.revoked,
        _ => t.other,
    };
    let subject = format!(
        "[cleanpipe] {}",
        template
            .replace("{org}", &org)
            .replace("{deadline}", &deadline)
    );
    let mut body = String::new();
    if let Some(m) = event["message"].as_str() {
        body.push_str(m);
        body.push_str("\n\n");
    }
    for (label, value) in [
        (t.host, s(&a["host"])),
        (t.signature, s(&a["signature"])),
        (t.first_seen, s(&a["first_seen"])),
        (t.deadline, deadline.clone()),
        (t.alert, format!("#{} ({})", s(&a["id"]), s(&a["state"]))),
    ] {
        body.push_str(&format!("{label}: {value}\n"));
    }
    body.push('\n');
    body.push_str(t.what_to_do);
    body.push_str("\n\n-- \ncleanpipe\n");
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str) -> Value {
        serde_json::json!({
            "event": kind,
            "message": "Host 192.0.2.7 in Example Hospital is infected (Qakbot).",
            "alert": {
                "id": 7, "organisation": {"id": "hospital", "name": "Example Hospital"},
                "host": "192.0.2.7", "signature": "Qakbot", "source": "cert",
                "first_seen": "2026-11-20T08:00:00+00:00", "deadline": "2026-11-23T08:00:00+00:00",
                "state": "open"
            }
        })
    }

    #[test]
    fn every_language_names_the_host_the_infection_and_the_deadline() {
        for lang in LANGUAGES {
            for kind in [
                "alert.opened",
                "alert.reminder",
                "organisation.revoked",
                "other",
            ] {
                let (subject, body) = render(lang, &event(kind));
                assert!(
                    subject.contains("Example Hospital"),
                    "{lang} {kind}: {subject}"
                );
                for needle in ["192.0.2.7", "Qakbot", "2026-11-23T08:00:00+00:00", "#7"] {
                    assert!(body.contains(needle), "{lang} {kind}: {needle} in {body}");
                }
            }
        }
        assert!(render("nl", &event("alert.opened")).0.contains("opkuisen"));
        assert!(render("fr", &event("alert.opened")).0.contains("nettoyer"));
        assert_eq!(
            render("xx", &event("alert.opened")),
            render("en", &event("alert.opened"))
        );
    }
}
