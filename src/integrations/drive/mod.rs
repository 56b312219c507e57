//! Google Drive v3 for the service account (PROVIDERS.md §D): the JWT bearer token
//! ([`auth`]), the calls the document jobs make ([`client`]) and their errors classified once
//! ([`error`]). Knows nothing of jobs or documents.
//!
//! Plain reqwest rather than `google-drive3`: the generated crate's base (`google-apis-common`)
//! is flagged unmaintained (RUSTSEC-2025-0066), it pulls `yup-oauth2` and its own hyper client
//! stack (with TLS features we would have to keep off aws-lc-rs), and its upload helpers want a
//! seekable reader for the whole file, while the upload path here streams one request's range
//! from the database at a time and must persist Drive's confirmed offset between requests. The
//! five calls we need are a few lines each; the JWT is one RS256 signature with `ring`, which is
//! already our crypto provider.

pub mod auth;
pub mod client;
pub mod error;
pub mod types;

pub use auth::{ServiceAccountKey, TokenSource};
pub use client::{DriveClient, NewFile, UploadProgress};
pub use error::{DriveError, throttle_wait};
pub use types::DriveFile;

/// Resumable chunks other than the last must be multiples of this (256 KiB, §D.3).
pub const CHUNK_GRANULARITY: u64 = 262_144;
