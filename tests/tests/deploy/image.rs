//! deploy/Containerfile: its final stage built with podman, offline, and each binary run in
//! the image.

use std::collections::BTreeSet;
use std::process::Command;

use shadowtap_tests::scenario::{must, work_dir};
use shadowtap_tests::support::{require_tool, workspace_root};

use super::{BINARIES, binary, cli, deploy_dir, port_of, read, run};

/// Removes the test's image on every exit path.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.0])
            .output();
    }
}

#[test]
fn containerfile_matches_the_repository_and_the_binaries() {
    let text = read(&deploy_dir().join("Containerfile"));
    // EXPOSE names the ports the binaries listen on by default.
    let exposed: BTreeSet<u16> = text
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(str::split_whitespace)
        .map(|p| p.parse().expect("an EXPOSE port"))
        .collect();
    let listening: BTreeSet<u16> = BINARIES
        .iter()
        .filter_map(|(name, sub, flag)| {
            let flag = (*flag)?.trim_start_matches("--");
            Some(port_of(
                cli(name, *sub)
                    .defaults
                    .get(flag)
                    .expect("a default address"),
            ))
        })
        .collect();
    assert_eq!(
        exposed, listening,
        "Containerfile EXPOSE vs the binaries' default ports"
    );
    // COPY sources from the build context exist; the final stage copies the build stage's
    // root file system, which rootfs.sh assembles.
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        for source in &words[1..words.len() - 1] {
            let path = workspace_root().join(source);
            assert!(path.exists(), "{line}: {} missing", path.display());
        }
    }
    assert!(
        text.contains("COPY --from=build /rootfs/ /"),
        "final stage from /rootfs"
    );
    assert!(
        text.contains("deploy/container/rootfs.sh /rootfs target/release"),
        "rootfs step"
    );
    assert!(
        text.contains("cargo xtask build-ebpf"),
        "the eBPF object is built before the agent"
    );
}

#[test]
fn containerfile_builds_a_minimal_image_that_runs_the_binaries() {
    let containerfile = deploy_dir().join("Containerfile");
    let podman = must(require_tool("podman"));
    let dir = work_dir("deploy-image");
    let bins = dir.path().join("bin");
    std::fs::create_dir(&bins).expect("creating bin/");
    for (name, _, _) in BINARIES {
        std::fs::copy(binary(name), bins.join(name)).expect("copying a binary");
    }
    // The build stage needs the network (a Debian base image, rustup, crates); the final
    // stage does not. Build the build stage's output here with the same script and hand it
    // in under the stage's name: podman then skips that stage.
    let stage = dir.path().join("stage");
    run(Command::new(deploy_dir().join("container/rootfs.sh"))
        .arg(stage.join("rootfs"))
        .arg(&bins));
    let context = dir.path().join("context");
    std::fs::create_dir(&context).expect("creating the context");
    let image = Image(format!(
        "localhost/shadowtap-test-{}:latest",
        std::process::id()
    ));
    run(Command::new(&podman)
        .args(["build", "--network=none", "--build-context"])
        .arg(format!("build={}", stage.display()))
        .arg("-f")
        .arg(&containerfile)
        .args(["-t", &image.0])
        .arg(&context));
    let size: u64 = String::from_utf8_lossy(
        &run(Command::new(&podman).args(["image", "inspect", "--format", "{{.Size}}", &image.0]))
            .stdout,
    )
    .trim()
    .parse()
    .expect("an image size");
    println!(
        "image {}: {:.1} MiB",
        image.0,
        size as f64 / f64::from(1 << 20)
    );
    for (name, _, _) in BINARIES {
        // runc, and limits no higher than the caller's: this machine's sandbox denies crun
        // (cgroup v1/v2 hybrid) and raising limits (no CAP_SYS_RESOURCE). The image does not
        // care which runtime runs it.
        let out = run(Command::new(&podman)
            .args(["--runtime", "runc", "run", "--rm", "--network", "none"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .args([
                "--entrypoint",
                &format!("/usr/local/bin/{name}"),
                &image.0,
                "--help",
            ]));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains(&format!("Usage: {name}")),
            "{name} --help in the image: {said}"
        );
        println!("in the image: {name} --help works");
    }
}
