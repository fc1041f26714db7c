//! Every policy file loader and the configuration on arbitrary text: errors with file and
//! line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

use cleanpipe::policy::sources;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = sources::parse_infected_csv("infected.csv", &text);
    let _ = sources::parse_infected_yaml("infected.yaml", &text);
    let _ = sources::parse_enrolments("enrolments.yaml", &text);
    let _ = sources::parse_organisations("organisations.yaml", &text);
    let _ = sources::parse_mode("mode.yaml", &text);
    let mut lists = sources::Allowlists::default();
    let _ = lists.add_file("services/fuzz.yaml", "services/fuzz.yaml", &text);
    let _ = lists.add_file("profiles.yaml", "profiles.yaml", &text);
    let _ = cleanpipe::config::Config::from_str_in(&text, "fuzz.yaml", std::path::Path::new("/"));
});
