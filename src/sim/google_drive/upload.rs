//! `files.create`: metadata only, multipart, media and the resumable protocol (initiation,
//! chunks, status queries).

use super::*;

pub(super) fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = v
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string());
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn new_id(s: &mut DriveState) -> String {
    s.ids_issued += 1;
    // 24 bytes: 32 base64url characters, about the length of a real Drive id.
    let bytes: Vec<u8> = [0xD1, 0xD2, 0xD3]
        .iter()
        .flat_map(|k| mix(s.config.seed, &[s.ids_issued, *k]).to_be_bytes())
        .collect();
    format!("1{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A file's bytes as they arrive at `store`: the bytes (empty when not kept), size and digest.
pub(super) struct Content {
    pub(super) bytes: Vec<u8>,
    pub(super) size: u64,
    pub(super) sha256: String,
}

impl Content {
    pub(super) fn of(bytes: Vec<u8>) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        Content {
            size: bytes.len() as u64,
            sha256: hex(digest.as_ref()),
            bytes,
        }
    }
}

/// A running SHA-256 (ring's context has no `Debug`).
#[derive(Clone)]
pub(super) struct Hasher(pub(super) ring::digest::Context);

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher(SHA-256)")
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 404 for the first parent that is not a known folder (when the simulator knows its folders).
pub(super) fn check_parents(s: &DriveState, metadata: &Value) -> Result<(), Box<Response>> {
    let Some(folders) = &s.config.folders else {
        return Ok(());
    };
    let parents = metadata.get("parents").and_then(Value::as_array);
    for parent in parents.into_iter().flatten().filter_map(Value::as_str) {
        if !folders.iter().any(|f| f == parent) {
            return Err(Box::new(file_not_found(parent)));
        }
    }
    Ok(())
}

/// Stores a file from metadata and content; returns it or Drive's refusal.
pub(super) fn store(
    s: &mut DriveState,
    owner: &str,
    metadata: &Value,
    content: Content,
    media_type: Option<&str>,
    upload_type: &str,
) -> Result<StoredFile, Box<Response>> {
    let keep = s.config.keep_content;
    if !metadata.is_object() && !metadata.is_null() {
        return Err(Box::new(bad_request("Invalid JSON payload", None)));
    }
    let parents: Vec<String> = metadata
        .get("parents")
        .and_then(Value::as_array)
        .map(|p| {
            p.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    check_parents(s, metadata)?;
    if s.config.require_parent && parents.is_empty() {
        return Err(Box::new(drive_error(
            StatusCode::FORBIDDEN,
            "usageLimits",
            "storageQuotaExceeded",
            "Service Accounts do not have storage quota. Leverage shared drives (https://developers.google.com/workspace/drive/api/guides/about-shareddrives), or use OAuth delegation (http://support.google.com/a/answer/7281227) instead.",
            None,
        )));
    }
    let id = match metadata.get("id").and_then(Value::as_str) {
        Some(id) if s.files.contains_key(id) => {
            return Err(Box::new(drive_error(
                StatusCode::CONFLICT,
                "global",
                "duplicate",
                "A file already exists with the provided ID.",
                None,
            )));
        }
        Some(id) => id.to_owned(),
        None => new_id(s),
    };
    let mime_type = metadata
        .get("mimeType")
        .and_then(Value::as_str)
        .or(media_type)
        .unwrap_or("application/octet-stream")
        .to_owned();
    let file = StoredFile {
        id: id.clone(),
        name: metadata
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("Untitled")
            .to_owned(),
        mime_type,
        parents,
        app_properties: string_map(metadata.get("appProperties")),
        properties: string_map(metadata.get("properties")),
        content: if keep { content.bytes } else { Vec::new() },
        size: content.size,
        sha256: content.sha256,
        permissions: Vec::new(),
        created_time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        owner: owner.to_owned(),
        upload_type: upload_type.to_owned(),
        visible_at: Instant::now() + s.config.list_visibility_delay,
    };
    s.files.insert(id.clone(), file.clone());
    s.order.push(id);
    Ok(file)
}

pub(super) async fn create_metadata_only(
    State(state): Shared,
    headers: HeaderMap,
    Query(params): Params,
    body: Bytes,
) -> Response {
    let mut s = lock(&state);
    let owner = match admit(&mut s, &headers, Cost::Modify) {
        Ok(owner) => owner,
        Err(refusal) => return *refusal,
    };
    let metadata: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return bad_request("Invalid JSON payload received.", None),
        }
    };
    match store(
        &mut s,
        &owner,
        &metadata,
        Content::of(Vec::new()),
        None,
        "metadata",
    ) {
        Ok(file) => file_response(
            &file,
            params.get("fields").map(String::as_str),
            StatusCode::OK,
        ),
        Err(refusal) => *refusal,
    }
}

pub(super) fn file_response(
    file: &StoredFile,
    fields: Option<&str>,
    status: StatusCode,
) -> Response {
    match partial(&file_json(file), fields, "File", FILE_DEFAULT) {
        Ok(body) => respond(status, body),
        Err(refusal) => *refusal,
    }
}

pub(super) async fn upload(
    State(state): Shared,
    headers: HeaderMap,
    Query(params): Params,
    body: Bytes,
) -> Response {
    let mut s = lock(&state);
    let owner = match admit(&mut s, &headers, Cost::Modify) {
        Ok(owner) => owner,
        Err(refusal) => return *refusal,
    };
    let fields = params.get("fields").map(String::as_str);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    match params.get("uploadType").map(String::as_str) {
        Some("multipart") => {
            let Some((metadata, media_type, content)) = parse_multipart(&content_type, &body)
            else {
                return bad_request("Malformed multipart body.", Some(("other", "multipart")));
            };
            match store(
                &mut s,
                &owner,
                &metadata,
                Content::of(content),
                media_type.as_deref(),
                "multipart",
            ) {
                Ok(file) => file_response(&file, fields, StatusCode::OK),
                Err(refusal) => *refusal,
            }
        }
        Some("media") => {
            let media = (!content_type.is_empty()).then_some(content_type.as_str());
            match store(
                &mut s,
                &owner,
                &json!({}),
                Content::of(body.to_vec()),
                media,
                "media",
            ) {
                Ok(file) => file_response(&file, fields, StatusCode::OK),
                Err(refusal) => *refusal,
            }
        }
        Some("resumable") => {
            let metadata: Value = if body.is_empty() {
                json!({})
            } else {
                match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(_) => return bad_request("Invalid JSON payload received.", None),
                }
            };
            if let Err(refusal) = check_parents(&s, &metadata) {
                return *refusal;
            }
            let total = headers
                .get("x-upload-content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let media_type = headers
                .get("x-upload-content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            s.ids_issued += 1;
            let upload_id = format!(
                "ADPyc{}",
                URL_SAFE_NO_PAD.encode(mix(s.config.seed, &[s.ids_issued, 0x5E]).to_be_bytes())
            );
            s.sessions.insert(
                upload_id.clone(),
                Session {
                    info: UploadSession {
                        upload_id: upload_id.clone(),
                        persisted: 0,
                        total,
                        received: 0,
                        file_id: None,
                        expired: false,
                    },
                    metadata,
                    content_type: media_type,
                    fields: fields.map(str::to_owned),
                    owner,
                    bytes: Vec::new(),
                    hasher: Hasher(ring::digest::Context::new(&ring::digest::SHA256)),
                },
            );
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1");
            let location = format!(
                "http://{host}/upload/drive/v3/files?uploadType=resumable&upload_id={upload_id}"
            );
            let mut response = StatusCode::OK.into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        _ => invalid_param("uploadType"),
    }
}

/// Splits a `multipart/related` body into (metadata JSON, media type, content).
pub(super) fn parse_multipart(
    content_type: &str,
    body: &[u8],
) -> Option<(Value, Option<String>, Vec<u8>)> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))?
        .trim_matches('"');
    if !content_type.trim_start().starts_with("multipart/") {
        return None;
    }
    let delimiter = format!("--{boundary}").into_bytes();
    let positions: Vec<usize> = body
        .windows(delimiter.len())
        .enumerate()
        .filter(|(_, w)| *w == delimiter.as_slice())
        .map(|(i, _)| i)
        .collect();
    let mut parts = Vec::new();
    for pair in positions.windows(2) {
        let mut start = pair[0] + delimiter.len();
        // Skip the line break after the delimiter.
        if body.get(start..start + 2) == Some(b"\r\n") {
            start += 2;
        } else if body.get(start) == Some(&b'\n') {
            start += 1;
        }
        let mut end = pair[1];
        // Drop the line break before the next delimiter.
        if end >= 2 && &body[end - 2..end] == b"\r\n" {
            end -= 2;
        } else if end >= 1 && body[end - 1] == b'\n' {
            end -= 1;
        }
        let part = body.get(start..end)?;
        let (head_len, sep_len) = find(part, b"\r\n\r\n")
            .map(|i| (i, 4))
            .or_else(|| find(part, b"\n\n").map(|i| (i, 2)))?;
        let head = String::from_utf8_lossy(&part[..head_len]).to_string();
        let media_type = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        });
        parts.push((media_type, part[head_len + sep_len..].to_vec()));
    }
    // The closing delimiter must be there.
    let last = *positions.last()?;
    if body.get(last + delimiter.len()..last + delimiter.len() + 2) != Some(b"--") {
        return None;
    }
    let mut parts = parts.into_iter();
    let (_, metadata) = parts.next()?;
    let metadata: Value = serde_json::from_slice(&metadata).ok()?;
    let (media_type, content) = parts.next()?;
    Some((metadata, media_type, content))
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `Content-Range` of a resumable PUT.
#[derive(Debug, PartialEq)]
pub(super) enum ContentRange {
    /// `bytes */total` or `bytes */*`: a status query.
    Query(Option<u64>),
    /// `bytes first-last/total` (total `None` for `*`).
    Chunk {
        first: u64,
        last: u64,
        total: Option<u64>,
    },
}

pub(super) fn parse_content_range(value: &str) -> Option<ContentRange> {
    let spec = value.trim().strip_prefix("bytes")?.trim();
    let (range, total) = spec.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        n => Some(n.parse().ok()?),
    };
    if range.trim() == "*" {
        return Some(ContentRange::Query(total));
    }
    let (first, last) = range.split_once('-')?;
    let (first, last): (u64, u64) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    (first <= last).then_some(ContentRange::Chunk { first, last, total })
}

/// `308 Resume Incomplete`, with `Range` when something is persisted.
pub(super) fn resume_incomplete(persisted: u64) -> Response {
    let mut response = StatusCode::PERMANENT_REDIRECT.into_response();
    if persisted > 0
        && let Ok(value) = HeaderValue::from_str(&format!("bytes=0-{}", persisted - 1))
    {
        response.headers_mut().insert(header::RANGE, value);
    }
    response
}

pub(super) async fn upload_chunk(
    State(state): Shared,
    headers: HeaderMap,
    Query(params): Params,
    body: Body,
) -> Response {
    let Some(upload_id) = params.get("upload_id").cloned() else {
        return invalid_param("upload_id");
    };
    {
        let mut s = lock(&state);
        // The session URI is itself the credential ([I]); a token, when sent, must be valid.
        if headers.contains_key(header::AUTHORIZATION)
            && let Err(refusal) = admit(&mut s, &headers, Cost::Modify)
        {
            return *refusal;
        }
        match s.sessions.get(&upload_id) {
            Some(session) if !session.info.expired => {}
            _ => {
                return drive_error(
                    StatusCode::NOT_FOUND,
                    "global",
                    "notFound",
                    "Upload session not found or expired. Start a new upload.",
                    None,
                );
            }
        }
    }
    let range = match headers.get(header::CONTENT_RANGE).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => match parse_content_range(v) {
            Some(range) => Some(range),
            None => return bad_request("Failed to parse Content-Range header.", None),
        },
        Some(Err(_)) => return bad_request("Failed to parse Content-Range header.", None),
    };
    // Where the session stood when this request began: the bytes before `persisted` that the
    // request repeats are skipped, the rest are hashed as they arrive (whole 256 KiB blocks; the
    // last, partial block at the end), so answering does not wait for a pass over the request.
    let (start, hasher, keep_content) = {
        let s = lock(&state);
        match s.sessions.get(&upload_id) {
            Some(session) => (
                session.info.persisted,
                session.hasher.clone(),
                s.config.keep_content,
            ),
            None => return file_not_found(&upload_id),
        }
    };
    let first = match range {
        Some(ContentRange::Chunk { first, .. }) => first,
        _ => 0,
    };
    let mut fresh = FreshBytes::new(start, start.saturating_sub(first), hasher, keep_content);
    let mut broken = false;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => fresh.push(&bytes),
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    let mut s = lock(&state);
    let granularity = s.config.enforce_chunk_granularity;
    let Some(session) = s.sessions.get_mut(&upload_id) else {
        return file_not_found(&upload_id);
    };
    if let Some(file_id) = session.info.file_id.clone() {
        // Completed already: any PUT (status query or repeat) answers with the file.
        let fields = session.fields.clone();
        return match s.files.get(&file_id) {
            Some(file) => file_response(file, fields.as_deref(), StatusCode::OK),
            None => file_not_found(&file_id),
        };
    }
    session.info.received += fresh.received;
    let persisted = session.info.persisted;
    let (first, total) = match range {
        Some(ContentRange::Query(total)) => {
            if session.info.total.is_none() {
                session.info.total = total;
            }
            return resume_incomplete(persisted);
        }
        None => (0, Some(fresh.received)),
        Some(ContentRange::Chunk { first, last, total }) => {
            if !broken && last - first + 1 != fresh.received {
                return bad_request(
                    "The Content-Range header does not match the length of the body.",
                    None,
                );
            }
            (first, total)
        }
    };
    if first > persisted {
        return bad_request(
            &format!(
                "Invalid request. According to the Content-Range header, the upload offset is {first} byte(s), which exceeds already uploaded size of {persisted} byte(s)."
            ),
            None,
        );
    }
    if persisted != start {
        // Another request on this session moved it while this one streamed in.
        return drive_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "global",
            "backendError",
            "Concurrent requests on one upload session. Query its status and resume.",
            None,
        );
    }
    if total.is_some() {
        session.info.total = total;
    }
    let end = persisted + fresh.len;
    let complete = !broken && session.info.total == Some(end);
    let keep = if complete || !granularity {
        fresh.len
    } else {
        // Non-final or broken chunk: whole 256 KiB blocks only.
        (end / CHUNK_GRANULARITY * CHUNK_GRANULARITY).saturating_sub(persisted)
    };
    let (hasher, kept) = fresh.take(keep);
    session.hasher = hasher;
    if keep_content {
        session.bytes.extend_from_slice(&kept);
    }
    session.info.persisted += keep;
    if broken {
        return bad_request("The upload was interrupted.", None);
    }
    if !complete {
        return resume_incomplete(session.info.persisted);
    }
    let metadata = session.metadata.clone();
    let media_type = session.content_type.clone();
    let owner = session.owner.clone();
    let fields = session.fields.clone();
    let content = Content {
        bytes: std::mem::take(&mut session.bytes),
        size: session.info.persisted,
        sha256: hex(session.hasher.0.clone().finish().as_ref()),
    };
    match store(
        &mut s,
        &owner,
        &metadata,
        content,
        media_type.as_deref(),
        "resumable",
    ) {
        Ok(file) => {
            if let Some(session) = s.sessions.get_mut(&upload_id) {
                session.info.file_id = Some(file.id.clone());
            }
            file_response(&file, fields.as_deref(), StatusCode::OK)
        }
        Err(refusal) => *refusal,
    }
}

/// The bytes of one chunk request beyond what the session had persisted when it began, hashed
/// as they arrive: `hasher` has taken every whole 256 KiB block (counted from the file's start)
/// so far; the bytes after the last block boundary wait in `tail` until the request's end says
/// whether they are kept.
struct FreshBytes {
    /// The file offset of the first fresh byte.
    start: u64,
    /// Bytes the request repeats (already persisted) still to skip.
    skip: u64,
    /// Body bytes received, repeats included.
    received: u64,
    /// Fresh bytes received.
    len: u64,
    hasher: Hasher,
    /// Fresh bytes hashed (a prefix of them, ending on a block boundary).
    hashed: u64,
    tail: Vec<u8>,
    /// Every fresh byte, when the simulator keeps content.
    all: Option<Vec<u8>>,
}

impl FreshBytes {
    fn new(start: u64, skip: u64, hasher: Hasher, keep_content: bool) -> Self {
        FreshBytes {
            start,
            skip,
            received: 0,
            len: 0,
            hasher,
            hashed: 0,
            tail: Vec::new(),
            all: keep_content.then(Vec::new),
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        self.received += bytes.len() as u64;
        let skip = self.skip.min(bytes.len() as u64);
        self.skip -= skip;
        bytes = &bytes[skip as usize..];
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len() as u64;
        if let Some(all) = &mut self.all {
            all.extend_from_slice(bytes);
        }
        // Hash up to the last block boundary, keeping the rest in `tail`.
        let boundary = (self.start + self.len) / CHUNK_GRANULARITY * CHUNK_GRANULARITY;
        let hashable = boundary.saturating_sub(self.start + self.hashed) as usize;
        if hashable == 0 {
            self.tail.extend_from_slice(bytes);
            return;
        }
        let from_tail = hashable.min(self.tail.len());
        self.hasher.0.update(&self.tail[..from_tail]);
        self.tail.drain(..from_tail);
        let from_bytes = hashable - from_tail;
        self.hasher.0.update(&bytes[..from_bytes]);
        self.tail.extend_from_slice(&bytes[from_bytes..]);
        self.hashed += hashable as u64;
    }

    /// The session's hasher once the first `keep` fresh bytes are persisted (never fewer than
    /// were hashed: `keep` is the whole request, or its whole blocks), and those bytes when
    /// content is kept.
    fn take(mut self, keep: u64) -> (Hasher, Vec<u8>) {
        let extra = keep.saturating_sub(self.hashed) as usize;
        self.hasher
            .0
            .update(&self.tail[..extra.min(self.tail.len())]);
        let mut all = self.all.unwrap_or_default();
        all.truncate(keep as usize);
        (self.hasher, all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_ranges() {
        assert_eq!(
            parse_content_range("bytes 0-262143/1000000"),
            Some(ContentRange::Chunk {
                first: 0,
                last: 262_143,
                total: Some(1_000_000)
            })
        );
        assert_eq!(
            parse_content_range("bytes */*"),
            Some(ContentRange::Query(None))
        );
        assert_eq!(parse_content_range("bytes 5-1/10"), None);
    }
}
