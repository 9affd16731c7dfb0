//! `dom0d`: the dom0 control service. See the `dom0` crate docs, "dom0d".
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = dom0::daemon::Args::parse();
    match dom0::daemon::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            dom0::log!(dom0::log::Level::Error, "{}", e.render());
            ExitCode::FAILURE
        }
    }
}
