//! Stored documents and the index keys they produce.

use kiln_value::index_key::encode_value;
use kiln_value::validation::{CREATION_TIME_FIELD, ID_FIELD};
use kiln_value::{
    DocumentId, FieldPath, Object, Value, object_from_msgpack, object_heap_size, object_to_msgpack_without,
};

use crate::error::{Result, StoreError};

/// A document: its id and its fields, system fields (`_id`, `_creationTime`) included.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// The document's id.
    pub id: DocumentId,
    /// All fields, including `_id` (the id string) and `_creationTime`.
    pub value: Object,
}

impl Document {
    /// Builds a document from user fields, adding the system fields.
    pub fn new(id: DocumentId, creation_time: f64, mut fields: Object) -> Document {
        fields.insert(ID_FIELD.to_owned(), Value::String(id.encode()));
        fields.insert(CREATION_TIME_FIELD.to_owned(), Value::Float64(creation_time));
        Document { id, value: fields }
    }

    /// `_creationTime`, in float milliseconds since the epoch.
    pub fn creation_time(&self) -> f64 {
        match self.value.get(CREATION_TIME_FIELD) {
            Some(Value::Float64(t)) => *t,
            _ => 0.0,
        }
    }

    /// The accounted size (the size limits' measure).
    pub fn size(&self) -> usize {
        2 + self.value.iter().map(|(k, v)| k.len() + 1 + v.size()).sum::<usize>()
    }

    /// Approximate memory held behind an `Arc<Document>`, for the cache budget.
    pub fn heap_size(&self) -> usize {
        // The Arc allocation (two counters and the document) plus the fields.
        (std::mem::size_of::<Document>() + 16).next_multiple_of(16) + 16 + object_heap_size(&self.value)
    }

    /// The storage encoding: MessagePack of the fields without `_id` (the id is the row's key).
    pub fn encode(&self) -> Vec<u8> {
        object_to_msgpack_without(&self.value, ID_FIELD)
    }

    /// Decodes a stored document.
    pub fn decode(id: DocumentId, bytes: &[u8]) -> Result<Document> {
        let mut value = object_from_msgpack(bytes)
            .map_err(|e| StoreError::Persistence(kiln_persistence::PersistenceError::Corrupt(e.to_string())))?;
        value.insert(ID_FIELD.to_owned(), Value::String(id.encode()));
        Ok(Document { id, value })
    }

    /// The value at a field path (`_id` and `_creationTime` included), or `None` if missing.
    pub fn field(&self, path: &FieldPath) -> Option<&Value> {
        path.get(&self.value)
    }
}

/// The key of `doc` in an ordered index over `fields`: the fields' values, then
/// `_creationTime`, then the internal id, so keys are unique and ties are broken by creation.
pub fn ordered_index_key(fields: &[FieldPath], doc: &Document) -> Vec<u8> {
    let mut key = Vec::with_capacity(32 + 16 * fields.len());
    for f in fields {
        encode_value(&mut key, doc.field(f));
    }
    encode_value(&mut key, Some(&Value::Float64(doc.creation_time())));
    key.extend_from_slice(&doc.id.internal.0);
    key
}

/// The key of `doc` in its table's `by_id` index.
pub fn by_id_key(id: &DocumentId) -> Vec<u8> {
    id.internal.0.to_vec()
}
