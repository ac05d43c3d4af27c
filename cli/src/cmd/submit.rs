//! `fleetmesh submit`: send a task to a running node and print the verified result.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use fleetmesh_api::{Phase, SubmitBody, SubmitRequest};

use super::query::ApiArgs;

#[derive(Args)]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// Model id (hex); default: the embedded digits model.
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// Input file (the model's input tensor as little-endian f32).
    #[arg(long, conflicts_with = "digits_sample")]
    pub(crate) input: Option<PathBuf>,
    /// Use sample N of the embedded digits test set as input.
    #[arg(long, conflicts_with = "digits_samples")]
    pub(crate) digits_sample: Option<usize>,
    /// A batch of samples of the embedded digits test set (e.g. `0,1,2`), run under one award
    /// and verified as one result; each output is checked alone against the signed root.
    #[arg(long, value_delimiter = ',', conflicts_with = "input")]
    pub(crate) digits_samples: Option<Vec<usize>>,
    /// With --input: the file holds this many inputs of the model's size, end to end, run as
    /// one batch task (at most 256).
    #[arg(long, requires = "input", value_parser = clap::value_parser!(u16).range(1..=i64::from(fleetmesh_protocol::batch::MAX_BATCH)))]
    pub(crate) batch: Option<u16>,
    /// For a model with float (f32) outputs: workers agree when each element differs by at
    /// most this many millionths of the larger value, or absolutely below 1 (1000: 0.1 %),
    /// and the label is the same. At most 100000. Default: bit for bit.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=i64::from(fleetmesh_protocol::output::MAX_TOLERANCE)))]
    pub(crate) tolerance: Option<u32>,
    /// Workers (k).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=i64::from(fleetmesh_protocol::limits::MAX_REDUNDANCY)))]
    pub(crate) redundancy: Option<u8>,
    /// Max seconds to wait for the result.
    #[arg(long, default_value_t = 60)]
    pub(crate) timeout_secs: u64,
    /// Print the task as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn run(args: SubmitArgs) -> Result<()> {
    use base64::Engine;
    let mut body = SubmitBody {
        params: SubmitRequest {
            model: args.model.clone(),
            redundancy: args.redundancy,
            batch: args.batch,
            tolerance: args.tolerance,
            ..SubmitRequest::default()
        },
        ..SubmitBody::default()
    };
    match (&args.input, args.digits_sample, &args.digits_samples) {
        (Some(path), _, _) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            body.input_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        (None, Some(i), _) => body.digits_sample = Some(i),
        (None, None, Some(list)) => body.digits_samples = Some(list.clone()),
        (None, None, None) => bail!("give --input FILE, --digits-sample N or --digits-samples N,M,..."),
    }
    let client = args.api.client(Duration::from_secs(30))?;
    let sub = client.submit(&body).await.map_err(|e| anyhow::anyhow!("submit refused: {e}"))?;
    eprintln!("submitted task {}", sub.task_id);
    let view = client.wait(&sub.task_id, Duration::from_secs(args.timeout_secs)).await?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        say!("task     {}", view.task_id);
        say!("phase    {:?}", view.phase);
        if let Some(l) = view.label {
            let expected = sub.expected_label.map(|e| format!(" (expected {e})")).unwrap_or_default();
            say!("label    {l}{expected}");
        }
        if let Some(d) = &view.output_digest {
            match view.batch {
                Some(n) => say!("output   merkle root over {n} outputs {d}"),
                None => say!("output   blake3 {d}"),
            }
        }
        for item in &view.items {
            let label = item.label.map_or_else(|| "-".to_owned(), |l| l.to_string());
            let expected = sub
                .expected_labels
                .get(item.index as usize)
                .map(|e| format!(" (expected {e})"))
                .unwrap_or_default();
            say!("item {:>3} label {label}{expected}  blake3 {}", item.index, item.output_digest);
        }
        for w in &view.workers {
            say!("worker   {} {}", w.peer_id, w.status);
        }
        if let Some(f) = &view.failure {
            say!("failure  {f}");
        }
    }
    match view.phase {
        Phase::Verified => Ok(()),
        Phase::Failed => bail!("task failed"),
        _ => bail!(
            "task {} not finished after {} s; it goes on at the node (see `fleetmesh status {}`)",
            sub.task_id,
            args.timeout_secs,
            sub.task_id
        ),
    }
}
