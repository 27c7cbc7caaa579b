//! Components: encoding a core module as a component of world `app`; loading, checking and
//! analyzing are `kiln-component`'s, re-exported here.

pub use kiln_component::load::{
    ALLOWED_IMPORTS, PACKAGE, analyze, check_imports, component_imports, cranelift_compiles, load_component,
};

use crate::error::{Result, SdkError};

/// Encodes a core module (carrying wit-bindgen's metadata for world `app`) as a component.
pub fn componentize(core: &[u8]) -> Result<Vec<u8>> {
    let component = wit_component::ComponentEncoder::default()
        .module(core)
        .map_err(SdkError::wasm)?
        .validate(true)
        .encode()
        .map_err(SdkError::wasm)?;
    Ok(component)
}
