//! `shadowtap-collector`'s settings from the operator's side (issue 17): `config check` names
//! every bad key of a file; the file, `SHADOWTAP_*` variables and flags layer in that order;
//! man pages and completions cover every subcommand. Nothing here reaches a broker.

use std::{
    path::Path,
    process::{Command, Output},
};

fn collector() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shadowtap-collector"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SHADOWTAP_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
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
        "collector.toml",
        r#"
metrics_addr = "nowhere"
[kafka]
kafka_brokers = "127.0.0.1:9092"
partitions = 0
kafka_property = ["novalue"]
session_timeout = "soon"
[merge]
merge_wait = "10s"
idle_close = "5s"
top_k = 0
[decision]
policy = "/nonexistent/policy.toml"
"#,
    );
    let out = collector()
        .args(["config", "check"])
        .arg(&file)
        .output()
        .expect("run");
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let name = file.display().to_string();
    for key in [
        "metrics_addr",
        "kafka.partitions",
        "kafka.kafka_property",
        "kafka.session_timeout",
        "merge.idle_close: contradicts merge-wait",
        "merge.top_k",
        "decision.policy",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{name}: {key}"))),
            "no line for {key:?} in:\n{text}"
        );
    }
    assert_eq!(text.lines().count(), 7, "one line per bad key:\n{text}");

    let good = write(
        dir.path(),
        "good.toml",
        "[kafka]\nkafka_brokers = \"b:9092\"\n[merge]\nmerge_wait = \"1s\"\n",
    );
    let out = collector()
        .args(["config", "check"])
        .arg(&good)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn file_environment_and_flags_layer_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "c.toml", "[merge]\ntop_k = 0\n");
    let top_k_rejected =
        |out: &Output| stderr(out).contains("invalid option --top-k (`merge.top_k`");
    // The file's 0 is used over the default, and `--kafka-brokers`/`--policy` are still required.
    let out = collector()
        .arg("--config")
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(top_k_rejected(&out), "{}", stderr(&out));
    assert!(stderr(&out).contains("--kafka-brokers"), "{}", stderr(&out));
    let out = collector()
        .arg("--config")
        .arg(&file)
        .env("SHADOWTAP_TOP_K", "5")
        .output()
        .expect("run");
    assert!(!top_k_rejected(&out), "{}", stderr(&out));
    let out = collector()
        .arg("--config")
        .arg(&file)
        .env("SHADOWTAP_TOP_K", "5")
        .args(["--top-k", "0"])
        .output()
        .expect("run");
    assert!(top_k_rejected(&out), "{}", stderr(&out));
}

#[test]
fn man_pages_and_completions_cover_every_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = collector()
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let root =
        std::fs::read_to_string(dir.path().join("shadowtap-collector.1")).expect("root page");
    for c in ["config", "completions", "man"] {
        assert!(
            root.contains(&format!("shadowtap\\-collector\\-{c}(1)")),
            "root page lacks {c}"
        );
        assert!(
            dir.path()
                .join(format!("shadowtap-collector-{c}.1"))
                .is_file()
        );
    }
    assert!(
        root.contains("SHADOWTAP_KAFKA_BROKERS"),
        "env variables in the page"
    );
    let out = collector()
        .args(["completions", "bash"])
        .output()
        .expect("run");
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("--merge-wait") && script.contains("completions"),
        "{script}"
    );
}
