//! `advmoe macs`: the analytic inference cost of an architecture.

use advmoe_core::count_macs;

use crate::args::ModelArgs;

pub(crate) fn run(args: &ModelArgs) -> anyhow::Result<()> {
    let spec = args.spec();
    spec.validate()?;
    let r = count_macs(&spec);
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}
