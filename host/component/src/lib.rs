//! The host side of world `app` (`wit/`): what a runtime needs of a component without the
//! toolchain that builds one (the guest SDK): the wasmtime bindings, loading with an on-disk
//! cache of compiled code, the check that a component imports nothing outside `app`, and the
//! [`Manifest`] its `analyze` export reports.

pub mod error;
pub mod load;
pub mod manifest;

pub use error::{ComponentError, Result};
pub use manifest::Manifest;

/// Host bindings of world `app` (wasmtime's `bindgen!`), for hosts and test harnesses.
pub mod bindings {
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({ world: "app", path: "../../wit" });

    /// The name Convex gives a log level in log lines (`LOG`, `WARN`, …).
    pub fn level_name(level: kiln::platform::log::Level) -> &'static str {
        use kiln::platform::log::Level;
        match level {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Log => "LOG",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}
