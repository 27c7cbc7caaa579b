//! The messages of Convex's WebSocket sync protocol (convex-compat §3), as the official
//! client (convex@1.48) sends and expects them.

use base64::Engine;
use kiln_store::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use serde_json::value::RawValue;

/// A commit timestamp on the wire: base64 of its 8 little-endian bytes.
pub fn encode_ts(ts: Timestamp) -> String {
    base64::engine::general_purpose::STANDARD.encode(ts.0.to_le_bytes())
}

/// The inverse of [`encode_ts`].
pub fn decode_ts(s: &str) -> Option<Timestamp> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    let bytes: [u8; 8] = bytes.try_into().ok()?;
    Some(Timestamp(u64::from_le_bytes(bytes)))
}

/// A message from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub enum ClientMessage {
    /// The first message of a connection.
    #[serde(rename_all = "camelCase")]
    Connect {
        /// The client's session (stable across reconnects).
        session_id: String,
        /// How many times this session connected before.
        #[serde(default)]
        connection_count: u32,
        /// Why the last connection closed.
        #[serde(default)]
        last_close_reason: Option<String>,
        /// The newest timestamp the client has seen (encoded).
        #[serde(default)]
        max_observed_timestamp: Option<String>,
        /// The client's clock (ms).
        #[serde(default)]
        client_ts: Option<f64>,
    },
    /// Adds and removes subscribed queries.
    #[serde(rename_all = "camelCase")]
    ModifyQuerySet {
        /// The query set version this applies to.
        base_version: u32,
        /// The version after it.
        new_version: u32,
        /// The changes.
        modifications: Vec<QuerySetModification>,
    },
    /// Runs a mutation.
    #[serde(rename_all = "camelCase")]
    Mutation {
        /// Per-session request number.
        request_id: u32,
        /// The function.
        udf_path: String,
        /// `[argsObject]`.
        args: Vec<Json>,
        /// A mounted component whose function it is (admins only).
        #[serde(default)]
        component_path: Option<String>,
    },
    /// Runs an action.
    #[serde(rename_all = "camelCase")]
    Action {
        /// Per-session request number.
        request_id: u32,
        /// The function.
        udf_path: String,
        /// `[argsObject]`.
        args: Vec<Json>,
        /// A mounted component whose function it is (admins only).
        #[serde(default)]
        component_path: Option<String>,
    },
    /// Sets, changes or clears the identity.
    #[serde(rename_all = "camelCase")]
    Authenticate {
        /// The identity version this applies to.
        base_version: u32,
        /// `User`, `Admin` or `None`.
        token_type: String,
        /// The JWT or admin key.
        #[serde(default)]
        value: Option<String>,
        /// For admins: the identity to act as.
        #[serde(default)]
        impersonating: Option<Json>,
    },
    /// Client telemetry (logged only).
    #[serde(rename_all = "camelCase")]
    Event {
        /// What happened.
        #[serde(default)]
        event_type: String,
    },
}

/// One change to the query set.
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub enum QuerySetModification {
    /// Subscribes to a query.
    #[serde(rename_all = "camelCase")]
    Add {
        /// The client's id for it.
        query_id: u32,
        /// The function.
        udf_path: String,
        /// `[argsObject]`.
        args: Vec<Json>,
        /// A mounted component whose query it is (admins only).
        #[serde(default)]
        component_path: Option<String>,
        /// The query journal from an earlier result (opaque; `null` for none).
        #[serde(default)]
        journal: Option<String>,
    },
    /// Unsubscribes.
    #[serde(rename_all = "camelCase")]
    Remove {
        /// The client's id for it.
        query_id: u32,
    },
}

/// The state a Transition moves from or to.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateVersion {
    /// Query set version.
    pub query_set: u32,
    /// Identity version.
    pub identity: u32,
    /// Snapshot timestamp (encoded).
    pub ts: String,
}

/// One change in a Transition.
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum StateModification<'a> {
    /// A new result.
    #[serde(rename_all = "camelCase")]
    QueryUpdated {
        /// The client's id.
        query_id: u32,
        /// The value (Convex JSON).
        value: &'a RawValue,
        /// Log lines of the run.
        log_lines: &'a [String],
        /// The query journal: where the query's pages end.
        journal: Option<&'a str>,
    },
    /// The query failed.
    #[serde(rename_all = "camelCase")]
    QueryFailed {
        /// The client's id.
        query_id: u32,
        /// The error message.
        error_message: &'a str,
        /// Log lines of the run.
        log_lines: &'a [String],
        /// `ConvexError` data.
        #[serde(skip_serializing_if = "Option::is_none")]
        error_data: Option<&'a RawValue>,
        /// The query journal: where the query's pages end.
        journal: Option<&'a str>,
    },
    /// The query is gone.
    #[serde(rename_all = "camelCase")]
    QueryRemoved {
        /// The client's id.
        query_id: u32,
    },
}

/// A message to the client.
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum ServerMessage<'a> {
    /// New query results at one snapshot.
    #[serde(rename_all = "camelCase")]
    Transition {
        /// Must equal the client's current version.
        start_version: StateVersion,
        /// The client's version afterwards.
        end_version: StateVersion,
        /// Changed results.
        modifications: Vec<StateModification<'a>>,
        /// Server time minus the client's clock at connect (ms).
        #[serde(skip_serializing_if = "Option::is_none")]
        client_clock_skew: Option<f64>,
        /// Server time (ns).
        server_ts: f64,
    },
    /// A part of a large Transition.
    #[serde(rename_all = "camelCase")]
    TransitionChunk {
        /// This part's text.
        chunk: &'a str,
        /// Its index.
        part_number: u32,
        /// How many parts.
        total_parts: u32,
        /// Which Transition.
        transition_id: String,
    },
    /// A mutation's outcome.
    #[serde(rename_all = "camelCase")]
    MutationResponse {
        /// The request.
        request_id: u32,
        /// Whether it committed.
        success: bool,
        /// The value (Convex JSON) or the error message.
        result: &'a RawValue,
        /// The commit timestamp (success only).
        #[serde(skip_serializing_if = "Option::is_none")]
        ts: Option<String>,
        /// Log lines.
        log_lines: &'a [String],
        /// `ConvexError` data.
        #[serde(skip_serializing_if = "Option::is_none")]
        error_data: Option<&'a RawValue>,
    },
    /// An action's outcome.
    #[serde(rename_all = "camelCase")]
    ActionResponse {
        /// The request.
        request_id: u32,
        /// Whether it succeeded.
        success: bool,
        /// The value (Convex JSON) or the error message.
        result: &'a RawValue,
        /// Log lines.
        log_lines: &'a [String],
        /// `ConvexError` data.
        #[serde(skip_serializing_if = "Option::is_none")]
        error_data: Option<&'a RawValue>,
    },
    /// An identity token was refused.
    #[serde(rename_all = "camelCase")]
    AuthError {
        /// Why.
        error: String,
        /// The identity version the attempt was based on.
        base_version: u32,
        /// Whether the client's token change caused it.
        auth_update_attempted: bool,
    },
    /// The client must stop.
    #[serde(rename_all = "camelCase")]
    FatalError {
        /// Why.
        error: String,
    },
    /// Keeps the connection alive.
    Ping,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_messages_match_the_client() {
        assert_eq!(encode_ts(Timestamp(0)), "AAAAAAAAAAA=");
        assert_eq!(
            decode_ts(&encode_ts(Timestamp(1_700_000_000_123_456_789))),
            Some(Timestamp(1_700_000_000_123_456_789))
        );
        assert_eq!(decode_ts("AAAA"), None);
        let m: ClientMessage = serde_json::from_str(
            r#"{"type":"ModifyQuerySet","baseVersion":0,"newVersion":1,"modifications":[{"type":"Add","queryId":0,"udfPath":"m:list","args":[{}]}]}"#,
        )
        .unwrap();
        assert!(matches!(m, ClientMessage::ModifyQuerySet { new_version: 1, .. }));
        let value = RawValue::from_string("[1]".to_owned()).unwrap();
        let text = serde_json::to_string(&ServerMessage::Transition {
            start_version: StateVersion { ts: encode_ts(Timestamp(0)), ..Default::default() },
            end_version: StateVersion { query_set: 1, identity: 0, ts: encode_ts(Timestamp(5)) },
            modifications: vec![StateModification::QueryUpdated {
                query_id: 0,
                value: &value,
                log_lines: &[],
                journal: None,
            }],
            client_clock_skew: None,
            server_ts: 1.0,
        })
        .unwrap();
        assert_eq!(
            text,
            r#"{"type":"Transition","startVersion":{"querySet":0,"identity":0,"ts":"AAAAAAAAAAA="},"endVersion":{"querySet":1,"identity":0,"ts":"BQAAAAAAAAA="},"modifications":[{"type":"QueryUpdated","queryId":0,"value":[1],"logLines":[],"journal":null}],"serverTs":1.0}"#
        );
        assert_eq!(serde_json::to_string(&ServerMessage::Ping).unwrap(), r#"{"type":"Ping"}"#);
    }
}
