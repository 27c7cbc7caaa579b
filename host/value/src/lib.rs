//! Kiln's value model: the Convex values every layer exchanges.
//!
//! - [`Value`] and its total order;
//! - [`json`]: Convex JSON (the clients' wire format) and the clean export format;
//! - [`msgpack`]: the canonical internal encoding;
//! - [`index_key`]: order-preserving bytes for index keys;
//! - [`validation`]: names, sizes and limits; [`validator`]: `v.*` validators;
//! - [`id`]: document ids bound to tables.

pub mod error;
pub mod field_path;
pub mod id;
pub mod index_key;
pub mod json;
pub mod limits;
pub mod msgpack;
pub mod validation;
pub mod validator;
mod value;

pub use error::{Result, ValueError};
pub use field_path::FieldPath;
pub use id::{DocumentId, InternalId, TableNumber};
pub use json::{
    Patch, from_convex_json, from_convex_json_or_undefined, parse_convex_json, to_clean_json, to_convex_json,
};
pub use msgpack::{from_msgpack, object_from_msgpack, object_to_msgpack, object_to_msgpack_without, to_msgpack};
pub use validator::Validator;
pub use value::{Object, Value, ValueKind, cmp_optional, object_heap_size};
