//! The README's shell blocks use only options the binaries accept, so that the quick start
//! cannot drift from the binaries either.

use shadowtap_tests::support::workspace_root;

use super::{check_flags, cli, read, split_command};

/// The commands of the README's `sh` blocks: continuation lines joined, comments cut.
fn readme_commands() -> Vec<String> {
    let text = read(&workspace_root().join("README.md"));
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut current = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = line.split(" #").next().unwrap_or_default().trim_end();
        if let Some(head) = code.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(code);
            commands.push(std::mem::take(&mut current));
        }
    }
    commands
}

#[test]
fn readme_commands_use_options_the_binaries_accept() {
    let mut checked = 0;
    for command in readme_commands() {
        // `sudo env PATH=$PATH shadowtap-agent …` and pipes into other tools.
        let words: Vec<String> = split_command(&command)
            .into_iter()
            .skip_while(|w| w == "sudo" || w == "env" || w.contains('='))
            .take_while(|w| w != "|")
            .collect();
        let Some(name) = words.first().filter(|w| w.starts_with("shadowtap-")) else {
            continue;
        };
        let sub = (name == "shadowtap-agent").then(|| words[1].as_str());
        let cli = cli(name, sub);
        check_flags(&cli, &words[1..], &format!("README: {command}"));
        checked += 1;
    }
    // The quick start: run, replay, profile, backtest, loadgen, collector, provisioner.
    assert!(
        checked >= 8,
        "only {checked} shadowtap commands found in the README"
    );
}
