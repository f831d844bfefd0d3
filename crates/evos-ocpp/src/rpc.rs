//! OCPP-J RPC framing: CALL, CALLRESULT and CALLERROR (OCPP-J 1.6 §4; OCPP-J
//! 2.0.1 §4 uses the same arrays).
//!
//! [`parse`] reads one WebSocket text message. The spec gives the shapes
//! (§4.1.3, §4.2.1–4.2.3) but leaves open which error code answers which
//! defect; this module decides:
//!
//! | defect                                              | code                 |
//! |-----------------------------------------------------|----------------------|
//! | not JSON (also: nesting deeper than serde_json's 128 levels, numbers out of `f64` range) | `FormationViolation` |
//! | not an array, empty array                           | `FormationViolation` |
//! | MessageTypeId not an integer, or not 2, 3 or 4      | `FormationViolation` |
//! | UniqueId not a string, or longer than 36 characters | `FormationViolation` |
//! | fewer elements than the message type has            | `ProtocolError`      |
//! | more elements than the message type has             | `FormationViolation` |
//! | Action / errorCode / errorDescription not a string; payload / errorDetails not an object | `FormationViolation` |
//!
//! A frame cut short fits ProtocolError's "payload for Action is incomplete"
//! better than FormationViolation's "not conform the PDU structure", and the
//! python `ocpp` library (the reference CSMS in our tests) answers it the
//! same way. 1.6 has no `MessageTypeNotSupported`, so an unknown type is a
//! FormationViolation. An errorCode we do not know (such as 2.0.1's
//! `RpcFrameworkError`) is read as `GenericError` rather than rejected: a
//! CALLERROR is never answered, and its id still settles the pending CALL.
//!
//! `serde_json` bounds the work on hostile input: it parses in linear time,
//! stops at 128 levels of nesting, and the value it builds is proportional to
//! the text, which the WebSocket layer caps.

use std::fmt;

use serde_json::Value;

/// Longest UniqueId (OCPP-J 1.6 §4.1.4: "maximum of 36 characters").
pub const MAX_ID_LEN: usize = 36;

/// The id a CALLERROR carries when the faulty message's id could not be read
/// (OCPP-J 2.0.1 §4.2.3; 1.6 says nothing).
pub const UNKNOWN_ID: &str = "-1";

/// CALLERROR error codes (OCPP-J 1.6 §4.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Requested Action is not known by receiver.
    NotImplemented,
    /// Requested Action is recognized but not supported by the receiver.
    NotSupported,
    /// An internal error occurred and the receiver was not able to process the Action.
    InternalError,
    /// Payload for Action is incomplete.
    ProtocolError,
    /// A security issue prevented the receiver from completing the Action.
    SecurityError,
    /// Payload is syntactically incorrect or does not conform to the PDU structure.
    FormationViolation,
    /// A field contains an invalid value.
    PropertyConstraintViolation,
    /// A field violates occurrence constraints (e.g. a required field is missing).
    OccurenceConstraintViolation,
    /// A field violates data type constraints (e.g. `"somestring": 12`).
    TypeConstraintViolation,
    /// Any other error.
    GenericError,
}

impl ErrorCode {
    /// Every code, in the spec's order.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::NotImplemented,
        ErrorCode::NotSupported,
        ErrorCode::InternalError,
        ErrorCode::ProtocolError,
        ErrorCode::SecurityError,
        ErrorCode::FormationViolation,
        ErrorCode::PropertyConstraintViolation,
        ErrorCode::OccurenceConstraintViolation,
        ErrorCode::TypeConstraintViolation,
        ErrorCode::GenericError,
    ];

    /// The code as OCPP-J 1.6 spells it on the wire (including its
    /// "Occurence" typo).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotImplemented => "NotImplemented",
            ErrorCode::NotSupported => "NotSupported",
            ErrorCode::InternalError => "InternalError",
            ErrorCode::ProtocolError => "ProtocolError",
            ErrorCode::SecurityError => "SecurityError",
            ErrorCode::FormationViolation => "FormationViolation",
            ErrorCode::PropertyConstraintViolation => "PropertyConstraintViolation",
            ErrorCode::OccurenceConstraintViolation => "OccurenceConstraintViolation",
            ErrorCode::TypeConstraintViolation => "TypeConstraintViolation",
            ErrorCode::GenericError => "GenericError",
        }
    }

    /// Reads a wire code; also accepts 2.0.1's spellings `FormatViolation`
    /// and `OccurrenceConstraintViolation`, which peers mix up.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "FormatViolation" => Some(ErrorCode::FormationViolation),
            "OccurrenceConstraintViolation" => Some(ErrorCode::OccurenceConstraintViolation),
            _ => ErrorCode::ALL.into_iter().find(|c| c.as_str() == s),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The MessageTypeId (OCPP-J 1.6 §4.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    Call = 2,
    CallResult = 3,
    CallError = 4,
}

impl MessageType {
    fn from_id(id: u64) -> Option<Self> {
        match id {
            2 => Some(MessageType::Call),
            3 => Some(MessageType::CallResult),
            4 => Some(MessageType::CallError),
            _ => None,
        }
    }

    /// Elements in the array, the MessageTypeId included.
    fn len(self) -> usize {
        match self {
            MessageType::Call => 4,
            MessageType::CallResult => 3,
            MessageType::CallError => 5,
        }
    }

    fn name(self) -> &'static str {
        match self {
            MessageType::Call => "CALL",
            MessageType::CallResult => "CALLRESULT",
            MessageType::CallError => "CALLERROR",
        }
    }
}

/// `[2, "<UniqueId>", "<Action>", {<payload>}]` (OCPP-J 1.6 §4.2.1).
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub id: String,
    pub action: String,
    /// Always a JSON object when parsed.
    pub payload: Value,
}

/// `[3, "<UniqueId>", {<payload>}]` (OCPP-J 1.6 §4.2.2).
#[derive(Debug, Clone, PartialEq)]
pub struct CallResult {
    pub id: String,
    /// Always a JSON object when parsed.
    pub payload: Value,
}

/// `[4, "<UniqueId>", "<errorCode>", "<errorDescription>", {<errorDetails>}]`
/// (OCPP-J 1.6 §4.2.3).
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    pub id: String,
    pub code: ErrorCode,
    pub description: String,
    /// Always a JSON object when parsed; `{}` when there are none.
    pub details: Value,
}

impl CallError {
    /// An error answer with empty details.
    pub fn new(id: impl Into<String>, code: ErrorCode, description: impl Into<String>) -> Self {
        CallError {
            id: id.into(),
            code,
            description: description.into(),
            details: Value::Object(serde_json::Map::new()),
        }
    }
}

/// One OCPP-J message.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Call(Call),
    CallResult(CallResult),
    CallError(CallError),
}

impl Frame {
    /// The UniqueId.
    pub fn id(&self) -> &str {
        match self {
            Frame::Call(c) => &c.id,
            Frame::CallResult(r) => &r.id,
            Frame::CallError(e) => &e.id,
        }
    }

    pub fn message_type(&self) -> MessageType {
        match self {
            Frame::Call(_) => MessageType::Call,
            Frame::CallResult(_) => MessageType::CallResult,
            Frame::CallError(_) => MessageType::CallError,
        }
    }

    /// The JSON text to send.
    pub fn to_text(&self) -> String {
        let text = match self {
            Frame::Call(c) => serde_json::to_string(&(2, &c.id, &c.action, &c.payload)),
            Frame::CallResult(r) => serde_json::to_string(&(3, &r.id, &r.payload)),
            Frame::CallError(e) => {
                serde_json::to_string(&(4, &e.id, e.code.as_str(), &e.description, &e.details))
            }
        };
        // Strings and a `Value` (whose map keys are strings and whose numbers
        // are finite) always serialise.
        text.expect("a frame of strings and JSON values serialises")
    }
}

impl From<Call> for Frame {
    fn from(c: Call) -> Self {
        Frame::Call(c)
    }
}

impl From<CallResult> for Frame {
    fn from(r: CallResult) -> Self {
        Frame::CallResult(r)
    }
}

impl From<CallError> for Frame {
    fn from(e: CallError) -> Self {
        Frame::CallError(e)
    }
}

/// Why an incoming text is not a valid frame, and how to answer it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {description}")]
pub struct FrameError {
    /// The UniqueId, when one could be read.
    pub id: Option<String>,
    /// The MessageTypeId, when it was a known one.
    pub message_type: Option<MessageType>,
    pub code: ErrorCode,
    /// What is wrong, without echoing the (possibly huge) input.
    pub description: String,
}

impl FrameError {
    fn new(
        id: Option<&str>,
        message_type: Option<MessageType>,
        code: ErrorCode,
        description: impl Into<String>,
    ) -> Self {
        FrameError {
            id: id.map(str::to_owned),
            message_type,
            code,
            description: description.into(),
        }
    }

    /// The CALLERROR answering the faulty message; id `"-1"` when none could
    /// be read, as OCPP-J 2.0.1 §4.2.3 says (1.6 is silent).
    pub fn reply(&self) -> CallError {
        CallError::new(
            self.id.as_deref().unwrap_or(UNKNOWN_ID),
            self.code,
            self.description.clone(),
        )
    }

    /// Whether [`reply`](Self::reply) should be sent. Only a CALL is answered
    /// (OCPP-J 1.6 §4.2.3), and anything that cannot be told apart from one;
    /// answering a broken CALLRESULT or CALLERROR could start an endless
    /// exchange of errors. Its id, if any, should fail the pending CALL instead.
    pub fn needs_reply(&self) -> bool {
        !matches!(
            self.message_type,
            Some(MessageType::CallResult | MessageType::CallError)
        )
    }
}

/// Reads one OCPP-J message; see the module documentation for the rules.
pub fn parse(text: &str) -> Result<Frame, FrameError> {
    use ErrorCode::{FormationViolation, ProtocolError};

    let value: Value = serde_json::from_str(text)
        .map_err(|e| FrameError::new(None, None, FormationViolation, format!("not JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(FrameError::new(
            None,
            None,
            FormationViolation,
            "not a JSON array",
        ));
    };
    let id = items.get(1).and_then(Value::as_str);
    let Some(type_id) = items.first() else {
        return Err(FrameError::new(
            None,
            None,
            FormationViolation,
            "empty array",
        ));
    };
    let Some(message_type) = type_id.as_u64().and_then(MessageType::from_id) else {
        return Err(FrameError::new(
            id,
            None,
            FormationViolation,
            format!("unknown MessageTypeId {}", short(type_id)),
        ));
    };
    let fail = |id: Option<&str>, code, description: String| {
        Err(FrameError::new(id, Some(message_type), code, description))
    };
    let name = message_type.name();
    match items.get(1) {
        None => return fail(None, ProtocolError, format!("{name} without a UniqueId")),
        Some(Value::String(_)) => {}
        Some(other) => {
            return fail(
                None,
                FormationViolation,
                format!("UniqueId is {}, not a string", kind(other)),
            );
        }
    }
    if let Some(id) = id
        && id.chars().count() > MAX_ID_LEN
    {
        return fail(
            Some(id),
            FormationViolation,
            format!("UniqueId longer than {MAX_ID_LEN} characters"),
        );
    }
    let expected = message_type.len();
    if items.len() != expected {
        let (code, how) = if items.len() < expected {
            (ProtocolError, "incomplete")
        } else {
            (FormationViolation, "too long")
        };
        return fail(
            id,
            code,
            format!(
                "{name} {how}: {} elements, expected {expected}",
                items.len()
            ),
        );
    }

    // Shapes are checked before anything is moved out, so `id` stays usable.
    let check = |index: usize, field: &str, want_object: bool| -> Result<(), FrameError> {
        let v = &items[index];
        let ok = if want_object {
            v.is_object()
        } else {
            v.is_string()
        };
        if ok {
            Ok(())
        } else {
            let want = if want_object { "an object" } else { "a string" };
            Err(FrameError::new(
                id,
                Some(message_type),
                FormationViolation,
                format!("{name} {field} is {}, not {want}", kind(v)),
            ))
        }
    };
    match message_type {
        MessageType::Call => {
            check(2, "Action", false)?;
            check(3, "payload", true)?;
        }
        MessageType::CallResult => check(2, "payload", true)?,
        MessageType::CallError => {
            check(2, "errorCode", false)?;
            check(3, "errorDescription", false)?;
            check(4, "errorDetails", true)?;
        }
    }

    let mut items = items.into_iter().skip(1);
    let mut string = || match items.next() {
        Some(Value::String(s)) => s,
        _ => String::new(),
    };
    let id = string();
    Ok(match message_type {
        MessageType::Call => {
            let action = string();
            let payload = items.next().unwrap_or_default();
            Frame::Call(Call {
                id,
                action,
                payload,
            })
        }
        MessageType::CallResult => {
            let payload = items.next().unwrap_or_default();
            Frame::CallResult(CallResult { id, payload })
        }
        MessageType::CallError => {
            let code = string();
            let description = string();
            let details = items.next().unwrap_or_default();
            Frame::CallError(CallError {
                id,
                code: ErrorCode::parse(&code).unwrap_or(ErrorCode::GenericError),
                description,
                details,
            })
        }
    })
}

/// The JSON kind of a value, for error descriptions.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A scalar as text, anything else by kind: never echoes much input.
fn short(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.len() <= 40 => format!("{s:?}"),
        other => kind(other).to_owned(),
    }
}

/// Maps a serde_json error from decoding a payload into a typed message to
/// the CALLERROR code (OCPP-J 1.6 §4.2.3 meanings):
///
/// - missing required field → `OccurenceConstraintViolation`;
/// - wrong JSON type (`"somestring": 12`) → `TypeConstraintViolation`;
/// - unknown or duplicate field → `FormationViolation`;
/// - syntax errors (when decoding text) → `FormationViolation`;
/// - anything else the data fails on — an unknown enum value, an integer out
///   of range, a wrong length, or a custom check such as "string longer than
///   20 characters" — → `PropertyConstraintViolation`.
///
/// A payload that is not an object never gets here: [`parse`] rejects it.
/// The match is on serde's standard messages, which are stable (serde's
/// `de::Error` default methods).
pub fn payload_error(e: &serde_json::Error) -> ErrorCode {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {}
        Category::Io | Category::Syntax | Category::Eof => return ErrorCode::FormationViolation,
    }
    let message = e.to_string();
    if message.starts_with("missing field") {
        ErrorCode::OccurenceConstraintViolation
    } else if message.starts_with("invalid type") {
        ErrorCode::TypeConstraintViolation
    } else if message.starts_with("unknown field") || message.starts_with("duplicate field") {
        ErrorCode::FormationViolation
    } else {
        ErrorCode::PropertyConstraintViolation
    }
}

/// Unique message ids: a random 60-bit prefix, fresh per process, and a
/// counter, as `"<15 hex digits>-<decimal counter>"` — at most 36 characters
/// (OCPP-J 1.6 §4.1.4) and unique across restarts without storing anything.
#[derive(Debug, Clone)]
pub struct MessageIds {
    prefix: String,
    counter: u64,
}

impl MessageIds {
    pub fn new() -> Self {
        MessageIds {
            prefix: format!("{:015x}", fastrand::u64(..) >> 4),
            counter: 0,
        }
    }

    /// The next id.
    #[allow(clippy::should_implement_trait)] // it never ends: an Option would only be unwrapped
    pub fn next(&mut self) -> String {
        self.counter = self.counter.wrapping_add(1);
        format!("{}-{}", self.prefix, self.counter)
    }
}

impl Default for MessageIds {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn err(text: &str) -> FrameError {
        parse(text).expect_err(text)
    }

    #[test]
    fn parses_the_three_message_types() {
        assert_eq!(
            parse(r#"[2, "19223201", "BootNotification", {"chargePointVendor": "VendorX"}]"#),
            Ok(Frame::Call(Call {
                id: "19223201".into(),
                action: "BootNotification".into(),
                payload: json!({"chargePointVendor": "VendorX"}),
            }))
        );
        assert_eq!(
            parse(r#"[3,"19223201",{"currentTime":"2013-02-01T20:53:32.486Z"}]"#),
            Ok(Frame::CallResult(CallResult {
                id: "19223201".into(),
                payload: json!({"currentTime": "2013-02-01T20:53:32.486Z"}),
            }))
        );
        assert_eq!(
            parse(
                r#"[4,"162376037","NotSupported","SetDisplayMessageRequest not implemented",{}]"#
            ),
            Ok(Frame::CallError(CallError::new(
                "162376037",
                ErrorCode::NotSupported,
                "SetDisplayMessageRequest not implemented"
            )))
        );
    }

    #[test]
    fn to_text_is_the_wire_array() {
        let call = Frame::Call(Call {
            id: "1".into(),
            action: "Heartbeat".into(),
            payload: json!({}),
        });
        assert_eq!(call.to_text(), r#"[2,"1","Heartbeat",{}]"#);
        let result = Frame::CallResult(CallResult {
            id: "1".into(),
            payload: json!({"a": 1}),
        });
        assert_eq!(result.to_text(), r#"[3,"1",{"a":1}]"#);
        let error = Frame::CallError(CallError::new(
            "1",
            ErrorCode::OccurenceConstraintViolation,
            "x",
        ));
        assert_eq!(
            error.to_text(),
            r#"[4,"1","OccurenceConstraintViolation","x",{}]"#
        );
    }

    #[test]
    fn error_codes_round_trip_and_accept_2_0_1_spellings() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(
            ErrorCode::parse("FormatViolation"),
            Some(ErrorCode::FormationViolation)
        );
        assert_eq!(
            ErrorCode::parse("OccurrenceConstraintViolation"),
            Some(ErrorCode::OccurenceConstraintViolation)
        );
        assert_eq!(ErrorCode::parse("RpcFrameworkError"), None);
    }

    #[test]
    fn unknown_error_code_in_a_callerror_reads_as_generic() {
        let Ok(Frame::CallError(e)) = parse(r#"[4,"7","RpcFrameworkError","bad",{"x":1}]"#) else {
            panic!("not a CALLERROR");
        };
        assert_eq!(e.code, ErrorCode::GenericError);
        assert_eq!(e.description, "bad");
        assert_eq!(e.details, json!({"x": 1}));
    }

    #[test]
    fn not_json_or_not_an_array_is_a_formation_violation_without_id() {
        for text in ["", "[2,", "hello", "{\"a\":1}", "42", "\"x\"", "null", "[]"] {
            let e = err(text);
            assert_eq!(e.code, ErrorCode::FormationViolation, "{text}");
            assert_eq!(e.id, None, "{text}");
            assert!(e.needs_reply());
            assert_eq!(e.reply().id, "-1");
            assert_eq!(e.reply().code, ErrorCode::FormationViolation);
        }
    }

    #[test]
    fn unknown_message_type_keeps_the_id() {
        for text in [
            r#"[5,"abc",{}]"#,
            r#"[1,"abc","X",{}]"#,
            r#"[-2,"abc","X",{}]"#,
            r#"[2.0,"abc","X",{}]"#,
            r#"["2","abc","X",{}]"#,
        ] {
            let e = err(text);
            assert_eq!(e.code, ErrorCode::FormationViolation, "{text}");
            assert_eq!(e.id.as_deref(), Some("abc"), "{text}");
            assert_eq!(e.message_type, None);
            assert_eq!(e.reply().id, "abc");
        }
    }

    #[test]
    fn bad_unique_ids() {
        let e = err(r#"[2,17,"Heartbeat",{}]"#);
        assert_eq!((e.code, e.id), (ErrorCode::FormationViolation, None));
        let e = err("[2]");
        assert_eq!((e.code, e.id), (ErrorCode::ProtocolError, None));

        let max = "x".repeat(MAX_ID_LEN);
        assert!(parse(&format!(r#"[2,"{max}","Heartbeat",{{}}]"#)).is_ok());
        // Characters, not bytes: 36 two-byte characters are fine.
        let wide = "é".repeat(MAX_ID_LEN);
        assert!(parse(&format!(r#"[3,"{wide}",{{}}]"#)).is_ok());
        let long = "x".repeat(MAX_ID_LEN + 1);
        let e = err(&format!(r#"[2,"{long}","Heartbeat",{{}}]"#));
        assert_eq!(e.code, ErrorCode::FormationViolation);
        assert_eq!(e.id.as_deref(), Some(long.as_str()));
    }

    #[test]
    fn element_counts() {
        for (text, code) in [
            (r#"[2,"1","Heartbeat"]"#, ErrorCode::ProtocolError),
            (r#"[2,"1"]"#, ErrorCode::ProtocolError),
            (r#"[3,"1"]"#, ErrorCode::ProtocolError),
            (r#"[4,"1","GenericError","x"]"#, ErrorCode::ProtocolError),
            (
                r#"[2,"1","Heartbeat",{},{}]"#,
                ErrorCode::FormationViolation,
            ),
            (r#"[3,"1",{},1]"#, ErrorCode::FormationViolation),
            (
                r#"[4,"1","GenericError","x",{},{}]"#,
                ErrorCode::FormationViolation,
            ),
        ] {
            let e = err(text);
            assert_eq!(e.code, code, "{text}");
            assert_eq!(e.id.as_deref(), Some("1"), "{text}");
        }
    }

    #[test]
    fn element_types() {
        for text in [
            r#"[2,"1",7,{}]"#,
            r#"[2,"1","Heartbeat",[]]"#,
            r#"[2,"1","Heartbeat",null]"#,
            r#"[2,"1","Heartbeat","{}"]"#,
            r#"[3,"1",[]]"#,
            r#"[3,"1",null]"#,
            r#"[4,"1",1,"x",{}]"#,
            r#"[4,"1","GenericError",null,{}]"#,
            r#"[4,"1","GenericError","x",null]"#,
        ] {
            let e = err(text);
            assert_eq!(e.code, ErrorCode::FormationViolation, "{text}");
            assert_eq!(e.id.as_deref(), Some("1"), "{text}");
        }
    }

    #[test]
    fn only_calls_are_answered() {
        assert!(err(r#"[2,"1","Heartbeat",[]]"#).needs_reply());
        assert!(!err(r#"[3,"1",[]]"#).needs_reply());
        assert!(!err(r#"[4,"1","GenericError"]"#).needs_reply());
        assert_eq!(
            err(r#"[3,"1",[]]"#).message_type,
            Some(MessageType::CallResult)
        );
    }

    #[test]
    fn hostile_input_is_rejected_without_panic() {
        // Deep nesting stops at serde_json's recursion limit.
        let deep = format!("[2,\"1\",\"A\",{}]", "[".repeat(100_000));
        assert_eq!(err(&deep).code, ErrorCode::FormationViolation);
        let deep_object = format!("[2,\"1\",\"A\",{}", "{\"a\":".repeat(100_000));
        assert_eq!(err(&deep_object).code, ErrorCode::FormationViolation);
        // A 1 MB payload is parsed; a 1 MB id is rejected and the description stays short.
        let big = "x".repeat(1 << 20);
        let Ok(Frame::Call(call)) = parse(&format!(r#"[2,"1","DataTransfer",{{"data":"{big}"}}]"#))
        else {
            panic!("big payload rejected");
        };
        assert_eq!(call.payload["data"].as_str().map(str::len), Some(1 << 20));
        let e = err(&format!(r#"[2,"{big}","A",{{}}]"#));
        assert!(e.description.len() < 100);
        let e = err(&format!(r#"["{big}","1","A",{{}}]"#));
        assert!(e.description.len() < 100);
        // Numbers beyond f64 and huge integers.
        assert_eq!(
            err(r#"[2,"1","A",{"x":1e400}]"#).code,
            ErrorCode::FormationViolation
        );
        assert_eq!(
            err(r#"[99999999999999999999999,"1","A",{}]"#).code,
            ErrorCode::FormationViolation
        );
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Sample {
        connector_id: u8,
        status: Status,
        #[serde(default)]
        info: Option<String>,
        #[serde(default, deserialize_with = "max_5")]
        tag: Option<String>,
    }

    #[derive(Debug, serde::Deserialize)]
    enum Status {
        Available,
    }

    fn max_5<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        if s.chars().count() > 5 {
            return Err(serde::de::Error::custom("string longer than 5 characters"));
        }
        Ok(Some(s))
    }

    fn decode(v: Value) -> ErrorCode {
        let e = serde_json::from_value::<Sample>(v).expect_err("decodes");
        payload_error(&e)
    }

    #[test]
    fn payload_errors_map_to_spec_codes() {
        assert!(
            serde_json::from_value::<Sample>(json!({"connectorId": 1, "status": "Available"}))
                .is_ok()
        );
        assert_eq!(
            decode(json!({"status": "Available"})),
            ErrorCode::OccurenceConstraintViolation
        );
        assert_eq!(
            decode(json!({"connectorId": "1", "status": "Available"})),
            ErrorCode::TypeConstraintViolation
        );
        assert_eq!(
            decode(json!({"connectorId": 1, "status": "Available", "info": 5})),
            ErrorCode::TypeConstraintViolation
        );
        assert_eq!(
            decode(json!({"connectorId": 1, "status": "Broken"})),
            ErrorCode::PropertyConstraintViolation
        );
        assert_eq!(
            decode(json!({"connectorId": 300, "status": "Available"})),
            ErrorCode::PropertyConstraintViolation
        );
        assert_eq!(
            decode(json!({"connectorId": -1, "status": "Available"})),
            ErrorCode::PropertyConstraintViolation
        );
        assert_eq!(
            decode(json!({"connectorId": 1, "status": "Available", "tag": "toolong"})),
            ErrorCode::PropertyConstraintViolation
        );
        assert_eq!(
            decode(json!({"connectorId": 1, "status": "Available", "extra": 1})),
            ErrorCode::FormationViolation
        );
        let syntax = serde_json::from_str::<Sample>("{").expect_err("syntax");
        assert_eq!(payload_error(&syntax), ErrorCode::FormationViolation);
    }

    #[test]
    fn message_ids_are_short_and_unique() {
        let mut ids = MessageIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert!(a.len() <= MAX_ID_LEN);
        let mut far = MessageIds {
            counter: u64::MAX - 1,
            ..MessageIds::new()
        };
        assert!(far.next().len() <= MAX_ID_LEN);
        // Another process (here: another instance) starts elsewhere.
        assert_ne!(MessageIds::new().next(), MessageIds::new().next());
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn json_object() -> impl Strategy<Value = Value> {
        prop::collection::btree_map(".{0,8}", json_value(), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    fn error_code() -> impl Strategy<Value = ErrorCode> {
        prop::sample::select(ErrorCode::ALL.to_vec())
    }

    fn frame() -> impl Strategy<Value = Frame> {
        let id = ".{0,36}";
        prop_oneof![
            (id, ".{0,30}", json_object()).prop_map(|(id, action, payload)| {
                Frame::Call(Call {
                    id,
                    action,
                    payload,
                })
            }),
            (id, json_object())
                .prop_map(|(id, payload)| Frame::CallResult(CallResult { id, payload })),
            (id, error_code(), ".{0,40}", json_object()).prop_map(
                |(id, code, description, details)| {
                    Frame::CallError(CallError {
                        id,
                        code,
                        description,
                        details,
                    })
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip(f in frame()) {
            prop_assert_eq!(parse(&f.to_text()), Ok(f));
        }

        #[test]
        fn parse_never_panics_on_text(s in ".{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_arrays(items in prop::collection::vec(json_value(), 0..7), head in 0u64..6) {
            let mut all = vec![Value::from(head)];
            all.extend(items);
            let text = Value::Array(all).to_string();
            if let Ok(f) = parse(&text) {
                prop_assert_eq!(parse(&f.to_text()), Ok(f));
            }
        }

        #[test]
        fn error_replies_are_frames(s in ".{0,60}") {
            if let Err(e) = parse(&s) {
                let reply = Frame::CallError(e.reply());
                prop_assert_eq!(parse(&reply.to_text()), Ok(reply));
            }
        }
    }
}
