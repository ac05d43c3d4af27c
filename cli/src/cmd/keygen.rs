//! `fleetmesh keygen`: create the node key (if missing) and print the node's ids.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub(crate) struct KeygenArgs {
    /// Data directory.
    #[arg(long, env = "FLEETMESH_DATA_DIR", default_value = "fleetmesh-data")]
    pub(crate) data_dir: PathBuf,
}

pub(crate) fn run(a: KeygenArgs) -> Result<()> {
    let path = a.data_dir.join("node.key");
    let (id, created) = fleetmesh_crypto::load_or_create_identity(&path)?;
    say!("{} {}", if created { "created" } else { "existing" }, path.display());
    say!("peer id    {}", id.public().peer_id());
    say!("public key {}", id.public());
    Ok(())
}
