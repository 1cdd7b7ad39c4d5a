//! `shadowtap-agent`'s settings from the operator's side (issue 17): `config check` names
//! every bad key of a file; flags beat `SHADOWTAP_*` variables, which beat the file, which
//! beats the defaults; completions and man pages are generated from the command line itself.
//! Runs the real binary; nothing here needs root (every `run` stops before attaching).

use std::{
    path::Path,
    process::{Command, Output},
};

fn agent() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shadowtap-agent"));
    // Only the variables a case sets itself.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SHADOWTAP_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write settings file");
    path
}

#[test]
fn config_check_names_every_bad_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "agent.toml",
        r#"
duration = "soon"
max_clients = 5

[capture]
iface = ["eth0"]
mode = "mirror"
snaplen = 1000
ringbuf_size = 3
flow_entries = -1
colour = "blue"

[model]
max_clients = 0
client_prefix_v6 = 129
lateness = "20m"
no_profiles = true
profile_sample = 4

[publish]
spool_dir = "/var/spool/x"
observation_window = "5s"

[outptu]
events = "-"
"#,
    );
    let out = agent()
        .args(["config", "check"])
        .arg(&file)
        .output()
        .expect("run");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let name = file.display().to_string();
    for key in [
        "duration",
        "max_clients: unknown key (did you mean `model.max_clients`?)",
        "capture.mode",
        "capture.snaplen",
        "capture.ringbuf_size",
        "capture.flow_entries",
        "capture.colour: unknown key",
        "model.max_clients",
        "model.client_prefix_v6",
        "model.lateness",
        "model.profile_sample: contradicts no-profiles",
        "publish.spool_dir",
        "publish.observation_window",
        "outptu: unknown section",
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("{name}: {key}"))),
            "no line for {key:?} in:\n{stderr}"
        );
    }
    assert_eq!(
        stderr.lines().count(),
        14,
        "one line per bad key:\n{stderr}"
    );

    let good = write(
        dir.path(),
        "good.toml",
        "[capture]\niface = [\"eth0\", \"eth1\"]\nmode = \"tap\"\n[model]\nmax_clients = 100000\nlateness = \"2s\"\n",
    );
    let out = agent()
        .args(["config", "check"])
        .arg(&good)
        .output()
        .expect("run");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");

    let broken = write(dir.path(), "broken.toml", "[model\nmax_clients = 1\n");
    let out = agent()
        .args(["config", "check"])
        .arg(&broken)
        .output()
        .expect("run");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not valid TOML"), "{stderr}");
}

/// `run` stops at the first settings problem it can see without root: the `--max-clients`
/// check names the winning layer's value, and with no problem the missing interface is next.
#[test]
fn flags_beat_environment_beat_file_beat_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let zero = write(dir.path(), "zero.toml", "[model]\nmax_clients = 0\n");
    let ten = write(dir.path(), "ten.toml", "[model]\nmax_clients = 10\n");
    let run = |file: Option<&Path>, env: Option<&str>, flag: Option<&str>| {
        let mut cmd = agent();
        cmd.arg("run");
        if let Some(f) = file {
            cmd.arg("--config").arg(f);
        }
        if let Some(v) = env {
            cmd.env("SHADOWTAP_MAX_CLIENTS", v);
        }
        if let Some(v) = flag {
            cmd.args(["--max-clients", v]);
        }
        let out = cmd.output().expect("run");
        assert!(!out.status.success());
        let stderr = text(&out).1;
        if stderr.contains("invalid option --max-clients (`model.max_clients` in a settings file)")
        {
            "limit"
        } else if stderr.contains("no interface to attach to") {
            "no interface"
        } else {
            panic!("unexpected failure: {stderr}")
        }
    };
    // Defaults are valid; the file overrides them; the environment the file; a flag all.
    assert_eq!(run(None, None, None), "no interface");
    assert_eq!(run(Some(&zero), None, None), "limit");
    assert_eq!(run(Some(&zero), Some("10"), None), "no interface");
    assert_eq!(run(Some(&ten), Some("0"), None), "limit");
    assert_eq!(run(Some(&ten), Some("0"), Some("10")), "no interface");
    assert_eq!(run(Some(&zero), Some("10"), Some("0")), "limit");
    // SHADOWTAP_CONFIG names the file like --config.
    let mut cmd = agent();
    let out = cmd
        .arg("run")
        .env("SHADOWTAP_CONFIG", &zero)
        .output()
        .expect("run");
    assert!(text(&out).1.contains("--max-clients"), "{}", text(&out).1);

    // A file-only interface reaches the attach path (which names it).
    let iface = write(
        dir.path(),
        "iface.toml",
        "[capture]\niface = [\"stap-no-such0\"]\n",
    );
    let out = agent()
        .arg("run")
        .arg("--config")
        .arg(&iface)
        .output()
        .expect("run");
    let stderr = text(&out).1;
    assert!(
        stderr.contains("unknown network interface \"stap-no-such0\""),
        "{stderr}"
    );

    // A bad file stops `run` too, naming every bad key.
    let bad = write(
        dir.path(),
        "bad.toml",
        "[model]\nmax_clientz = 1\n[capture]\nsnaplen = \"x\"\n",
    );
    let out = agent()
        .arg("run")
        .arg("--config")
        .arg(&bad)
        .output()
        .expect("run");
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("model.max_clientz: unknown key"),
        "{stderr}"
    );
    assert!(
        stderr.contains("capture.snaplen: invalid value"),
        "{stderr}"
    );
}

/// The subcommands `--help` lists.
fn subcommands() -> Vec<String> {
    let out = agent().arg("--help").output().expect("run");
    let help = text(&out).0;
    let list: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    assert!(list.len() >= 7, "{help}");
    list
}

#[test]
fn man_pages_and_completions_cover_every_subcommand() {
    let commands = subcommands();
    let out = agent().arg("man").output().expect("run");
    let (page, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        page.starts_with(".ie") || page.contains(".TH shadowtap-agent"),
        "{page}"
    );
    for c in &commands {
        assert!(
            page.contains(&format!("shadowtap\\-agent\\-{c}(1)")),
            "root page lacks {c}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = agent()
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out).1);
    for c in &commands {
        let sub = dir.path().join(format!("shadowtap-agent-{c}.1"));
        assert!(sub.is_file(), "no page {}", sub.display());
    }
    let run_page =
        std::fs::read_to_string(dir.path().join("shadowtap-agent-run.1")).expect("run page");
    for needle in ["max\\-clients", "SHADOWTAP_MAX_CLIENTS", "config"] {
        assert!(run_page.contains(needle), "run page lacks {needle}");
    }
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = agent().args(["completions", shell]).output().expect("run");
        let (script, stderr) = text(&out);
        assert!(out.status.success(), "{shell}: {stderr}");
        for c in &commands {
            assert!(script.contains(c.as_str()), "{shell} completion lacks {c}");
        }
        assert!(
            script.contains("max-clients"),
            "{shell} completion lacks run's options"
        );
    }
}
