//! The Kubernetes manifests (deploy/k8s) against the binaries: flags, ports, mounts,
//! capabilities, the disruption budget.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_yaml::Value;
use shadowtap_tests::support::workspace_root;

use super::{
    BINARIES, Cli, agent_capabilities_from_unit, check_flags, cli, deploy_dir, port_of, read,
};

fn manifests() -> Vec<Value> {
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(deploy_dir().join("k8s"))
        .expect("reading deploy/k8s")
        .map(|e| e.expect("a deploy/k8s entry").path())
        .collect();
    files.sort();
    for file in files {
        let text = read(&file);
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if !value.is_null() {
                docs.push(value);
            }
        }
    }
    docs
}

fn text<'a>(v: &'a Value, path: &str) -> &'a str {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {path} in {v:?}"))
}

fn list<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

fn strings(values: &[Value]) -> Vec<String> {
    values
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| text(d, "kind") == kind).collect()
}

#[test]
fn kubernetes_manifests_match_the_binaries() {
    let docs = manifests();
    let namespace = of_kind(&docs, "Namespace");
    assert_eq!(namespace.len(), 1, "one Namespace");
    let ns = text(namespace[0], "metadata.name");
    for doc in docs.iter().filter(|d| text(d, "kind") != "Namespace") {
        assert_eq!(
            text(doc, "metadata.namespace"),
            ns,
            "{}",
            text(doc, "metadata.name")
        );
    }
    // Neither the agent nor the collector calls the API server: no RBAC, no token.
    for kind in ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"] {
        assert!(
            of_kind(&docs, kind).is_empty(),
            "a {kind}, but nothing uses the API server"
        );
    }
    let accounts: BTreeSet<&str> = of_kind(&docs, "ServiceAccount")
        .iter()
        .map(|a| text(a, "metadata.name"))
        .collect();
    for account in of_kind(&docs, "ServiceAccount") {
        assert_eq!(
            account.get("automountServiceAccountToken"),
            Some(&Value::Bool(false))
        );
    }

    let mut workloads = of_kind(&docs, "DaemonSet");
    workloads.extend(of_kind(&docs, "Deployment"));
    let mut deployed = BTreeSet::new();
    for workload in workloads {
        let pod = workload["spec"]["template"]["spec"].clone();
        assert!(
            accounts.contains(text(&pod, "serviceAccountName")),
            "service account"
        );
        assert_eq!(
            pod.get("automountServiceAccountToken"),
            Some(&Value::Bool(false))
        );
        for container in list(&pod, "containers") {
            let command = strings(list(container, "command"));
            let name = Path::new(&command[0])
                .file_name()
                .expect("a binary")
                .to_string_lossy();
            let (name, sub, metrics_flag) = *BINARIES
                .iter()
                .find(|b| b.0 == name)
                .expect("one of the deployed binaries");
            deployed.insert(name);
            // The image the Containerfile's documented build command tags.
            let image = text(container, "image");
            let containerfile = read(&deploy_dir().join("Containerfile"));
            assert!(
                containerfile.contains(&format!("-t {image} ")),
                "{name}: image {image} is not what deploy/Containerfile says to build"
            );
            let what = format!("{} {name}", text(workload, "kind"));
            let args = strings(list(container, "args"));
            if let Some(sub) = sub {
                assert_eq!(
                    args.first().map(String::as_str),
                    Some(sub),
                    "{what}: subcommand"
                );
            }
            let env: BTreeSet<String> = list(container, "env")
                .iter()
                .map(|e| text(e, "name").to_owned())
                .collect();
            for arg in &args {
                for var in arg.split("$(").skip(1).filter_map(|s| s.split(')').next()) {
                    assert!(env.contains(var), "{what}: $({var}) is not in env");
                }
            }
            let cli = cli(name, sub);
            let values = check_flags(&cli, &args, &what);
            check_ports(&pod, container, &cli, &values, metrics_flag, &what);
            check_mounts(&docs, &pod, container, &values, &what);
            if name == "shadowtap-agent" {
                check_agent_host_access(&pod, container, &what);
            }
            check_security(&pod, container, name, &what);
        }
    }
    let expected: BTreeSet<&str> = ["shadowtap-agent", "shadowtap-collector"].into();
    assert_eq!(deployed, expected, "workloads");
    check_disruption_budget(&docs);
}

fn check_ports(
    pod: &Value,
    container: &Value,
    cli: &Cli,
    values: &BTreeMap<String, String>,
    metrics_flag: Option<&str>,
    what: &str,
) {
    let ports: Vec<(Option<&str>, u16)> = list(container, "ports")
        .iter()
        .map(|p| {
            let number = p["containerPort"].as_u64().expect("a containerPort");
            (
                p.get("name").and_then(Value::as_str),
                u16::try_from(number).expect("a port"),
            )
        })
        .collect();
    let Some(flag) = metrics_flag.map(|f| f.trim_start_matches("--")) else {
        assert!(
            ports.is_empty(),
            "{what}: ports {ports:?} but nothing listens"
        );
        return;
    };
    let addr = values
        .get(flag)
        .or(cli.defaults.get(flag))
        .expect("a listen address");
    let listens = port_of(addr);
    assert_eq!(
        ports.iter().map(|p| p.1).collect::<Vec<_>>(),
        [listens],
        "{what}: ports"
    );
    let mut probes = 0;
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let Some(get) = container.get(probe).and_then(|p| p.get("httpGet")) else {
            continue;
        };
        probes += 1;
        let port = match &get["port"] {
            Value::Number(n) => u16::try_from(n.as_u64().expect("a port")).expect("a port"),
            Value::String(name) => {
                ports
                    .iter()
                    .find(|p| p.0 == Some(name.as_str()))
                    .expect("a named port")
                    .1
            }
            other => panic!("{what}: {probe} port {other:?}"),
        };
        assert_eq!(port, listens, "{what}: {probe} port");
        assert_eq!(text(get, "path"), "/healthz", "{what}: {probe} path");
    }
    // A probe comes from the kubelet, outside the pod (or, with the host network, on the
    // node's address): the endpoint must not be bound to loopback.
    let host = &addr[..addr.rfind(':').expect("host:port")];
    assert!(
        probes == 0 || !host.starts_with("127.") && host != "[::1]",
        "{what}: {addr}"
    );
    if pod.get("hostNetwork") == Some(&Value::Bool(true)) {
        assert_ne!(
            host, "0.0.0.0",
            "{what}: host network: bind the node's address, not all"
        );
    }
}

/// Paths given to flags lie in mounts (the root file system is read-only); files read from a
/// ConfigMap are keys of it; the policy ConfigMap is the agent's built-in default policy.
fn check_mounts(
    docs: &[Value],
    pod: &Value,
    container: &Value,
    values: &BTreeMap<String, String>,
    what: &str,
) {
    let volumes = list(pod, "volumes");
    for (flag, value) in values.iter().filter(|(_, v)| v.starts_with('/')) {
        let mount = list(container, "volumeMounts")
            .iter()
            .filter(|m| {
                value.starts_with(&format!("{}/", text(m, "mountPath")))
                    || text(m, "mountPath") == value
            })
            .max_by_key(|m| text(m, "mountPath").len())
            .unwrap_or_else(|| panic!("{what}: --{flag} {value} is in no volume mount"));
        let volume = volumes
            .iter()
            .find(|v| text(v, "name") == text(mount, "name"))
            .expect("the mount's volume");
        let read_only = mount.get("readOnly") == Some(&Value::Bool(true));
        if flag == "policy" {
            let config_map = text(volume, "configMap.name");
            let key = &value[text(mount, "mountPath").len() + 1..];
            let map = of_kind(docs, "ConfigMap")
                .into_iter()
                .find(|m| text(m, "metadata.name") == config_map)
                .unwrap_or_else(|| panic!("{what}: no ConfigMap {config_map}"));
            let default = read(&workspace_root().join("agent/src/runtime/default-policy.toml"));
            let data = map["data"].get(key).and_then(Value::as_str);
            assert_eq!(data, Some(default.as_str()), "{what}: policy {key}");
        } else {
            assert!(
                !read_only,
                "{what}: --{flag} {value} is on a read-only mount"
            );
        }
    }
}

/// The agent sees the node: its network namespace, the kernel's BTF and the host's bpffs, the
/// last two read-only from the host's own paths.
fn check_agent_host_access(pod: &Value, container: &Value, what: &str) {
    assert_eq!(
        pod.get("hostNetwork"),
        Some(&Value::Bool(true)),
        "{what}: hostNetwork"
    );
    for path in ["/sys/kernel/btf", "/sys/fs/bpf"] {
        let mount = list(container, "volumeMounts")
            .iter()
            .find(|m| text(m, "mountPath") == path)
            .unwrap_or_else(|| panic!("{what}: {path} is not mounted"));
        assert_eq!(
            mount.get("readOnly"),
            Some(&Value::Bool(true)),
            "{what}: {path} read-only"
        );
        let volume = list(pod, "volumes")
            .iter()
            .find(|v| text(v, "name") == text(mount, "name"))
            .expect("the mount's volume");
        assert_eq!(
            text(volume, "hostPath.path"),
            path,
            "{what}: {path} from the host"
        );
    }
}

fn check_security(pod: &Value, container: &Value, name: &str, what: &str) {
    let security = &container["securityContext"];
    assert_eq!(
        security.get("allowPrivilegeEscalation"),
        Some(&Value::Bool(false)),
        "{what}"
    );
    assert_eq!(
        security.get("readOnlyRootFilesystem"),
        Some(&Value::Bool(true)),
        "{what}"
    );
    assert_ne!(
        security.get("privileged"),
        Some(&Value::Bool(true)),
        "{what}"
    );
    assert_eq!(
        strings(list(security, "capabilities.drop")),
        ["ALL"],
        "{what}: drop"
    );
    let added: BTreeSet<String> = strings(list(security, "capabilities.add"))
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    if name == "shadowtap-agent" {
        assert_eq!(
            added,
            agent_capabilities_from_unit(),
            "{what}: as its systemd unit"
        );
        assert_eq!(
            pod.get("hostNetwork"),
            Some(&Value::Bool(true)),
            "{what}: host network"
        );
        let btf = list(container, "volumeMounts")
            .iter()
            .find(|m| text(m, "mountPath") == "/sys/kernel/btf")
            .expect("the kernel's BTF mounted");
        assert_eq!(
            btf.get("readOnly"),
            Some(&Value::Bool(true)),
            "{what}: BTF read-only"
        );
    } else {
        assert!(
            added.is_empty(),
            "{what}: {name} needs no capability, adds {added:?}"
        );
        assert_eq!(
            pod["securityContext"].get("runAsNonRoot"),
            Some(&Value::Bool(true))
        );
    }
}

fn check_disruption_budget(docs: &[Value]) {
    let budgets = of_kind(docs, "PodDisruptionBudget");
    assert_eq!(
        budgets.len(),
        1,
        "one PodDisruptionBudget (the collector's)"
    );
    let selector = &budgets[0]["spec"]["selector"]["matchLabels"];
    let collector = of_kind(docs, "Deployment")
        .into_iter()
        .find(|d| &d["spec"]["selector"]["matchLabels"] == selector)
        .expect("the budget selects the collector Deployment");
    let replicas = collector["spec"]["replicas"].as_u64().expect("replicas");
    let min = budgets[0]["spec"]["minAvailable"]
        .as_u64()
        .expect("minAvailable");
    assert!(
        min >= 1 && min < replicas,
        "minAvailable {min} of {replicas} replicas"
    );
}
