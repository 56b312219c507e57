//! `files.get`, `files.delete`, `files.list` (with its `q` subset), `files.generateIds` and
//! `permissions.create`.

use super::*;

pub(super) async fn get_file(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    let mut s = lock(&state);
    if let Err(refusal) = admit(&mut s, &headers, Cost::Read) {
        return *refusal;
    }
    let Some(file) = s.files.get(&id) else {
        return file_not_found(&id);
    };
    if params.get("alt").map(String::as_str) == Some("media") {
        let mut response = (StatusCode::OK, file.content.clone()).into_response();
        if let Ok(value) = HeaderValue::from_str(&file.mime_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        return response;
    }
    file_response(
        file,
        params.get("fields").map(String::as_str),
        StatusCode::OK,
    )
}

pub(super) async fn delete_file(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut s = lock(&state);
    if let Err(refusal) = admit(&mut s, &headers, Cost::Modify) {
        return *refusal;
    }
    if s.files.remove(&id).is_none() {
        return file_not_found(&id);
    }
    s.order.retain(|f| *f != id);
    StatusCode::NO_CONTENT.into_response()
}

pub(super) async fn generate_ids(
    State(state): Shared,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    let mut s = lock(&state);
    if let Err(refusal) = admit(&mut s, &headers, Cost::Read) {
        return *refusal;
    }
    let count = match params.get("count").map(|c| c.parse::<u32>()) {
        None => 10,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return invalid_param("count"),
    };
    let ids: Vec<String> = (0..count).map(|_| new_id(&mut s)).collect();
    respond(
        StatusCode::OK,
        json!({"kind": "drive#generatedIds", "space": "drive", "ids": ids}),
    )
}

pub(super) async fn create_permission(
    State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Params,
    body: Bytes,
) -> Response {
    let mut s = lock(&state);
    if let Err(refusal) = admit(&mut s, &headers, Cost::Modify) {
        return *refusal;
    }
    if !s.files.contains_key(&id) {
        return file_not_found(&id);
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("Invalid JSON payload received.", None);
    };
    let role = request.get("role").and_then(Value::as_str).unwrap_or("");
    let kind = request.get("type").and_then(Value::as_str).unwrap_or("");
    let roles = [
        "owner",
        "organizer",
        "fileOrganizer",
        "writer",
        "commenter",
        "reader",
    ];
    if role.is_empty() {
        return drive_error(
            StatusCode::BAD_REQUEST,
            "global",
            "required",
            "Required: permission.role",
            Some(("other", "permission.role")),
        );
    }
    if !roles.contains(&role) {
        return drive_error(
            StatusCode::BAD_REQUEST,
            "global",
            "invalid",
            "Invalid permission role.",
            Some(("other", "permission.role")),
        );
    }
    let permission = match kind {
        "anyone" => {
            if s.config.forbid_anyone_permissions {
                return drive_error(
                    StatusCode::FORBIDDEN,
                    "global",
                    "publishOutNotPermitted",
                    "Permission creation failed: the domain policy does not allow sharing with anyone.",
                    None,
                );
            }
            json!({
                "kind": "drive#permission", "id": "anyoneWithLink", "type": "anyone", "role": role,
                "allowFileDiscovery": request.get("allowFileDiscovery").and_then(Value::as_bool).unwrap_or(false),
            })
        }
        "user" | "group" => {
            let Some(email) = request.get("emailAddress").and_then(Value::as_str) else {
                return drive_error(
                    StatusCode::BAD_REQUEST,
                    "global",
                    "required",
                    "Required: permission.emailAddress",
                    Some(("other", "permission.emailAddress")),
                );
            };
            json!({"kind": "drive#permission", "id": format!("{:020}", mix(0, &[super::super::hash_str(email)])), "type": kind, "role": role, "emailAddress": email})
        }
        "domain" => {
            let domain = request.get("domain").and_then(Value::as_str).unwrap_or("");
            json!({"kind": "drive#permission", "id": format!("domain-{domain}"), "type": "domain", "role": role, "domain": domain})
        }
        _ => {
            return drive_error(
                StatusCode::BAD_REQUEST,
                "global",
                "invalid",
                "Invalid permission type.",
                Some(("other", "permission.type")),
            );
        }
    };
    if let Some(file) = s.files.get_mut(&id) {
        file.permissions
            .retain(|p| p.get("id") != permission.get("id"));
        file.permissions.push(permission.clone());
    }
    match partial(
        &permission,
        params.get("fields").map(String::as_str),
        "Permission",
        PERMISSION_DEFAULT,
    ) {
        Ok(body) => respond(StatusCode::OK, body),
        Err(refusal) => *refusal,
    }
}

pub(super) async fn list_files(
    State(state): Shared,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    let mut s = lock(&state);
    if let Err(refusal) = admit(&mut s, &headers, Cost::List) {
        return *refusal;
    }
    let filter = match params.get("q") {
        None => Vec::new(),
        Some(q) => match parse_query(q) {
            Some(terms) => terms,
            None => return invalid_param("q"),
        },
    };
    let page_size = match params.get("pageSize").map(|p| p.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return invalid_param("pageSize"),
    };
    let start = match params.get("pageToken") {
        None => 0,
        Some(token) => match URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|t| t.strip_prefix("page:")?.parse::<usize>().ok())
        {
            Some(n) => n,
            None => return invalid_param("pageToken"),
        },
    };
    let now = Instant::now();
    let matching: Vec<&StoredFile> = s
        .order
        .iter()
        .filter_map(|id| s.files.get(id))
        .filter(|f| f.visible_at <= now && filter.iter().all(|t| t.matches(f)))
        .collect();
    let files: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(page_size)
        .map(|f| file_json(f))
        .collect();
    let mut body = json!({"kind": "drive#fileList", "incompleteSearch": false, "files": files});
    if start + page_size < matching.len() {
        body["nextPageToken"] =
            json!(URL_SAFE_NO_PAD.encode(format!("page:{}", start + page_size)));
    }
    match partial(
        &body,
        params.get("fields").map(String::as_str),
        "FileList",
        LIST_DEFAULT,
    ) {
        Ok(body) => respond(StatusCode::OK, body),
        Err(refusal) => *refusal,
    }
}

/// One term of the supported `q` subset.
#[derive(Debug, PartialEq)]
pub(super) enum Term {
    AppProperty(String, String),
    Property(String, String),
    Trashed(bool),
    Name(String, String),
    MimeType(String, String),
    InParents(String),
}

impl Term {
    fn matches(&self, f: &StoredFile) -> bool {
        match self {
            Term::AppProperty(k, v) => f.app_properties.get(k) == Some(v),
            Term::Property(k, v) => f.properties.get(k) == Some(v),
            // Nothing is ever trashed here (delete removes).
            Term::Trashed(t) => !*t,
            Term::Name(op, v) => match op.as_str() {
                "=" => f.name == *v,
                "!=" => f.name != *v,
                _ => f.name.contains(v.as_str()),
            },
            Term::MimeType(op, v) => (f.mime_type == *v) == (op == "="),
            Term::InParents(p) => f.parents.contains(p),
        }
    }
}

#[derive(Debug, PartialEq, Clone)]
pub(super) enum Token2 {
    Word(String),
    Str(String),
    Op(String),
}

pub(super) fn tokenize(q: &str) -> Option<Vec<Token2>> {
    let chars: Vec<char> = q.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut value = String::new();
            i += 1;
            loop {
                match chars.get(i)? {
                    '\\' => {
                        value.push(*chars.get(i + 1)?);
                        i += 2;
                    }
                    '\'' => {
                        i += 1;
                        break;
                    }
                    other => {
                        value.push(*other);
                        i += 1;
                    }
                }
            }
            tokens.push(Token2::Str(value));
        } else if c == '{' || c == '}' || c == '=' {
            tokens.push(Token2::Op(c.to_string()));
            i += 1;
        } else if c == '!' && chars.get(i + 1) == Some(&'=') {
            tokens.push(Token2::Op("!=".into()));
            i += 2;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Token2::Word(chars[start..i].iter().collect()));
        } else {
            return None;
        }
    }
    Some(tokens)
}

/// Parses the supported `q` subset: terms joined by `and`.
pub(super) fn parse_query(q: &str) -> Option<Vec<Term>> {
    use Token2::{Op, Str, Word};
    let tokens = tokenize(q)?;
    let word =
        |t: Option<&Token2>, w: &str| matches!(t, Some(Word(x)) if x.eq_ignore_ascii_case(w));
    let mut terms = Vec::new();
    let mut i = 0;
    loop {
        let t = tokens.get(i..)?;
        let (term, used) = match t {
            [
                Word(f),
                Word(has),
                Op(open),
                Word(k),
                Op(eq1),
                Str(key),
                Word(and),
                Word(v),
                Op(eq2),
                Str(value),
                Op(close),
                ..,
            ] if (f == "appProperties" || f == "properties")
                && has == "has"
                && open == "{"
                && k == "key"
                && eq1 == "="
                && and.eq_ignore_ascii_case("and")
                && v == "value"
                && eq2 == "="
                && close == "}" =>
            {
                let term = if f == "appProperties" {
                    Term::AppProperty(key.clone(), value.clone())
                } else {
                    Term::Property(key.clone(), value.clone())
                };
                (term, 11)
            }
            [Word(f), Op(eq), Word(b), ..] if f == "trashed" && eq == "=" => {
                (Term::Trashed(b.parse().ok()?), 3)
            }
            [Word(f), Op(op), Str(v), ..] if f == "name" && (op == "=" || op == "!=") => {
                (Term::Name(op.clone(), v.clone()), 3)
            }
            [Word(f), Word(op), Str(v), ..] if f == "name" && op == "contains" => {
                (Term::Name("contains".into(), v.clone()), 3)
            }
            [Word(f), Op(op), Str(v), ..] if f == "mimeType" && (op == "=" || op == "!=") => {
                (Term::MimeType(op.clone(), v.clone()), 3)
            }
            [Str(parent), Word(in_), Word(parents), ..] if in_ == "in" && parents == "parents" => {
                (Term::InParents(parent.clone()), 3)
            }
            _ => return None,
        };
        terms.push(term);
        i += used;
        if i == tokens.len() {
            return Some(terms);
        }
        if !word(tokens.get(i), "and") {
            return None;
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_supported_query_subset() {
        let q = "appProperties has { key='idem' and value='up-1' } and trashed = false and 'folder1' in parents";
        assert_eq!(
            parse_query(q),
            Some(vec![
                Term::AppProperty("idem".into(), "up-1".into()),
                Term::Trashed(false),
                Term::InParents("folder1".into()),
            ])
        );
        assert_eq!(parse_query("fullText contains 'x'"), None);
        assert_eq!(parse_query("trashed = false and"), None);
    }
}
