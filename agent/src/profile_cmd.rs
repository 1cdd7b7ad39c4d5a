//! `shadowtap-agent profile`: a request-profile document from a capture (the replay path's
//! decoder, tracker and models) or from a running agent's API.

use std::{io::Write as _, path::PathBuf};

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
        Some(id) => format!(
            "/v1/resources/{}/profile",
            shadowtap_core::http_client::percent_encode(id)
        ),
        None => "/v1/profile".to_owned(),
    };
    let body = shadowtap_core::http_client::get(url, &path)?;
    ProfileDocument::from_json(&body).with_context(|| format!("profile from {url}{path}"))
}
