//! `deploy/` checked against the binaries it runs, so that the two cannot drift apart.
//!
//! - Every flag of every `ExecStart=` (systemd) and container command (Kubernetes) is one the
//!   binary's `--help` lists, for the right subcommand; renaming a flag fails here.
//! - Ports: each container's `containerPort` and probe ports are the port its metrics flag
//!   (or that flag's default, read from `--help`) listens on, on an address a probe reaches.
//! - Capabilities: the agent's DaemonSet adds exactly the capabilities of its systemd unit;
//!   the collector and the provisioner have none. [`agent_runs_with_exactly_its_capabilities`]
//!   runs the real agent as an unprivileged user with those capabilities, and with each one
//!   removed, so the set is both sufficient and minimal.
//! - Paths: every file or directory a flag names is inside a mount (k8s) or a directory the
//!   unit grants (systemd); the policy ConfigMap is the agent's built-in default policy.
//! - `systemd-analyze verify` accepts the units; `systemd-analyze security` scores are printed.
//! - The Containerfile's final stage is built with podman and each binary runs in the image.
//! - The README's commands use only flags the binaries accept.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use shadowtap_tests::agent::workspace_binary;
use shadowtap_tests::bpf::attachments;
use shadowtap_tests::netns::{VethConfig, VethPair};
use shadowtap_tests::process::BackgroundProcess;
use shadowtap_tests::scenario::{must, preflight_net, serial, work_dir};
use shadowtap_tests::support::{require_root, require_tool, workspace_root};
use shadowtap_tests::workdir::WorkDir;

/// The three deployed binaries: name, the subcommand the deployments run, the flag its
/// metrics/health endpoint listens on.
const BINARIES: [(&str, Option<&str>, Option<&str>); 3] = [
    ("shadowtap-agent", Some("run"), Some("--metrics-listen")),
    ("shadowtap-collector", None, Some("--metrics-addr")),
    ("shadowtap-provisioner", None, None),
];

fn binary(name: &str) -> PathBuf {
    let env = format!(
        "SHADOWTAP_{}_BIN",
        name.trim_start_matches("shadowtap-").to_uppercase()
    );
    must(workspace_binary(
        name,
        &env,
        &format!("cargo build -p {name}"),
    ))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What a binary's `--help` (of the deployed subcommand) accepts.
struct Cli {
    flags: BTreeSet<String>,
    defaults: BTreeMap<String, String>,
}

/// The options `name [sub] --help` lists, with their defaults.
fn cli(name: &str, sub: Option<&str>) -> Cli {
    let mut cmd = Command::new(binary(name));
    cmd.args(sub.iter()).arg("--help");
    let help = String::from_utf8_lossy(&run(&mut cmd).stdout).into_owned();
    let mut flags = BTreeSet::new();
    let mut defaults = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('-') {
            current = None;
        }
        // Options and their visible aliases ("[aliases: --output]").
        for word in line.split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']')) {
            if let Some(rest) = word.strip_prefix("--") {
                let flag: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                if !flag.is_empty() {
                    if trimmed.starts_with('-') && current.is_none() {
                        current = Some(flag.clone());
                    }
                    flags.insert(flag);
                }
            }
        }
        if let (Some(flag), Some(at)) = (&current, line.find("[default: ")) {
            let value = &line[at + "[default: ".len()..];
            defaults.insert(
                flag.clone(),
                value[..value.find(']').unwrap_or(value.len())].into(),
            );
        }
    }
    assert!(
        flags.len() >= 2 && flags.contains("help"),
        "no options found in `{name} --help`:\n{help}"
    );
    Cli { flags, defaults }
}

/// `--flag value` and `--flag=value` pairs of `args`, after checking every flag against `cli`.
fn check_flags(cli: &Cli, args: &[String], what: &str) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        if let Some(rest) = args[i].strip_prefix("--") {
            let (flag, inline) = match rest.split_once('=') {
                Some((f, v)) => (f, Some(v.to_owned())),
                None => (rest, None),
            };
            assert!(
                cli.flags.contains(flag),
                "{what}: --{flag} is not an option of the binary (its options: {:?})",
                cli.flags
            );
            let value = inline.or_else(|| {
                args.get(i + 1)
                    .filter(|v| !v.starts_with("--"))
                    .inspect(|_| i += 1)
                    .cloned()
            });
            values.insert(flag.to_owned(), value.unwrap_or_default());
        }
        i += 1;
    }
    values
}

/// The port of `host:port`, `[v6]:port` or `$(VAR):port`.
fn port_of(addr: &str) -> u16 {
    let (_, port) = addr
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("no port in {addr}"));
    port.parse()
        .unwrap_or_else(|e| panic!("port of {addr}: {e}"))
}

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// --- systemd ---------------------------------------------------------------------------

/// A unit file's `[Service]` keys (a key may repeat).
fn service_section(name: &str) -> BTreeMap<String, Vec<String>> {
    let text = read(&deploy_dir().join("systemd").join(format!("{name}.service")));
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = "";
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]"
            && !line.starts_with('#')
            && let Some((k, v)) = line.split_once('=')
        {
            keys.entry(k.into()).or_default().push(v.into());
        }
    }
    keys
}

/// systemd's splitting of a command line: whitespace, with "double" and 'single' quotes.
fn split_command(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                }
                in_word = false;
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unbalanced quote in {line}");
    if in_word {
        words.push(word);
    }
    words
}

fn single<'a>(keys: &'a BTreeMap<String, Vec<String>>, key: &str, unit: &str) -> &'a str {
    match keys.get(key).map(Vec::as_slice) {
        Some([one]) => one,
        other => panic!("{unit}: expected one {key}=, found {other:?}"),
    }
}

fn capability_set(text: &str) -> BTreeSet<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn systemd_units_use_only_flags_and_paths_the_binaries_accept() {
    for (name, sub, metrics_flag) in BINARIES {
        let unit = format!("{name}.service");
        let keys = service_section(name);
        let argv = split_command(single(&keys, "ExecStart", &unit));
        assert_eq!(
            argv[0],
            format!("/usr/local/bin/{name}"),
            "{unit}: ExecStart binary"
        );
        let unit_args = &argv[1..];
        if let Some(sub) = sub {
            assert_eq!(
                unit_args.first().map(String::as_str),
                Some(sub),
                "{unit}: subcommand"
            );
        }
        let cli = cli(name, sub);
        let values = check_flags(&cli, unit_args, &unit);
        if let Some(flag) = metrics_flag {
            let flag = flag.trim_start_matches("--");
            let addr = values
                .get(flag)
                .or(cli.defaults.get(flag))
                .expect("a metrics address");
            assert!(
                addr.starts_with("127.0.0.1:"),
                "{unit}: metrics on {addr}, not loopback"
            );
        }
        // Every path a flag names lies in a directory the unit grants (ProtectSystem=strict
        // makes the rest read-only): /var/lib/<StateDirectory>, /var/log/<LogsDirectory>,
        // /etc/<ConfigurationDirectory>.
        let mut granted: Vec<(String, bool)> = Vec::new();
        for (key, root, writable) in [
            ("StateDirectory", "/var/lib", true),
            ("LogsDirectory", "/var/log", true),
            ("ConfigurationDirectory", "/etc", false),
        ] {
            for dir in keys.get(key).into_iter().flatten() {
                granted.push((format!("{root}/{dir}/"), writable));
            }
        }
        for (flag, value) in &values {
            if !value.starts_with('/') || flag == "haproxy-socket" || flag == "instance-cmd" {
                continue;
            }
            let writes = flag != "policy";
            let ok = granted.iter().any(|(dir, writable)| {
                (value.starts_with(dir.as_str()) || format!("{value}/") == *dir)
                    && (*writable || !writes)
            });
            assert!(
                ok,
                "{unit}: --{flag} {value} is outside the directories it may use {granted:?}"
            );
        }
        // Capabilities: the agent exactly its three, the others none.
        let bounding = capability_set(single(&keys, "CapabilityBoundingSet", &unit));
        let ambient = capability_set(single(&keys, "AmbientCapabilities", &unit));
        assert_eq!(
            bounding, ambient,
            "{unit}: bounding and ambient sets differ"
        );
        if name == "shadowtap-agent" {
            assert_eq!(bounding, agent_capabilities_from_unit(), "{unit}");
        } else {
            assert!(
                bounding.is_empty(),
                "{unit}: {name} needs no capability, has {bounding:?}"
            );
        }
        for (key, value) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("DynamicUser", "yes"),
        ] {
            assert_eq!(single(&keys, key, &unit), value, "{unit}: {key}");
        }
    }
}

fn agent_capabilities_from_unit() -> BTreeSet<String> {
    let keys = service_section("shadowtap-agent");
    capability_set(single(
        &keys,
        "AmbientCapabilities",
        "shadowtap-agent.service",
    ))
}

#[test]
fn systemd_analyze_verifies_the_units_and_scores_them() {
    let analyze = must(require_tool("systemd-analyze"));
    let dir = work_dir("deploy-units");
    // verify checks that ExecStart's binary exists: point it at the binaries built here.
    let mut units = Vec::new();
    for (name, _, _) in BINARIES {
        let text = read(&deploy_dir().join("systemd").join(format!("{name}.service")));
        let built = binary(name);
        let text = text.replace(&format!("/usr/local/bin/{name}"), &built.to_string_lossy());
        let path = dir.path().join(format!("{name}.service"));
        std::fs::write(&path, text).expect("writing a unit copy");
        units.push(path);
    }
    let out = run(Command::new(&analyze).arg("verify").args(&units));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify exits 0 on unknown keys and bad values (it only warns): any output is a failure.
    assert!(said.trim().is_empty(), "systemd-analyze verify:\n{said}");
    for unit in &units {
        let out = run(Command::new(&analyze)
            .args(["security", "--offline=true"])
            .arg(unit));
        let text = String::from_utf8_lossy(&out.stdout);
        let summary = text.lines().last().unwrap_or_default();
        println!("{summary}");
        let score: f64 = summary
            .split(": ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no exposure score in {summary}"));
        // 1.9 for the agent (it holds three capabilities), 1.2 and 1.6 for the others; a
        // unit that loses its sandboxing crosses 2.5.
        assert!(
            score <= 2.5,
            "{}: exposure {score} > 2.5\n{text}",
            unit.display()
        );
    }
}

#[path = "deploy/k8s.rs"]
mod k8s;

#[path = "deploy/image.rs"]
mod image;

#[path = "deploy/readme.rs"]
mod readme;

// --- the agent's capabilities, for real --------------------------------------------------

/// Runs `shadowtap-agent run` as uid/gid 65534 holding only `caps` (ambient, inheritable and
/// bounding), in a fresh namespace pair; `Ok` once XDP and tc egress are attached, `Err` with
/// the agent's stderr if it exits first.
fn agent_with_capabilities(caps: &BTreeSet<String>, label: &str) -> Result<(), String> {
    let pair = must(VethPair::create(VethConfig {
        ipv6: false,
        ..VethConfig::default()
    }));
    // World-readable (0755), with a copy of the binary: the agent runs as nobody here.
    let dir = WorkDir::create(&format!("stap-{label}-"));
    let agent = dir.0.join("shadowtap-agent");
    std::fs::copy(binary("shadowtap-agent"), &agent).expect("copying the agent");
    // setpriv's syntax: "-all,+bpf,+net_admin".
    let set = std::iter::once("-all".to_owned())
        .chain(
            caps.iter()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = pair.server.command(must(require_tool("setpriv")));
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args([format!("--inh-caps={set}"), format!("--ambient-caps={set}")])
        .arg(format!("--bounding-set={set}"))
        .arg("--")
        .arg(&agent)
        .args([
            "run",
            "--iface",
            &pair.server_if,
            "--mode",
            "host",
            "--xdp-mode",
            "skb",
        ])
        .args(["--metrics-listen", "off", "--duration", "30"]);
    let mut process = must(BackgroundProcess::spawn(cmd, "agent", &dir.0));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = must(process.try_wait()) {
            return Err(format!(
                "agent exited ({status}): {}",
                process.stderr_tail()
            ));
        }
        let found = must(attachments(&pair.server, &pair.server_if));
        if !found.xdp.is_empty() && found.has_tc_egress() {
            let status = must(process.stop(libc::SIGTERM, Duration::from_secs(10)));
            assert!(
                status.success(),
                "agent stopped with {status}: {}",
                process.stderr_tail()
            );
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "agent not attached: {}",
            process.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn agent_runs_with_exactly_its_capabilities() {
    must(require_root());
    preflight_net();
    let _serial = serial();
    let caps = agent_capabilities_from_unit();
    if let Err(e) = agent_with_capabilities(&caps, "deploy-caps") {
        panic!("the agent does not run with its unit's capabilities {caps:?}: {e}");
    }
    for missing in &caps {
        let mut fewer = caps.clone();
        fewer.remove(missing);
        let result = agent_with_capabilities(&fewer, "deploy-caps-less");
        assert!(
            result.is_err(),
            "the agent runs without {missing}: drop it from deploy/"
        );
        let said = result.err().unwrap_or_default();
        let why = said
            .lines()
            .find(|l| l.contains("error") || l.contains("prohibited"));
        println!("without {missing}: {}", why.unwrap_or(&said));
    }
}
