//! `evos ocmf verify`: being written.

use anyhow::Result;

#[derive(clap::Args)]
pub struct OcmfArgs {}

pub fn main(_args: OcmfArgs) -> Result<i32> {
    anyhow::bail!("not yet")
}
