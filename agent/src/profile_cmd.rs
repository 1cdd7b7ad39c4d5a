//! `shadowtap-agent profile`: a request-profile document from a capture (the replay path's
//! decoder, tracker and models) or from a running agent's API.

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use shadowtap_core::profile::ProfileDocument;

use crate::{
    model::{ModelConfig, ModelStore},
    replay::{ReplayOptions, replay_pcap_events},
};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("from").required(true).args(["pcap", "api"])))]
pub struct ProfileArgs {
    /// Learn from this capture (pcap or pcapng).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Fetch from a running agent's API, e.g. http://127.0.0.1:9464.
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
    /// Only this resource (its id as in /v1/resources, e.g. shop.example@10.0.0.1:80).
    #[arg(long, value_name = "ID")]
    pub resource: Option<String>,
    /// With --pcap: HTTP payload bytes read per request head, as a live agent's `--snaplen`
    /// (default: the agent's default, so that a capture and a live agent profile the same
    /// traffic alike); 0 reads the whole captured head.
    #[arg(long, default_value_t = shadowtap_common::DEFAULT_SNAPLEN)]
    pub snaplen: u16,
    /// Where to write the document ("-" for stdout).
    #[arg(long, value_name = "FILE|-", default_value = "-")]
    pub out: String,
}

pub fn run(args: &ProfileArgs) -> Result<()> {
    let doc = match (&args.pcap, &args.api) {
        (Some(pcap), _) => from_pcap(
            pcap,
            args.resource.as_deref(),
            (args.snaplen > 0).then_some(args.snaplen),
        )?,
        (None, Some(url)) => from_api(url, args.resource.as_deref())?,
        (None, None) => bail!("give --pcap FILE or --api URL"),
    };
    if let Some(id) = &args.resource
        && doc.resources.is_empty()
    {
        bail!("no requests to resource {id:?} in the source");
    }
    let text = serde_json::to_string_pretty(&doc).context("encoding the profile")?;
    if args.out == "-" {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}").context("writing the profile to stdout")?;
    } else {
        std::fs::write(&args.out, text + "\n")
            .with_context(|| format!("writing the profile to {}", args.out))?;
    }
    tracing::info!(resources = doc.resources.len(), out = %args.out, "profile written");
    Ok(())
}

/// The profile of a capture, as a live agent with `snaplen` (`None`: whole heads) would have
/// learned it from the same traffic.
pub fn from_pcap(
    path: &std::path::Path,
    resource: Option<&str>,
    snaplen: Option<u16>,
) -> Result<ProfileDocument> {
    let mut model = ModelStore::new(ModelConfig::default()).context("model configuration")?;
    let options = ReplayOptions {
        snaplen,
        ..ReplayOptions::default()
    };
    replay_pcap_events(path, &options, &mut |event| {
        model.observe(event);
        Ok(())
    })?;
    model.flush();
    Ok(model.profile_document(resource, &format!("pcap:{}", path.display())))
}

/// `GET /v1/profile` (or `/v1/resources/{id}/profile`) of a running agent.
pub fn from_api(url: &str, resource: Option<&str>) -> Result<ProfileDocument> {
    let path = match resource {
        Some(id) => format!("/v1/resources/{}/profile", percent_encode(id)),
        None => "/v1/profile".to_owned(),
    };
    let body = http_get(url, &path)?;
    ProfileDocument::from_json(&body).with_context(|| format!("profile from {url}{path}"))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.1 GET of `path` on `base` (`http://host:port`), body on 200, the server's
/// error otherwise. The agent's API is local and small: no client library needed.
pub fn http_get(base: &str, path: &str) -> Result<String> {
    let authority = base
        .strip_prefix("http://")
        .with_context(|| format!("--api {base:?}: only http://host:port is supported"))?
        .trim_end_matches('/');
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolves to no address"))?;
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {authority}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .context("setting a read timeout")?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("sending GET {path} to {authority}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to GET {path} from {authority}"))?;
    let text = String::from_utf8(raw).context("answer is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: answer has no HTTP head"))?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        bail!("GET {base}{path}: HTTP {status}: {}", body.trim());
    }
    Ok(body.to_owned())
}
