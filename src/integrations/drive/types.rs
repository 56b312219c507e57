//! The parts of Drive's `File` resource the jobs read.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A file as Drive answers it (with the `fields` the client asks for).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriveFile {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub mime_type: Option<String>,
    /// Drive sends the size as a decimal string.
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub web_view_link: Option<String>,
    #[serde(default)]
    pub app_properties: BTreeMap<String, String>,
    /// Lowercase hex; absent for Google Docs formats.
    #[serde(default)]
    pub sha256_checksum: Option<String>,
}

impl DriveFile {
    pub fn size_bytes(&self) -> Option<u64> {
        self.size.as_deref().and_then(|s| s.parse().ok())
    }
}
