//! The request and response bodies of `POST /emails` (`SendEmailRequest`, §C.1).

use serde::{Deserialize, Serialize};

/// One email as Resend takes it. Optional fields are left out of the JSON when empty, so the
/// same email always serialises to the same body (Resend compares bodies under one key).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendEmailRequest {
    /// `"Name <address>"` or a bare address.
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub html: String,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    /// ISO 8601.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
}

/// A tag: ASCII letters, digits, `_` and `-` (Resend rejects others with 422).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub name: String,
    pub value: String,
}

/// Resend's answer to an accepted email.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SentEmail {
    pub id: String,
}
