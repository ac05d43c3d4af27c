//! `fleetmesh certify`: a fleet operator vouches for one of its vehicles' node keys.
//!
//! The operator's key is a node key like any other (`fleetmesh keygen --data-dir ./operator`),
//! kept off the vehicles. The certificate it signs names the vehicle's key and an expiry; the
//! vehicle shows it in its adverts (`operator_cert` in its config), so requesters put at most
//! one of the operator's vehicles in a task and a closed mesh (`[trust] closed`) admits them.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use fleetmesh_crypto::PublicKey;
use fleetmesh_protocol::{OperatorCert, Signed, WIRE_VERSION};

#[derive(Args)]
pub(crate) struct CertifyArgs {
    /// The operator's data directory (its `node.key`, made by `fleetmesh keygen`).
    #[arg(long)]
    pub(crate) operator_dir: PathBuf,
    /// The vehicle's node key: its peer id (`12D3KooW...`) or public key (64 hex digits), as
    /// `fleetmesh keygen` prints them.
    #[arg(long)]
    pub(crate) vehicle: String,
    /// Days the certificate is valid (there is no revocation before expiry: keep it short
    /// and re-issue).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub(crate) days: u64,
    /// Where to write it (give this file to the vehicle's `operator_cert`).
    #[arg(long)]
    pub(crate) out: PathBuf,
}

pub(crate) fn run(a: CertifyArgs) -> Result<()> {
    let vehicle: PublicKey = match PublicKey::from_peer_id(&a.vehicle) {
        Some(k) => k,
        None => a.vehicle.parse().with_context(|| {
            format!("--vehicle {:?} is neither a peer id nor a 64-hex-digit public key", a.vehicle)
        })?,
    };
    let key = a.operator_dir.join("node.key");
    if !key.exists() {
        bail!(
            "no operator key at {} (create it with: fleetmesh keygen --data-dir {})",
            key.display(),
            a.operator_dir.display()
        );
    }
    let (operator, _) = fleetmesh_crypto::load_or_create_identity(&key)?;
    if operator.public() == vehicle {
        bail!("the operator key and the vehicle key are the same; keep the operator's key off its vehicles");
    }
    let now = u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    // Backdated ten minutes: a vehicle whose clock is a little behind still takes it.
    let cert = OperatorCert {
        v: WIRE_VERSION,
        vehicle,
        issued_ms: now.saturating_sub(600_000),
        not_after_ms: now.saturating_add(a.days.saturating_mul(86_400_000)),
    };
    let env = cert.sign(&operator);
    std::fs::write(&a.out, fleetmesh_protocol::encode(&env))
        .with_context(|| format!("writing {}", a.out.display()))?;
    say!("operator   {}", operator.public());
    say!("vehicle    {} ({})", vehicle, vehicle.peer_id());
    say!("valid for  {} days", a.days);
    say!(
        "wrote      {} (set operator_cert = \"{}\" in the vehicle's config)",
        a.out.display(),
        a.out.display()
    );
    Ok(())
}
