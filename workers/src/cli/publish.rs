//! `fleet publish`: send one invalidation request or one source event, with a
//! publisher confirm, for producers and for testing.
//!
//! A request goes through the dispatcher's own checks ([`dispatcher::check`]:
//! size, decoding, time, allow-list, bounds) before it leaves, so what the
//! dispatcher would dead-letter is refused here with the same class and
//! reason, and nothing is sent. Flags are judged like a body: `--type price`
//! is refused as `"invalidationType": "price"` would be. Its routing key is
//! its type in lower snake case.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Args;
use fleet_shared::broker::Outgoing;
use fleet_shared::config::Config;
use fleet_shared::message::{new_request_id, IndexKey, InvalidationType};
use fleet_shared::runtime::HandlerError;
use fleet_shared::source::SourceKind;
use fleet_shared::topology::names;
use serde_json::Value;

use crate::dispatcher;

const AFTER: &str = "\
Examples:
  fleet publish --type PRICE --param brand.id --ids 1,2 --index-keys trTR,deDE
                                             (types and index keys spelt as in a body)
  fleet publish --file request.json            (or --file - to read standard input)
  fleet publish --source stock --json '{\"contentId\": 1, \"event\": \"created\", \"quantity\": 5}'

A request's id is printed on standard output (one is generated when absent).";

/// What to publish: a request (from flags, a file or inline JSON) or, with
/// `--source`, a source event (from a file or inline JSON).
#[derive(Debug, Args)]
#[command(after_help = AFTER)]
pub struct PublishArgs {
    /// Send a source event to `source.<KIND>` instead of a request
    /// (price, stock, promotion, assortment, product, translation).
    #[arg(long, value_name = "KIND", conflicts_with = "invalidation_type")]
    pub source: Option<String>,
    /// Read the message from a JSON file; `-` reads standard input.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["json", "invalidation_type"])]
    pub file: Option<PathBuf>,
    /// The message as inline JSON.
    #[arg(long, value_name = "JSON", conflicts_with = "invalidation_type")]
    pub json: Option<String>,
    /// Invalidation type of a request built from flags (PRICE, STOCK, BRAND_CATEGORY, …).
    #[arg(long = "type", value_name = "TYPE", requires = "ids")]
    pub invalidation_type: Option<String>,
    /// The index field the ids belong to (`id` for content ids).
    #[arg(
        long,
        value_name = "FIELD",
        default_value = "id",
        requires = "invalidation_type"
    )]
    pub param: String,
    /// Comma-separated ids.
    #[arg(
        long,
        value_name = "IDS",
        value_delimiter = ',',
        requires = "invalidation_type"
    )]
    pub ids: Vec<i64>,
    /// Comma-separated index keys (every configured key when omitted).
    #[arg(
        long,
        value_name = "KEYS",
        value_delimiter = ',',
        requires = "invalidation_type"
    )]
    pub index_keys: Vec<String>,
    /// The request id to use instead of a generated one.
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
}

/// Validates and publishes; prints the request id of a request.
pub async fn run(config: &Config, args: PublishArgs) -> anyhow::Result<ExitCode> {
    match &args.source {
        Some(kind) => {
            let kind: SourceKind = kind.parse().map_err(anyhow::Error::msg)?;
            let body = read_body(&args)?.ok_or_else(|| {
                anyhow::anyhow!("a source event needs --file FILE, --file - or --json '{{…}}'")
            })?;
            let requests = kind
                .to_requests(
                    &body,
                    config.ingest.critical_stock,
                    &config.dispatcher.index_keys,
                    config.dispatcher.max_ids,
                )
                .with_context(|| {
                    format!(
                        "not a valid {} source event; nothing was sent",
                        kind.as_str()
                    )
                })?;
            let exchange = kind.queue();
            send(config, &exchange, "", &body).await?;
            eprintln!(
                "Published a {} event to exchange {exchange} (it becomes {} request(s)).",
                kind.as_str(),
                requests.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let mut value = match read_body(&args)? {
                Some(body) => {
                    // The dispatcher's own checks, on the body as given.
                    dispatcher::check(config, &body, None).map_err(|e| refused(e, None))?;
                    // Checked above, so it is a JSON object.
                    serde_json::from_slice::<Value>(&body)?
                }
                None => from_flags(&args)?,
            };
            let id = match (
                &args.request_id,
                value.get("requestId").and_then(Value::as_str),
            ) {
                (Some(given), _) => given.clone(),
                (None, Some(existing)) => existing.to_string(),
                (None, None) => new_request_id(),
            };
            value["requestId"] = Value::String(id.clone());
            let body = serde_json::to_vec(&value)?;
            // Check the final body: it is exactly what the dispatcher will read.
            let request = dispatcher::check(config, &body, None)
                .map_err(|e| refused(e, spelling_hint(&args)))?
                .request;
            let routing_key = request.routing_key();
            send(config, names::REQUESTS, &routing_key, &body).await?;
            eprintln!(
                "Published request {id} ({} on {}, {} id(s)) to exchange {} with routing key {routing_key}.",
                request.invalidation_type,
                request.parameter_name,
                request.parameter_ids.len(),
                names::REQUESTS
            );
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A request the dispatcher would dead-letter: refused here with the class
/// and reason the dead letter would carry, and nothing is sent.
fn refused(e: HandlerError, hint: Option<String>) -> anyhow::Error {
    let hint = hint.map(|h| format!(" ({h})")).unwrap_or_default();
    anyhow::anyhow!(
        "refused: the dispatcher would dead-letter this request as {}{hint}; nothing was sent",
        e
    )
}

/// How a `--type` or `--index-keys` value is spelt on the wire, when it was
/// given in another case (`price` for `PRICE`): the body accepts only the
/// wire spelling, and so does this command.
fn spelling_hint(args: &PublishArgs) -> Option<String> {
    let mut hints = Vec::new();
    if let Some(raw) = &args.invalidation_type {
        if let Ok(t) = raw.trim().parse::<InvalidationType>() {
            if t.as_str() != raw {
                hints.push(format!("write --type {t}"));
            }
        }
    }
    let keys: Vec<String> = args
        .index_keys
        .iter()
        .filter_map(|raw| match raw.trim().parse::<IndexKey>() {
            Ok(k) if k.as_str() != raw => Some(format!("{raw} is {k}")),
            _ => None,
        })
        .collect();
    if !keys.is_empty() {
        hints.push(format!(
            "index keys are written trTR, deDE, …: {}",
            keys.join(", ")
        ));
    }
    (!hints.is_empty()).then(|| hints.join("; "))
}

/// The body of `--file` / `--json`, if either was given.
fn read_body(args: &PublishArgs) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(json) = &args.json {
        return Ok(Some(json.as_bytes().to_vec()));
    }
    let Some(path) = &args.file else {
        return Ok(None);
    };
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read the message from standard input")?;
        return Ok(Some(buf));
    }
    std::fs::read(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map(Some)
}

/// A request from `--type`, `--param`, `--ids` and `--index-keys`, with the
/// values as given: the dispatcher's checks judge them as they would judge a
/// body (`--type price` is refused like `"invalidationType": "price"`).
fn from_flags(args: &PublishArgs) -> anyhow::Result<Value> {
    let Some(t) = &args.invalidation_type else {
        bail!("nothing to publish: give --type/--param/--ids, --file FILE, --file - or --json '{{…}}'")
    };
    let keys: Vec<&str> = args.index_keys.iter().map(|k| k.trim()).collect();
    Ok(serde_json::json!({
        "v": fleet_shared::message::CURRENT_VERSION,
        "parameterIds": args.ids,
        "parameterName": args.param,
        "invalidationType": t.trim(),
        "indexKeys": keys,
    }))
}

/// Publishes over a named `cli` connection and waits for the confirm.
async fn send(
    config: &Config,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) -> anyhow::Result<()> {
    let ctx = crate::app::context(&Arc::new(config.clone()), "cli").await?;
    ctx.publisher
        .publish(Outgoing::json(exchange, routing_key, body))
        .await
        .with_context(|| {
            format!(
                "publishing to exchange {exchange} failed (has the topology been applied? `fleet topology apply`)"
            )
        })?;
    Ok(())
}
